"""A message nst prints itself (nst/messages.py) is shown once and kept in the job's log file."""

from tests.helpers.overrides import FOLDER_RUN


def test_an_error_is_printed_once_and_kept_in_the_log(tmp_path, nst):
    # a sweep's job keeps its folder when refused (a single run refused before any work leaves none)
    done = nst(tmp_path / "outputs", "-m", f"hydra.sweep.dir={tmp_path / 'sweep'}", "tracking=none", *FOLDER_RUN,
               "content=" + str(tmp_path / "missing.png"), cwd=tmp_path)
    assert done.returncode == 1
    assert (done.stdout + done.stderr).count("nst: error: content image") == 1, done.stdout + done.stderr
    assert "nst: error: content image" in done.stderr
    assert "missing.png" in (tmp_path / "sweep" / "0" / "cli.log").read_text()

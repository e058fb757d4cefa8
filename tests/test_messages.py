"""A message nst prints itself (nst/messages.py) is shown once and kept in the job's log file."""

from tests.helpers.cli import single_run
from tests.helpers.overrides import FOLDER_RUN


def test_an_error_is_printed_once_and_kept_in_the_log(tmp_path, nst):
    done = single_run(nst, tmp_path, "tracking=none", *FOLDER_RUN, "content=" + str(tmp_path / "missing.png"))
    assert done.returncode == 2
    assert (done.stdout + done.stderr).count("missing.png") == 1, done.stdout + done.stderr
    assert "nst: error: content image" in done.stderr
    assert "missing.png" in (tmp_path / "run" / "cli.log").read_text()

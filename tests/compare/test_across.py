"""Sweeps side by side (nst/compare/across.py, nst-report --compare): rows matched by swept values, columns
headed by what differs, the page on disk and on a comparison run found again for the same selection."""

import re
import shutil

from nst.cli import nst_report
from nst.compare import across
from nst.tracking import store, tags
from tests.helpers.overrides import SWEEP_JOB
from tests.helpers.store import artifact_paths, runs, store_client


def test_two_sweeps_differing_in_epochs_share_rows_and_are_headed_by_epochs(tracked_sweep, tmp_path, nst, capsys,
                                                                            monkeypatch):
    out = tmp_path / "outputs"
    shutil.copytree(tracked_sweep[0], out)  # epochs=2, beta 1, 100, 1e4
    done = nst(out, "-m", *SWEEP_JOB, "loss.style_weight=1,1e4", "epochs=1")
    assert done.returncode == 0, done.stderr[-3000:]
    client = store_client(out)
    first, second = sorted(runs(client, "sweep"), key=lambda r: r.info.start_time)
    uri = f"sqlite:///{out / 'mlflow.db'}"
    monkeypatch.setenv("NST_UI_PORT", "5077")

    columns = across.select(client, "nst", [first.info.run_id, "latest"], None)
    found = across.table(client, columns, uri)
    assert found.attrs["axes"] == ["loss.style_weight", "sweep"]
    assert set(found["sweep"]) == {"epochs=2", "epochs=1"}
    assert sorted(found["loss.style_weight"]) == ["1", "1", "100", "1e4", "1e4"]
    assert all(link.startswith("http://127.0.0.1:5077/#/experiments/") for link in found["link"])
    assert all("content " in details and "SSIM " in details for details in found["details"])

    argv = ["--uri", uri, "--compare", first.info.run_id, second.info.run_id]
    assert nst_report.main(argv) == 0
    printed = capsys.readouterr().out.splitlines()
    page = printed[0].removeprefix("nst-report: comparison ")
    assert page.startswith(str(out / "comparisons")) and printed[1].startswith("nst-report: in MLflow http://127.0.0.1:5077/")
    text = open(page, encoding="utf-8").read()
    assert re.findall(r"<th>(epochs=\d)</th>", text) == ["epochs=2", "epochs=1"]  # the columns, in the order named
    assert re.findall(r"<tr><th>(β=[^<]+)</th>", text) == ["β=1", "β=100", "β=1e4"]  # the matched rows
    assert text.count('class="job"') == 5 and 'class="shot none"' not in text  # every result shown
    (made,) = [run for run in client.search_runs([first.info.experiment_id], f"tags.`{tags.TAG_ROLE}` = 'comparison'")]
    assert across.REPORT in artifact_paths(client, made.info.run_id)
    assert nst_report.main(argv) == 0  # the same selection: the same run, its page replaced
    assert len(client.search_runs([first.info.experiment_id], f"tags.`{tags.TAG_ROLE}` = 'comparison'")) == 1
    assert store.run_address(uri, "1", "x").startswith("http://127.0.0.1:5077/")


def test_one_sweep_alone_is_not_a_comparison(tracked_sweep, capsys):
    out, _ = tracked_sweep
    assert nst_report.main(["--uri", f"sqlite:///{out / 'mlflow.db'}", "--compare", "latest"]) == 2
    assert "at least two sweeps" in capsys.readouterr().err

"""The job driver (nst/jobs/driver.py): a refused sweep job is recorded FAILED, never RUNNING, a refused single
run leaves nothing behind; a sweep run again
skips the jobs whose identical config FINISHED and runs the failed ones again."""

import json
import os
import shutil
import signal
import weakref
from pathlib import Path

import pytest

from nst.compare import sweep_report
from nst.tracking import store, tags
from tests.helpers.cli import left_nothing, one_line_error, single_run
from tests.helpers.overrides import SWEEP_JOB, TRACKED_RUN
from tests.helpers.store import artifact_paths, runs, store_client


def test_a_sweep_job_with_bad_input_leaves_a_failed_run_not_a_running_one(tmp_path, nst):
    out = tmp_path / "outputs"
    out.mkdir()
    done = nst(out, "-m", *SWEEP_JOB, "content=" + str(tmp_path / "nope.png"))
    assert done.returncode == 1 and "nope.png" in done.stderr
    (run,) = runs(store_client(out), "run")
    assert run.info.status == "FAILED" and "nope.png" in run.data.tags[tags.TAG_FAILURE]


@pytest.mark.parametrize("content", ["nope.png", "tubingn"], ids=["missing file", "unknown sample"])
def test_a_refused_single_run_leaves_no_run_and_no_folder(tmp_path, nst, content):
    out = tmp_path / "outputs"
    out.mkdir()
    done = nst(out, *SWEEP_JOB, f"content={tmp_path / content if content.endswith('.png') else content}")
    assert done.returncode == 2 and content in one_line_error(done.stderr)
    left_nothing(out)


def test_rerun_skips_finished_jobs(tracked_sweep, tmp_path, nst):
    # a copy of the session's sweep: running it again adds a parent run, which the other tests must not see
    out = tmp_path / "outputs"
    shutil.copytree(tracked_sweep[0], out)
    done = nst(out, "-m", *SWEEP_JOB, "loss.style_weight=1,100,1e4")
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("skipped, identical config already FINISHED") == 3
    assert (done.stdout + done.stderr).count("already FINISHED") == 3  # once each, not logged again on the console
    client = store_client(out)
    assert len(runs(client, "run", "FINISHED")) == 3
    # the new parent still reports all three jobs, reused from the first sweep
    newest = store.latest_sweep(client, "nst")
    table = sweep_report.sweep_table(client, newest)
    assert len(table) == 3 and table["reused"].all()


@pytest.mark.slow  # 14-21 s: make test stays under 10 minutes
def test_failed_job_is_failed_and_runs_again(tmp_path, nst):
    out = tmp_path / "outputs"
    out.mkdir()
    args = ["-m", *SWEEP_JOB, "optimizer=adam", "optimizer.lr=0.01,1e30"]
    first = nst(out, *args)
    assert first.returncode == 1, first.stderr[-3000:]  # the sweep ran both jobs, one failed
    assert "1 of 2 jobs did not finish" in first.stderr
    client = store_client(out)
    failed = runs(client, "run", "FAILED")
    assert len(failed) == 1 and "non-finite" in failed[0].data.tags[tags.TAG_FAILURE]
    assert "last_finite.png" in artifact_paths(client, failed[0].info.run_id)
    assert runs(client, "sweep")[0].info.status == "FINISHED"

    second = nst(out, *args)
    assert second.returncode == 1
    assert second.stdout.count("skipped, identical config already FINISHED") == 1
    assert len(runs(client, "run", "FAILED")) == 2 and len(runs(client, "run", "FINISHED")) == 1


# --- a run's end, whatever a signal interrupts ---------------------------------------------------------


def test_a_sigterm_while_the_runs_end_is_recorded_waits_for_it(tmp_path, nst, monkeypatch):
    """SIGTERM just after result.png and run.json were written used to leave the store saying KILLED, without
    the result, the triptych or the evaluation count, while the folder said FINISHED."""
    from nst.tracking.recorder import RunRecorder

    real_log_result = RunRecorder.log_result

    def signalled(self, *args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)  # arrives as the run's end is being recorded
        return real_log_result(self, *args, **kwargs)

    monkeypatch.setattr(RunRecorder, "log_result", signalled)
    done = single_run(nst, tmp_path, *TRACKED_RUN)
    assert done.returncode == 130, done.stderr[-3000:]
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    (run,) = runs(store_client(tmp_path / "outputs"))
    assert record["status"] == run.info.status == "FINISHED"
    assert run.data.metrics["evaluations"] == record["evaluations"]
    assert {"result/result.png", "result/triptych.png"} <= set(artifact_paths(store_client(tmp_path / "outputs"),
                                                                               run.info.run_id, "result"))


def test_an_interrupted_run_keeps_its_losses_and_run_json_with_its_status(tmp_path, nst, monkeypatch):
    """Ctrl-C mid-run left MLflow right but no losses.csv or run.json on disk."""
    from nst.tracking.run_folder import RunFolder

    real_on_evaluation = RunFolder.on_evaluation

    def interrupted(self, record, image):
        real_on_evaluation(self, record, image)
        if record["evaluation"] == 4:
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(RunFolder, "on_evaluation", interrupted)
    done = single_run(nst, tmp_path, *TRACKED_RUN)
    assert done.returncode == 130, done.stderr[-3000:]
    folder = tmp_path / "run"
    record = json.loads((folder / "run.json").read_text())
    assert record["status"] == "KILLED" and record["failure"].startswith("interrupted")
    rows = (folder / "losses.csv").read_text().splitlines()[1:]
    assert len(rows) == record["evaluations"] >= 4
    assert (folder / "partial.png").is_file() and not (folder / "result.png").exists()
    (run,) = runs(store_client(tmp_path / "outputs"))
    assert run.info.status == "KILLED"
    assert "run.json" in artifact_paths(store_client(tmp_path / "outputs"), run.info.run_id)


def test_a_signal_python_drops_in_a_garbage_collection_callback_still_stops_the_run(tmp_path, nst, monkeypatch):
    """SIGTERM handled while Python ran a weakref callback (SQLAlchemy's, in the field): the KeyboardInterrupt
    was printed as 'Exception ignored' and dropped, and the run went on to FINISHED with exit status 0."""
    from nst.tracking.run_folder import RunFolder

    real_on_evaluation = RunFolder.on_evaluation

    class Collected:
        pass

    def signalled_in_a_callback(self, record, image):
        real_on_evaluation(self, record, image)
        if record["evaluation"] == 3:
            doomed = Collected()
            keep = weakref.ref(doomed, lambda _ref: os.kill(os.getpid(), signal.SIGTERM))
            del doomed  # the callback runs, the handler raises inside it, Python drops that
            assert keep() is None

    monkeypatch.setattr(RunFolder, "on_evaluation", signalled_in_a_callback)
    done = single_run(nst, tmp_path, *TRACKED_RUN)
    assert done.returncode == 130, done.stderr[-3000:]
    (run,) = runs(store_client(tmp_path / "outputs"))
    assert run.info.status == "KILLED"
    assert json.loads((tmp_path / "run" / "run.json").read_text())["status"] == "KILLED"


def test_the_log_mlflow_keeps_has_the_result_line(tmp_path, nst):
    """The run's cli.log was logged to MLflow before anything was written to it (0 bytes)."""
    done = single_run(nst, tmp_path, *TRACKED_RUN)
    assert done.returncode == 0, done.stderr[-3000:]
    client = store_client(tmp_path / "outputs")
    (run,) = runs(client)
    logged = Path(client.download_artifacts(run.info.run_id, "cli.log", str(tmp_path)))
    assert "nst: result " in logged.read_text()

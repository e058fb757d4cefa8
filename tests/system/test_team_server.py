"""A team's MLflow tracking server (PostgreSQL behind it) used by several commands at once: a server restarted
under a sweep loses no record, one that stays down fails a run in one line and ``nst-report --relog`` records it
later, and nst-review judgements made while two sweeps record are each counted once.

Slow: real ``nst`` processes against a real server, which the tests stop and start (the ``cluster`` fixture).
"""

from __future__ import annotations

import os
import re
import tempfile
import threading
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest
from mlflow import MlflowClient

from nst.compare import review
from nst.errors import TrackingError
from nst.tracking import store, tags
from nst.tracking.recorder import Recording
from tests.helpers.cli import one_line_error, run_nst_process, run_report, start_nst
from tests.helpers.overrides import PAIR
from tests.helpers.reviews import published, synthetic_sweep
from tests.helpers.store import runs
from tests.helpers.team_server import ReviewApp, folder_differences
from tests.helpers.waiting import wait_for

pytestmark = pytest.mark.slow

# a job of 10-30 s here on 2 cores (longer than stopping the server takes), recording a progress image every 5
# evaluations
JOB = [*PAIR, "model=random", "image.size=48", "epochs=30", "optimizer.max_iter=10",
       "optimizer.convergence_tolerance=null", "frame_every=5", "progress=false", "tracking=server"]
# quick jobs: a sweep to review
QUICK_JOB = [*PAIR, "model=random", "image.size=32", "epochs=1", "optimizer.max_iter=3", "progress=false",
             "tracking=server"]
WAITING = re.compile(r"^nst: warning: the MLflow tracking server http://\S+ is not answering \(Connection refused\); "
                     r"nst tries again for up to \d+ s \(NST_STORE_WAIT\)", re.M)
BACK = re.compile(r"^nst: the MLflow tracking server http://\S+ answers again \(after \d+ s\); recording goes on$",
                  re.M)


@pytest.fixture(autouse=True)
def _environment_put_back(monkeypatch):
    """What a ``StoreClient`` made in this process sets in its environment (MLflow's retries) is taken back after
    each test."""
    for name, value in store.MLFLOW_SERVER_SETTINGS.items():
        monkeypatch.setenv(name, os.environ.get(name, value))


def _answers(uri: str) -> bool:
    return store.health_problem(uri, 2) is None


def _experiment(name: str) -> str:
    """A name no earlier session used on this server (it keeps every experiment)."""
    return f"team-{name}-{uuid.uuid4().hex[:8]}"


def _recording(client, experiment: str, min_step: int = 10):
    """A RUNNING run of ``experiment`` whose losses reached the server at step ``min_step`` or later, or None (also
    while the server does not answer)."""
    try:
        for run in runs(client, "run", "RUNNING", experiment):
            history = client.get_metric_history(run.info.run_id, "total")
            if history and max(metric.step for metric in history) >= min_step:
                return run
    except Exception:  # noqa: BLE001 - MLflow's client raises its own exception for a refused connection
        return None
    return None


def _finished_as_in_folders(client, experiment: str, jobs: int) -> list:
    """The sweep of ``experiment``: its parent and ``jobs`` children FINISHED, each child with every step of its
    losses.csv as metrics, the parent with the sweep's summary and report, nothing RUNNING; the children."""
    (parent,) = runs(client, "sweep", None, experiment)
    assert parent.info.status == "FINISHED", parent.data.tags.get(tags.TAG_FAILURE)
    children = [run for _, run in store.sweep_runs(client, parent.info.run_id)]
    assert len(children) == jobs
    for run in children:
        assert run.info.status == "FINISHED", run.data.tags.get(tags.TAG_FAILURE)
        assert folder_differences(client, run) == [], run.info.run_name
        assert run.data.metrics["evaluations"] == len(
            (Path(run.data.tags[tags.TAG_OUTPUT_DIR]) / "losses.csv").read_text().splitlines()) - 1
    assert parent.data.metrics["sweep/jobs_finished"] == jobs and parent.data.metrics["sweep/jobs_failed"] == 0
    logged = {item.path for item in client.list_artifacts(parent.info.run_id, "sweep")}
    assert {"sweep/report.html", "sweep/grid.png", "sweep/summary.csv"} <= logged
    assert runs(client, None, "RUNNING", experiment) == []
    return children


def test_a_server_restarted_mid_sweep_loses_no_record(cluster, tmp_path, calibrated):
    """The server stopped while a sweep's first job records, down for a while, started again: the jobs wait, the
    user is told once, and every job ends FINISHED with every step of its losses.csv in the store."""
    experiment = _experiment("restart")
    client = MlflowClient(cluster.tracking_uri)
    out = tmp_path / "outputs"
    # a wait longer than a restart takes on a busy machine (the server needs 20-60 s to start here)
    sweep = start_nst(out, "-m", *JOB, f"tracking.experiment={experiment}", "loss.style_weight=1,100,1e4",
                      env={**cluster.environment(), "NST_STORE_WAIT": "300"})
    try:
        wait_for(lambda: sweep.poll() is not None or _recording(client, experiment), timeout=180)
        assert sweep.poll() is None, sweep.communicate()
        cluster.restart_server(down_s=10)
        stdout, stderr = sweep.communicate(timeout=420)
    finally:
        if sweep.poll() is None:
            sweep.kill()
    assert sweep.returncode == 0, stderr[-3000:]
    assert "Traceback" not in stdout + stderr, (stdout + stderr)[-3000:]
    assert len(WAITING.findall(stderr)) == 1 and len(BACK.findall(stderr)) == 1, stderr[-3000:]
    assert "nst: sweep report" in stdout
    _finished_as_in_folders(client, experiment, 3)


def test_a_sweep_job_that_starts_while_the_server_restarts_waits_for_it(cluster, tmp_path, monkeypatch, capsys):
    """A job of a sweep opening the store in a new process (a SLURM job) while the server restarts waits for it,
    saying so once; a single run (the command a user typed) is still refused at once."""
    monkeypatch.setenv("NST_STORE_WAIT", "300")
    spec = store.TrackingSpec(enabled=True, uri=cluster.tracking_uri, artifact_location=None,
                              experiment=_experiment("start"), resume=True, output_dir=str(tmp_path))
    store.forget_connections()
    cluster.stop_server()
    try:
        started = time.monotonic()
        with pytest.raises(TrackingError, match="is not reachable"):
            Recording(spec).open(SimpleNamespace(sweep_id=None))
        assert time.monotonic() - started < 30
        back = threading.Timer(5, cluster.start_server)
        back.start()
        recording = Recording(spec)
        recording.open(SimpleNamespace(sweep_id="0123abcd"))
        back.join()
    finally:
        if not _answers(cluster.tracking_uri):
            cluster.start_server()
        store.forget_connections()
    assert recording.client.get_experiment(recording.experiment_id).name == spec.experiment
    said = capsys.readouterr().err
    assert len(WAITING.findall(said)) == 1 and len(BACK.findall(said)) == 1, said


def test_a_server_down_past_the_wait_fails_the_run_in_one_line_and_relog_records_it(cluster, tmp_path, calibrated):
    """The server stopped under a run and still down when it ends: the run goes on, ends within the wait with one
    error line naming the server and the relog command, its folder whole; once the server is back, ``nst-report
    --relog`` records all of it."""
    experiment = _experiment("down")
    client = MlflowClient(cluster.tracking_uri)
    out = tmp_path / "outputs"
    env = {**cluster.environment(), "NST_STORE_WAIT": "8"}
    run = start_nst(out, *JOB, "epochs=40", f"tracking.experiment={experiment}", f"hydra.run.dir={tmp_path / 'run'}",
                    env=env)
    try:
        wait_for(lambda: run.poll() is not None or _recording(client, experiment), timeout=180)
        assert run.poll() is None, run.communicate()
        cluster.stop_server()
        stopped = time.monotonic()
        try:
            stdout, stderr = run.communicate(timeout=300)
        finally:
            cluster.start_server()
        ended_after = time.monotonic() - stopped
    finally:
        if run.poll() is None:
            run.kill()
    folder = tmp_path / "run"
    assert run.returncode == 1, stderr[-3000:]
    line = one_line_error(stderr)
    assert f"the MLflow tracking server {cluster.tracking_uri} has not answered for" in line
    assert line.endswith(f"nst-report --relog {folder}"), line
    assert len(WAITING.findall(stderr)) == 1, stderr[-3000:]
    assert ended_after < 150, ended_after  # the optimisation's own seconds, and a wait of 8 s: not MLflow's minutes
    assert all((folder / name).is_file() for name in ("result.png", "losses.csv", "run.json"))
    (recorded,) = runs(client, "run", None, experiment)
    assert recorded.info.status == "RUNNING" and folder_differences(client, recorded) != []

    done = run_report("--relog", str(folder), env=cluster.environment())
    assert done.returncode == 0, done.stderr[-3000:]
    (recorded,) = runs(client, "run", None, experiment)
    assert recorded.info.status == "FINISHED", recorded.data.tags.get(tags.TAG_FAILURE)
    assert folder_differences(client, recorded) == []
    assert "result" in {item.path for item in client.list_artifacts(recorded.info.run_id)}


def test_judgements_made_while_two_sweeps_record_are_each_counted_once(cluster, tmp_path, calibrated):
    """nst-review on a finished sweep, on two machines (two apps that do not share a lock file), answered by three
    reviewers while two more sweeps record into the same experiment, a judgement now and then sent again to the
    other app: every judgement is kept once, the published ranking counts each once, and both sweeps end right."""
    experiment = _experiment("review")
    client = MlflowClient(cluster.tracking_uri)
    done = run_nst_process(tmp_path / "reviewed", "-m", *QUICK_JOB, f"tracking.experiment={experiment}",
                           "loss.style_weight=1e-2,1,100,1e4", env=cluster.environment(), timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    parent = store.latest_sweep(client, experiment)
    reviewed = [run.info.run_id for _, run in store.sweep_runs(client, parent)]
    apps = [ReviewApp(cluster.tracking_uri, experiment, [parent])]
    sweeps = []
    try:
        apps.append(ReviewApp(cluster.tracking_uri, experiment, [parent],
                              env={"TMPDIR": tempfile.mkdtemp(dir=tmp_path)}))  # another machine's
        assert {app.home for app in apps} == {parent}
        for number in (1, 2):
            sweeps.append(start_nst(tmp_path / f"sweep{number}", "-m", *JOB, "epochs=15",
                                    f"tracking.experiment={experiment}", f"loss.style_weight=1,{number}00",
                                    env=cluster.environment()))
        wait_for(lambda: _recording(client, experiment, min_step=5), timeout=180)
        kept, statuses, errors = [], [], []
        lock = threading.Lock()

        def reviewer(name: str, number: int) -> None:
            try:
                for k in range(6):
                    app, other = apps[(number + k) % 2], apps[(number + k + 1) % 2]
                    status, pair = app.request("api/pair")
                    assert status == 200, pair
                    judgement = (pair["id"], pair["left"], pair["right"], ("left", "right", "tie")[k % 3], name)
                    status, answer = app.judge(*judgement)
                    assert status == 201, answer
                    with lock:
                        kept.append(pair["id"])
                    if k % 3 == 1:  # sent again, to the other machine's app: kept already
                        status, answer = other.judge(*judgement)
                        with lock:
                            statuses.append(status)
            except BaseException as exc:  # noqa: BLE001 - failed in the test's own thread below
                errors.append(exc)

        threads = [threading.Thread(target=reviewer, args=(name, number))
                   for number, name in enumerate(("ana", "ben", "cy"))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=600)
        assert not errors, errors
        assert len(kept) == 18 and statuses == [409] * 6
        for sweep in sweeps:
            stdout, stderr = sweep.communicate(timeout=420)
            assert sweep.returncode == 0, stderr[-3000:]
            assert "Traceback" not in stdout + stderr, (stdout + stderr)[-3000:]

        judgements = review.read(client, parent)
        assert sorted(j.id for j in judgements) == sorted(kept)
        assert sorted(published(client, parent)) == sorted(kept)
        assert client.get_run(parent).data.tags[tags.TAG_JUDGEMENTS] == str(len(kept))
        for app in apps:
            status, table = app.request("api/ranking")
            assert status == 200 and sum(row["comparisons"] for row in table) == 2 * len(kept)
        assert sum(client.get_run(run).data.metrics["human.comparisons"] for run in reviewed) == 2 * len(kept)
        for app in apps:
            assert app.stop() == 0, "".join(app.output)[-3000:]
    finally:
        for sweep in sweeps:
            if sweep.poll() is None:
                sweep.kill()
        for app in apps:
            app.kill()
    for number in (1, 2):  # each sweep's own parent and runs, though they shared the experiment
        sweep_client = MlflowClient(cluster.tracking_uri)
        folder = next((tmp_path / f"sweep{number}" / "multiruns").iterdir())
        (own,) = sweep_client.search_runs([client.get_experiment_by_name(experiment).experiment_id],
                                          f"tags.`{tags.TAG_SWEEP_DIR}` = '{folder.resolve()}'")
        assert own.info.status == "FINISHED"
        children = [run for _, run in store.sweep_runs(sweep_client, own.info.run_id)]
        assert len(children) == 2 and all(run.info.status == "FINISHED" for run in children)
        assert all(folder_differences(sweep_client, run) == [] for run in children)
    assert runs(client, None, "RUNNING", experiment) == []


def test_apps_opened_at_once_on_several_sweeps_keep_their_judgements_on_one_run(cluster, monkeypatch):
    """Two reviewers open nst-review on the same two sweeps at the same moment (a review of several sweeps keeps
    its judgements on a run of its own, found by the runs it covers): both must use one run, or each would count
    only its own reviewer's judgements."""
    experiment = _experiment("home")
    client = store.StoreClient(cluster.tracking_uri)
    experiment_id = client.create_experiment(experiment)
    sweeps = [synthetic_sweep(client, experiment_id)[0] for _ in range(2)]
    # each app looks for the review run before either creates one: what two apps started together do
    both_looked = threading.Barrier(2, timeout=60)
    real = store.StoreClient.__getattr__

    def looking(self, name):
        found = real(self, name)
        if name != "search_runs":
            return found

        def search(*args, **kwargs):
            answer = found(*args, **kwargs)
            if f"tags.`{tags.TAG_ROLE}` = '{review.ROLE}'" in kwargs.get("filter_string", "") and \
                    not getattr(self, "looked", False):
                self.looked = True
                both_looked.wait()
            return answer
        return search

    monkeypatch.setattr(store.StoreClient, "__getattr__", looking)
    homes, errors = [], []

    def app() -> None:
        try:
            homes.append(review.select(store.StoreClient(cluster.tracking_uri), experiment, sweeps).home)
        except BaseException as exc:  # noqa: BLE001 - failed in the test's own thread below
            errors.append(exc)

    threads = [threading.Thread(target=app) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    assert len(homes) == 2 and homes[0] == homes[1], homes
    monkeypatch.undo()
    homes_left = client.search_runs([experiment_id], f"tags.`{tags.TAG_ROLE}` = '{review.ROLE}'")
    assert [run.info.run_id for run in homes_left] == homes[:1]
    assert review.select(client, experiment, sweeps, create=False).home == homes[0]  # nst-report --human's


def test_a_damaged_judgement_file_on_a_server_is_named(cluster, tmp_path):
    """A judgement file that cannot be read is named as damaged when the judgements come from a tracking server
    too (the copy a download makes is always new: its age does not tell a file still being written)."""
    experiment = _experiment("damaged")
    client = store.StoreClient(cluster.tracking_uri)
    parent, _ = synthetic_sweep(client, client.create_experiment(experiment))
    name = f"{uuid.uuid4().hex}.json"
    (tmp_path / name).write_text('{"id": "trunc')
    client.log_artifact(parent, str(tmp_path / name), review.JUDGEMENTS)
    assert review.kept(client, parent).damaged == ()  # it may still be being copied: not yet
    time.sleep(5.5)
    assert review.kept(client, parent).damaged == (f"{review.JUDGEMENTS}/{name}",)
    assert review.kept(client, parent).judgements == []


def test_two_processes_writing_one_tag_at_once_both_succeed(cluster):
    """Two clients setting the same new tag of a run at the same moment (two nst-review apps publishing the count
    of one home run; two commands ending one dead run FAILED): MLflow on PostgreSQL refuses the later insert as a
    duplicate key, which is waited out and written, as SQLite's lock is."""
    experiment = _experiment("tag")
    client = store.StoreClient(cluster.tracking_uri)
    run = client.create_run(client.create_experiment(experiment)).info.run_id
    errors = []

    def write(together: threading.Barrier, key: str, value: int) -> None:
        writer = store.StoreClient(cluster.tracking_uri)
        together.wait()
        try:
            writer.set_tag(run, key, str(value))
        except Exception as exc:  # noqa: BLE001 - collected for the assertion below
            errors.append(exc)

    try:
        for round_ in range(10):
            together = threading.Barrier(2, timeout=60)
            writers = [threading.Thread(target=write, args=(together, f"nst.test_{round_}", value))
                       for value in range(2)]
            for writer in writers:
                writer.start()
            for writer in writers:
                writer.join(timeout=120)
    finally:
        client.set_terminated(run, "FINISHED")  # a run of the test's own, not left RUNNING on the server
    assert errors == []
    assert {key for key in client.get_run(run).data.tags if key.startswith("nst.test_")} == {
        f"nst.test_{round_}" for round_ in range(10)}

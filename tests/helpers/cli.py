"""The ``nst`` and ``nst-report`` commands as the tests run them.

``run_nst`` calls the app in this process: what nst says and writes (errors, exit status, files, MLflow
records) is the same as from a fresh interpreter, without its 5 s of start-up. ``run_nst_process`` and
``start_nst`` start ``python -m nst.cli`` for the tests whose subject is the process itself: signals,
kills, several processes at once, what a fresh interpreter imports, launcher workers.
"""

from __future__ import annotations

import contextlib
import gc
import io
import logging
import os
import signal
import subprocess
import sys
import threading
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path

from tests.helpers.threads import LASTING_THREADS

NST = [sys.executable, "-m", "nst.cli"]


def _exit_status(code: object) -> int:
    """The status a process exits with for ``sys.exit(code)`` (a message is printed, status 1)."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


@contextlib.contextmanager
def _process_state(environment: dict[str, str], cwd: Path) -> Iterator[None]:
    """The process-wide state a command changes, set for it and put back after: environment, working
    folder, logging (Hydra configures the root logger per run), the handlers of SIGINT and SIGTERM and the
    signals taken (nst.interrupts), Hydra's globals,
    nst's failed-job list and open sweep; threads the command started are waited for."""
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    from nst import interrupts
    from nst.jobs import driver, sweep_callback
    from nst.tracking import ownership

    saved_environ, saved_cwd, saved_argv = dict(os.environ), os.getcwd(), sys.argv
    root = logging.getLogger()
    handlers, level, raise_exceptions = root.handlers[:], root.level, logging.raiseExceptions
    handlers_of = {number: signal.getsignal(number) for number in interrupts.SIGNALS}
    threads = set(threading.enumerate())
    os.environ.update(environment)
    try:
        os.chdir(cwd)
        yield
    finally:
        for handler in root.handlers:
            if handler not in handlers:  # the job's console and cli.log handlers
                with contextlib.suppress(OSError):  # cli.log's last flush, on a disk that filled up
                    handler.close()
        root.handlers[:] = handlers
        root.setLevel(level)
        logging.raiseExceptions = raise_exceptions
        for number, handler in handlers_of.items():
            signal.signal(number, handler)
        interrupts.forget()
        GlobalHydra.instance().clear()
        HydraConfig.instance().cfg = None
        driver.failed_jobs.clear()
        sweep_callback._open = None
        sys.argv = saved_argv
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_environ)
        _wait_for_threads(threads)
        assert not ownership.HEARTBEAT.beats, f"the command left runs beating: {sorted(ownership.HEARTBEAT.beats)}"


@contextlib.contextmanager
def _mlflow_connections() -> Iterator[None]:
    """The SQLite connections MLflow opened during a command are closed after it, as they are when a process
    ends: MLflow keeps an engine per store, whose idle connections kept a test's own sqlite3 from changing the
    file ("database is locked")."""
    engines = _mlflow_engines()
    known = set(engines)
    try:
        yield
    finally:
        for uri in set(_mlflow_engines()) - known:
            _mlflow_engines()[uri].dispose()  # the engine stays usable: it reconnects when next used


def _mlflow_engines() -> dict:
    """MLflow's engine per store URI (none before MLflow's SQL store is first imported)."""
    store = sys.modules.get("mlflow.store.tracking.sqlalchemy_store")
    return store.SqlAlchemyStore._engine_map if store else {}


def _wait_for_threads(before: set[threading.Thread], timeout: float = 30) -> None:
    """The threads a command started (recorder's writer, video encoder, MLflow's upload pools) have ended: a
    later test that counts threads must not see them end under it."""
    started = [thread for thread in set(threading.enumerate()) - before if thread.name not in LASTING_THREADS]
    if started:
        gc.collect()  # an MLflow artifact repository's idle upload pool ends when the repository is collected
    for thread in started:
        thread.join(timeout)
        assert not thread.is_alive(), f"the command left thread {thread.name!r} running"


def _captured(call: Callable[[], object]) -> tuple[int, str, str]:
    """``call()``'s exit status, stdout and stderr, as a process running it would give them."""
    out, err = io.StringIO(), io.StringIO()
    # redirected before the call: Hydra binds its console log handler to sys.stdout when it configures a job
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            status = _exit_status(call())
        except SystemExit as exc:
            status = _exit_status(exc.code)
        except Exception:  # noqa: BLE001 - what the interpreter does with an uncaught exception
            traceback.print_exc()
            status = 1
    return status, out.getvalue(), err.getvalue()


def run_nst(output_dir: Path, *args: str, cwd: Path | None = None, env: dict | None = None,
            timeout: float | None = None) -> subprocess.CompletedProcess:
    """``nst args`` called in this process, writing under ``output_dir`` (``NST_OUTPUT_DIR``), run from
    ``cwd`` (default: the folder above ``output_dir``) with ``env`` added to the environment; its exit
    status and output as ``subprocess.run`` gives them. ``timeout`` is the subprocess runner's (pytest's
    own timeout stops a test here)."""
    from nst.cli import nst_app

    def main() -> None:
        sys.argv = ["nst", *map(str, args)]
        nst_app.main()

    environment = {"NST_OUTPUT_DIR": str(output_dir), **(env or {})}
    with _process_state(environment, Path(cwd or Path(output_dir).parent)), _mlflow_connections():
        status, out, err = _captured(main)
    return subprocess.CompletedProcess(["nst", *args], status, out, err)


def run_report(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """``nst-report args`` called in this process (``env`` added to the environment)."""
    from nst.cli import nst_report

    saved = dict(os.environ)
    os.environ.update(env or {})
    try:
        with _mlflow_connections():
            status, out, err = _captured(lambda: nst_report.main(list(args)))
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return subprocess.CompletedProcess(["nst-report", *args], status, out, err)


def report(out: Path, *args: str) -> subprocess.CompletedProcess:
    """``nst-report --uri <out's store> args``, in this process."""
    return run_report("--uri", f"sqlite:///{out / 'mlflow.db'}", *args)


def nst_environment(output_dir: Path, env: dict | None = None) -> dict[str, str]:
    """A child process's environment: this one, writing under ``output_dir``, with ``env`` added."""
    return {**os.environ, "NST_OUTPUT_DIR": str(output_dir), **(env or {})}


def run_nst_process(output_dir: Path, *args: str, cwd: Path | None = None, env: dict | None = None,
                    timeout: float = 600) -> subprocess.CompletedProcess:
    """``python -m nst.cli args`` in a subprocess writing under ``output_dir``, run from ``cwd`` (default: the
    folder above ``output_dir``), output captured as text."""
    return subprocess.run([*NST, *args], capture_output=True, text=True, env=nst_environment(output_dir, env),
                          cwd=cwd or Path(output_dir).parent, timeout=timeout)


def start_nst(output_dir: Path, *args: str, env: dict | None = None, **popen) -> subprocess.Popen:
    """``python -m nst.cli args`` started in the background (one torch thread, output piped as text)."""
    environment = nst_environment(output_dir, {"OMP_NUM_THREADS": "1", **(env or {})})
    return subprocess.Popen([*NST, *args], env=environment, cwd=Path(output_dir).parent,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


def refused(done: subprocess.CompletedProcess, line: str) -> None:
    """The command exited 2 with exactly ``line`` on stderr and no traceback."""
    assert done.returncode == 2, done.stderr[-2000:]
    assert line in done.stderr.splitlines(), done.stderr[-2000:]
    assert "Traceback" not in done.stderr + done.stdout


def left_nothing(out: Path) -> None:
    """A refused single run left no MLflow run and no run folder under the output root ``out``."""
    from tests.helpers.store import all_runs

    assert all_runs(out) == []
    assert not any((out / "runs").glob("*")), list((out / "runs").glob("*"))


def one_line_error(stderr: str) -> str:
    """The one ``nst: error:`` line of ``stderr`` (there is exactly one, and no traceback)."""
    lines = [line for line in stderr.splitlines() if line.startswith("nst: error:")]
    assert len(lines) == 1, stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    return lines[0]


def single_run(nst, tmp_path: Path, *overrides: str) -> subprocess.CompletedProcess:
    """One run of ``nst`` (a runner above) writing its folder to tmp_path/run and its store under
    tmp_path/outputs, from tmp_path."""
    return nst(tmp_path / "outputs", f"hydra.run.dir={tmp_path / 'run'}", *overrides, cwd=tmp_path)

"""A tracking server that several commands use at once: a run's records compared with its folder, and nst-review
started against the server and answered over HTTP as its page answers it (no browser)."""

from __future__ import annotations

import csv
import json
import math
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from nst.tracking import tags

# losses.csv's columns that are not metrics
NOT_METRICS = ("evaluation", "epoch")


def folder_differences(client, run) -> list[str]:
    """How the metrics ``run`` holds in the store differ from its folder's losses.csv, where each row is an
    evaluation and each column a metric at step = evaluation: [] when every step of every column is there, once,
    with its value."""
    folder = Path(run.data.tags[tags.TAG_OUTPUT_DIR])
    with open(folder / "losses.csv", newline="") as table:
        rows = list(csv.DictReader(table))
    problems = []
    for key in [name for name in rows[0] if name not in NOT_METRICS]:
        wanted = {int(row["evaluation"]): float(row[key]) for row in rows if math.isfinite(float(row[key]))}
        history = client.get_metric_history(run.info.run_id, key)
        steps = sorted(metric.step for metric in history)
        if steps != sorted(wanted):
            missing, extra = sorted(set(wanted) - set(steps)), len(steps) - len(set(steps))
            problems.append(f"{key}: {len(missing)} steps missing (from {missing[:3]}), {extra} logged twice")
            continue
        wrong = [m.step for m in history if not math.isclose(m.value, wanted[m.step], rel_tol=1e-9, abs_tol=1e-15)]
        if wrong:
            problems.append(f"{key}: other values at steps {wrong[:3]}")
    return problems


class ReviewApp:
    """``python -m nst.cli.nst_review`` against ``uri`` in a subprocess (its own session) on a free port, its output
    drained by a thread; ``url`` once it serves. ``env`` is added to the environment (``TMPDIR`` set apart: an
    app on another machine, which does not see this machine's lock files)."""

    def __init__(self, uri: str, experiment: str, sweeps: Sequence[str], env: dict | None = None):
        self.output: list[str] = []
        lines: queue.Queue[str] = queue.Queue()
        command = [sys.executable, "-m", "nst.cli.nst_review", "--tracking-uri", uri, "--experiment", experiment,
                   "--port", "0", *[arg for sweep in sweeps for arg in ("--sweep", sweep)]]
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                        start_new_session=True,
                                        env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})

        def drain() -> None:
            for line in self.process.stdout:
                self.output.append(line)
                lines.put(line)
            lines.put("")

        threading.Thread(target=drain, daemon=True).start()
        deadline = time.time() + 180
        while True:
            try:
                line = lines.get(timeout=max(0.1, deadline - time.time()))
            except queue.Empty:
                line = ""
            if "open http://" in line:
                self.url = line.split("open ", 1)[1].split()[0]
                self.home = "".join(self.output).split("judgements kept on MLflow run ", 1)[1].split()[0]
                return
            if not line and (self.process.poll() is not None or time.time() > deadline):
                self.kill()
                raise AssertionError(f"nst-review did not start: {''.join(self.output)[-3000:]}")

    def request(self, path: str, body: dict | None = None) -> tuple[int, object]:
        """GET ``path`` (POST ``body`` as JSON when given): the status and the JSON answer."""
        data = json.dumps(body).encode() if body is not None else None
        sent = urllib.request.Request(self.url + path, data=data, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(sent, timeout=300) as answer:
                return answer.status, json.loads(answer.read())
        except urllib.error.HTTPError as refused:
            return refused.code, json.loads(refused.read())

    def judge(self, judgement_id: str, left: str, right: str, answer: str, reviewer: str) -> tuple[int, object]:
        """POST a judgement as the page does: 201 kept, 409 kept already."""
        return self.request("api/judgements", {"id": judgement_id, "left": left, "right": right, "answer": answer,
                                               "reviewer": reviewer})

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM, as a service manager stops it; the exit status."""
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout)
        finally:
            self.kill()

    def kill(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)

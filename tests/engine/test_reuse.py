"""A sweep's jobs that share a backbone and targets build them once per process, and get the same results."""

import csv
from collections import Counter
from pathlib import Path

import pytest

from nst.engine import run, scales
from tests.helpers.overrides import PAIR

JOB = [*PAIR, "model=random", "image.size=32", "epochs=1", "optimizer.max_iter=3", "progress=false", "tracking=none"]


@pytest.fixture
def builds(monkeypatch) -> Counter:
    """How many times the network was loaded, calibrated, and the targets computed."""
    counts: Counter = Counter()

    def counted(name, function):
        def call(*args, **kwargs):
            counts[name] += 1
            return function(*args, **kwargs)
        return call

    monkeypatch.setattr(run, "load_backbone", counted("backbone", run.load_backbone))
    monkeypatch.setattr(run, "calibrate", counted("calibration", run.calibrate))
    monkeypatch.setattr(scales, "StyleTransferLoss", counted("targets", scales.StyleTransferLoss))
    return counts


def _losses(folder: Path) -> list[dict]:
    with open(folder / "losses.csv") as file:
        return [{k: v for k, v in row.items() if k != "elapsed_s"} for row in csv.DictReader(file)]


def test_a_sweeps_jobs_build_the_backbone_calibration_and_targets_once(nst, tmp_path, builds):
    sweep = tmp_path / "sweep"
    done = nst(tmp_path / "outputs", "-m", *JOB, "loss.style_weight=1,100,1e4", f"hydra.sweep.dir={sweep}")
    assert done.returncode == 0, done.stderr[-2000:]
    assert builds == {"backbone": 1, "calibration": 1, "targets": 1}

    alone = nst(tmp_path / "outputs", *JOB, "loss.style_weight=1e4", f"hydra.run.dir={tmp_path / 'alone'}")
    assert alone.returncode == 0, alone.stderr[-2000:]
    assert builds == {"backbone": 2, "calibration": 2, "targets": 2}, "a new command builds its own"
    assert _losses(sweep / "2") == _losses(tmp_path / "alone"), "the third job's run, as if it had run alone"


def test_jobs_that_need_other_targets_build_their_own(nst, tmp_path, builds):
    done = nst(tmp_path / "outputs", "-m", *JOB, "image.size=32,48", f"hydra.sweep.dir={tmp_path / 'sweep'}")
    assert done.returncode == 0, done.stderr[-2000:]
    assert builds["targets"] == 2

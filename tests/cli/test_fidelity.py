"""make fidelity: the check that the ratio experiment reproduces (nst/cli/fidelity.py)."""

import os
import subprocess
import sys

import pytest
from PIL import Image

from nst.cli.fidelity import BETAS, PAIRS, Row, checkerboard_energy, problems, ssim_to_content


def rows(ssims):
    return [Row(beta, 1.0, 1.0, ssim, 10, 1.0) for beta, ssim in zip(BETAS, ssims, strict=True)]


def test_a_monotone_wide_progression_passes():
    assert problems(rows([0.95, 0.9, 0.8, 0.7, 0.6, 0.55]), 0.005, 0.6, 0.25) == []


@pytest.mark.parametrize("ssims, complaint", [
    ([0.95, 0.9, 0.92, 0.7, 0.6, 0.55], "rises from 0.900 at beta=0.1 to 0.920 at beta=1"),
    ([0.55, 0.5, 0.45, 0.4, 0.3, 0.2], "0.550 at alpha/beta=100 is below 0.6"),
    ([0.9, 0.89, 0.88, 0.8, 0.75, 0.7], "falls by 0.200"),  # flat: every tile looks the same
])
def test_a_broken_progression_is_named(ssims, complaint):
    found = problems(rows(ssims), 0.005, 0.6, 0.25)
    assert len(found) == 1 and complaint in found[0], found


def test_ssim_is_one_for_the_content_and_low_for_a_painting(tmp_path, assets_dir):
    content = assets_dir / "tubingen.jpg"
    Image.open(content).convert("RGB").resize((160, 120)).save(tmp_path / "same.png")
    Image.open(assets_dir / "composition_vii.jpg").convert("RGB").resize((160, 120)).save(tmp_path / "other.png")
    assert ssim_to_content(tmp_path / "same.png", content) > 0.97  # resampling differs slightly
    assert ssim_to_content(tmp_path / "other.png", content) < 0.3


@pytest.mark.slow
@pytest.mark.timeout(3600)  # about 20 min alone on 2 cores
def test_the_ratio_experiment_reproduces_on_vgg16_hed(hed_cache, tmp_path):
    """The ratio experiment on every pair of ``PAIRS``, 160 px, the seed's beta grid, real HED weights."""
    env = {**os.environ, "NST_CACHE_DIR": str(hed_cache), "NST_OFFLINE": "1"}
    env.pop("OMP_NUM_THREADS", None)  # every core (the suite gives its small tests one thread each)
    done = subprocess.run([sys.executable, "-m", "nst.cli.fidelity", "--out", str(tmp_path)], capture_output=True,
                          text=True, env=env, timeout=3600)
    print(done.stdout)
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    assert "the ratio experiment reproduces" in done.stdout
    for pair in (pair.replace(":", "_") for pair in PAIRS):
        assert (tmp_path / pair / "grid.png").is_file()
        assert len([p for p in (tmp_path / pair).iterdir() if p.name.isdigit()]) == len(BETAS)


def test_checkerboard_energy_sees_one_pixel_noise_not_edges(tmp_path):
    import numpy as np

    edge = np.zeros((32, 32), np.uint8)
    edge[:, 16:] = 255
    checker = (np.indices((32, 32)).sum(0) % 2 * 40 + 100).astype(np.uint8)
    Image.fromarray(edge).save(tmp_path / "edge.png")
    Image.fromarray(checker).save(tmp_path / "checker.png")
    assert checkerboard_energy(tmp_path / "edge.png") == 0
    assert checkerboard_energy(tmp_path / "checker.png") == pytest.approx(20.0)  # 120 +- 20

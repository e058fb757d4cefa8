"""A run's files (nst/engine/run_files.py): result.png, losses.csv, run.json, config.yaml; last_finite.png
when the loss stopped being finite (the CLI in this process, random backbone)."""

import json

import pandas as pd
from PIL import Image

from tests.helpers.cli import single_run


def test_run_writes_image_losses_config_and_record(tmp_path, nst):
    done = single_run(nst, tmp_path, "progress=false", "content=tubingen", "style=starry_night",
                      "model=random", "image.size=40", "epochs=2", "optimizer.max_iter=3",
                      "device=cpu")
    assert done.returncode == 0, done.stderr
    run = tmp_path / "run"
    image = Image.open(run / "result.png")
    assert image.size == (40, 30) and image.mode == "RGB"  # tubingen is 4:3, long side 40
    losses = pd.read_csv(run / "losses.csv")
    assert len(losses) >= 3 and {"total", "content", "style", "style/conv1_1", "content/conv4_2",
                                 "elapsed_s"} <= set(losses.columns)
    assert losses["total"].iloc[-1] < losses["total"].iloc[0]
    record = json.loads((run / "run.json").read_text())
    assert record["backbone"] == "random" and record["normalization"] == "reference"
    assert record["status"] == "FINISHED" and record["evaluations"] == len(losses)
    assert record["optimizer_space"] == "input" and record["device"] == "cpu"
    config = (run / "config.yaml").read_text()
    assert "epochs: 2" in config and "style_weight: 100.0" in config
    assert (run / ".hydra" / "overrides.yaml").is_file()


def test_non_finite_loss_keeps_last_finite_image(tmp_path, nst):
    done = single_run(nst, tmp_path, "progress=false", "content=tubingen", "style=starry_night",
                      "model=random", "image.size=32", "optimizer=adam", "optimizer.lr=1e30",
                      "epochs=2", "optimizer.max_iter=3")
    assert done.returncode == 2 and "non-finite" in done.stderr
    run = tmp_path / "run"
    assert Image.open(run / "last_finite.png").size == (32, 24)
    assert not (run / "result.png").exists()
    record = json.loads((run / "run.json").read_text())
    assert record["status"] == "FAILED" and "non-finite" in record["failure"]
    assert len(pd.read_csv(run / "losses.csv")) >= 1

"""The `nst` command end to end, in a subprocess, with the random backbone and tiny images."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
NST = [sys.executable, "-m", "nst.cli"]


def single_run(nst, tmp_path, *overrides, env=None):
    """One run writing its folder to tmp_path/run, from tmp_path."""
    return nst(tmp_path / "outputs", "progress=false", "hydra.run.dir=" + str(tmp_path / "run"), *overrides,
               cwd=tmp_path, env=env, timeout=300)


def test_run_writes_image_losses_config_and_record(tmp_path, nst):
    done = single_run(nst, tmp_path, "content=tubingen", "style=starry_night", "model=random", "image.size=40",
                      "epochs=2", "optimizer.max_iter=3", "device=cpu")
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


def test_user_error_exits_2_with_one_line_and_no_traceback(tmp_path, nst):
    done = single_run(nst, tmp_path, "content=" + str(tmp_path / "missing.png"), "style=starry_night", "model=random")
    assert done.returncode == 2
    assert "nst: error: content image" in done.stderr and "missing.png" in done.stderr
    assert "Traceback" not in done.stderr + done.stdout


def test_bad_value_is_refused_before_loading_anything(tmp_path, nst):
    done = single_run(nst, tmp_path, "content=tubingen", "style=starry_night", "loss.style_layers=[conv9_1]",
                      "model=vgg16_hed")  # vgg16_hed is not cached here: the layer check must come first
    assert done.returncode == 2
    assert "loss.style_layers='conv9_1'" in done.stderr and "conv5_3" in done.stderr


def test_image_too_small_for_deepest_layer(tmp_path, nst):
    done = single_run(nst, tmp_path, "content=tubingen", "style=starry_night", "model=random", "image.size=64",
                      "image.style_scale=0.2")
    assert done.returncode == 2
    assert "style image" in done.stderr and "at least 16 px" in done.stderr


def test_non_finite_loss_keeps_last_finite_image(tmp_path, nst):
    done = single_run(nst, tmp_path, "content=tubingen", "style=starry_night", "model=random", "image.size=32",
                      "optimizer=adam", "optimizer.lr=1e30", "epochs=2", "optimizer.max_iter=3")
    assert done.returncode == 2 and "non-finite" in done.stderr
    run = tmp_path / "run"
    assert Image.open(run / "last_finite.png").size == (32, 24)
    assert not (run / "result.png").exists()
    record = json.loads((run / "run.json").read_text())
    assert record["status"] == "FAILED" and "non-finite" in record["failure"]
    assert len(pd.read_csv(run / "losses.csv")) >= 1


def test_help_lists_config_groups(tmp_path):
    done = subprocess.run([*NST, "--help"], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert done.returncode == 0
    for group in ("model:", "optimizer:", "loss:", "image:", "experiment:"):
        assert group in done.stdout
    assert "seed_presentation" in done.stdout and "vgg16_hed" in done.stdout


def test_help_says_what_nst_is_with_sweeps_experiments_launchers_and_samples(tmp_path):
    done = subprocess.run([*NST, "--help"], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert done.returncode == 0, done.stderr
    text = done.stdout
    assert "powered by Hydra" not in text and text.startswith("nst: neural style transfer")
    assert "nst content=tubingen style=starry_night" in text  # examples
    sections = dict(re.findall(r"^== ([A-Z][a-z ]+?) [=(][^\n]*\n(.*?)\n\n", text, re.S | re.M))
    for title, names in (("Sweeps", ["ratio", "style_layers", "controls"]),
                         ("Experiments", ["seed_presentation", "quick", "masks"]),
                         ("Launchers", ["basic", "joblib", "batched", "ray", "slurm"]),
                         ("Sample images", ["tubingen", "starry_night", "composition_vii", "wave"])):
        listed = [line.split()[0] for line in sections[title].splitlines()]
        assert set(names) <= set(listed), (title, listed)
    assert "Gatys et al. Fig. 3" in sections["Sweeps"]  # each with its description


def test_shell_completion_offers_sample_names(tmp_path):
    from nst.cli.nst_app import complete_samples

    assert complete_samples("content=tu") == ["content=tubingen"]
    assert complete_samples("nst content=tubingen style=s") == ["style=starry_night", "style=shipwreck"]
    assert complete_samples("style=[starry_night,the_") == ["style=[starry_night,the_scream"]
    assert complete_samples("model=ran") == [] and complete_samples("content=tubingen ") == []
    # through Hydra's own completion, as `eval "$(nst --shell-completion install=bash)"` calls it
    env = {**os.environ, "COMP_LINE": "nst content=tu", "COMP_POINT": "14"}
    done = subprocess.run([*NST, "--shell-completion", "query=bash"], capture_output=True, text=True,
                          cwd=tmp_path, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["content=tubingen"]
    env["COMP_LINE"] = "nst mod"
    done = subprocess.run([*NST, "--shell-completion", "query=bash"], capture_output=True, text=True,
                          cwd=tmp_path, env=env, timeout=120)
    assert "model=" in done.stdout.split()  # Hydra's completion of keys and groups still works

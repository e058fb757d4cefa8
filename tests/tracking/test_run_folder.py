"""The run folder's side of a run (nst/tracking/run_folder.py), whatever the tracking: print_every lines,
save_every images in progress/, the video's frames (the CLI in this process, random backbone)."""

import json

import pandas as pd
from PIL import Image

from tests.helpers.cli import single_run
from tests.helpers.overrides import FOLDER_RUN


def test_print_every_prints_per_layer_losses(tmp_path, nst):
    done = single_run(nst, tmp_path, "tracking=none", *FOLDER_RUN, "progress=false", "print_every=3")
    assert done.returncode == 0, done.stderr[-3000:]
    losses = pd.read_csv(tmp_path / "run" / "losses.csv")
    lines = [line for line in done.stdout.splitlines() if line.startswith("nst: evaluation ")]
    assert [int(line.split()[2].rstrip(":")) for line in lines] == list(range(3, len(losses) + 1, 3))
    first = lines[0]
    row = losses.iloc[2]
    assert f"total {row['total']:.4g}" in first and "content " in first and f"conv4_2={row['content/conv4_2']:.4g}" in first
    for layer in ("conv1_1", "conv2_1", "conv3_1", "conv4_1", "conv5_1"):
        assert f"{layer}={row[f'style/{layer}']:.4g}" in first
    assert f"tv {row['tv']:.4g}" in first


def test_save_every_writes_numbered_progress_images_and_output_names_the_result(tmp_path, nst):
    done = single_run(nst, tmp_path, "tracking=none", *FOLDER_RUN, "progress=false", "save_every=4",
                      "output=stylised.png")
    assert done.returncode == 0, done.stderr[-3000:]
    folder = tmp_path / "run"
    evaluations = len(pd.read_csv(folder / "losses.csv"))
    saved = sorted(p.name for p in (folder / "progress").iterdir())
    assert saved == [f"{n:04d}.png" for n in range(4, evaluations + 1, 4)]
    assert Image.open(folder / "progress" / saved[0]).size == (32, 24)
    assert Image.open(folder / "stylised.png").size == (32, 24) and not (folder / "result.png").exists()
    assert json.loads((folder / "run.json").read_text())["result"] == "stylised.png"
    assert f"nst: result {folder / 'stylised.png'}" in done.stdout


def test_video_is_written_without_tracking(tmp_path, nst):
    done = single_run(nst, tmp_path, "tracking=none", *FOLDER_RUN, "progress=false", "frame_every=3")
    assert done.returncode == 0, done.stderr[-3000:]
    videos = [p.name for p in (tmp_path / "run").iterdir() if p.stem == "optimisation"]
    assert videos in (["optimisation.mp4"], ["optimisation.gif"])
    assert (tmp_path / "run" / videos[0]).stat().st_size > 0
    assert not (tmp_path / "run" / "progress").exists()  # save_every is off by default

"""What a run shows and leaves in its folder whatever the tracking: the progress bar, print_every,
save_every, the video, the result's name, each message once (the CLI in a subprocess, random backbone)."""

import json
import re

import pandas as pd
import pytest
from PIL import Image

TINY = ["content=tubingen", "style=starry_night", "model=random", "image.size=32", "epochs=2",
        "optimizer.max_iter=4", "device=cpu"]


def run(nst, tmp_path, *overrides):
    """One run with tracking off, its folder tmp_path/run."""
    return nst(tmp_path / "outputs", "tracking=none", "hydra.run.dir=" + str(tmp_path / "run"), *TINY,
               *overrides, cwd=tmp_path, timeout=300)


def test_progress_bar_counts_evaluations_with_content_and_style(tmp_path, nst):
    done = run(nst, tmp_path, "progress=true")
    assert done.returncode == 0, done.stderr[-3000:]
    evaluations = len(pd.read_csv(tmp_path / "run" / "losses.csv"))
    # the planned budget: 2 epochs x 9 L-BFGS evaluations (max_iter 4 + line-search room) + the final one
    assert re.search(r"\| \d+/19 \[", done.stderr), done.stderr[-2000:]
    # L-BFGS stops early here: the bar ends full at the evaluations actually made
    assert f"{evaluations}/{evaluations} [" in done.stderr
    assert "eval/s" in done.stderr and "content=" in done.stderr and "style=" in done.stderr
    assert "epoch" not in done.stderr and "loss=" not in done.stderr


def test_print_every_prints_per_layer_losses(tmp_path, nst):
    done = run(nst, tmp_path, "progress=false", "print_every=3")
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
    done = run(nst, tmp_path, "progress=false", "save_every=4", "output=stylised.png")
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
    done = run(nst, tmp_path, "progress=false", "frame_every=3")
    assert done.returncode == 0, done.stderr[-3000:]
    videos = [p.name for p in (tmp_path / "run").iterdir() if p.stem == "optimisation"]
    assert videos in (["optimisation.mp4"], ["optimisation.gif"])
    assert (tmp_path / "run" / videos[0]).stat().st_size > 0
    assert not (tmp_path / "run" / "progress").exists()  # save_every is off by default


def test_an_error_is_printed_once_and_kept_in_the_log(tmp_path, nst):
    done = run(nst, tmp_path, "content=" + str(tmp_path / "missing.png"))
    assert done.returncode == 2
    assert (done.stdout + done.stderr).count("missing.png") == 1, done.stdout + done.stderr
    assert "nst: error: content image" in done.stderr
    assert "missing.png" in (tmp_path / "run" / "cli.log").read_text()


@pytest.mark.slow  # a new MLflow store: 15-40 s on 2 cores
def test_tracked_run_logs_the_folders_video_progress_images_and_named_result(tmp_path, nst):
    from mlflow import MlflowClient

    out = tmp_path / "outputs"
    done = nst(out, "hydra.run.dir=" + str(tmp_path / "run"), *TINY, "progress=false", "save_every=5",
               "output=named.png", cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    client = MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("nst").experiment_id])
    top = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"optimisation.mp4", "named.png", "progress", "result"} <= top  # progress/ kept as a folder
    assert "progress/0005.png" in {a.path for a in client.list_artifacts(run.info.run_id, "progress")}
    assert "result/result.png" in {a.path for a in client.list_artifacts(run.info.run_id, "result")}


# --- the video, encoded while the run goes on (nst.pictures.Video) -------------------------------

def _frame(size, shade):
    return Image.new("RGB", size, (shade, 255 - shade, 128))


def test_the_video_holds_every_frame_fitted_to_the_results_size(tmp_path):
    av = pytest.importorskip("av")
    from nst.figures.video import Video

    video = Video(tmp_path / "optimisation", (33, 24), depth=2)  # an odd width: padded to 34
    sizes = [(16, 12), (23, 17), (33, 24)] * 4  # coarse-to-fine frames, then full size
    for number, size in enumerate(sizes):
        video.add(_frame(size, 20 * number))  # depth 2: add waits for the encoder, nothing is dropped
    path = video.close()
    assert path == tmp_path / "optimisation.mp4"
    with av.open(str(path)) as container:
        decoded = [frame.to_image() for frame in container.decode(video=0)]
    assert len(decoded) == len(sizes) and {image.size for image in decoded} == {(34, 24)}
    first, last = (image.getpixel((5, 5)) for image in (decoded[0], decoded[-1]))
    assert first[0] < 40 and last[0] > 180  # in the order they came


def test_one_frame_makes_no_video_and_no_encoder_makes_a_gif(tmp_path, monkeypatch):
    from nst.figures.video import Video

    single = Video(tmp_path / "one", (16, 12))
    single.add(_frame((16, 12), 0))
    assert single.close() is None and not list(tmp_path.iterdir())
    av = pytest.importorskip("av")

    def no_encoder(*args, **kwargs):
        raise av.error.ValueError(22, "no H.264 here")

    monkeypatch.setattr(av, "open", no_encoder)
    video = Video(tmp_path / "optimisation", (16, 12), depth=1)
    for shade in range(5):
        video.add(_frame((16, 12), 40 * shade))
    path = video.close()
    assert path == tmp_path / "optimisation.gif" and Image.open(path).n_frames == 5

"""optimisation.mp4 (nst/figures/video.py), encoded by a background thread while the run goes on."""

import pytest
from PIL import Image


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

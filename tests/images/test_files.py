"""Image files (nst/images/files.py): any mode and format read as RGB, resized, saved; only regular files
are opened, and what is wrong with a file is said in one line."""

import io
import os
import re
import shutil
import signal
import socket
import stat
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from nst.errors import ImageError
from nst.images.files import (
    check_image_file,
    header_size,
    load_image,
    load_tensor,
    pil_to_tensor,
    resize_long_side,
    save_png,
    style_long_side,
    tensor_to_pil,
)
from tests.helpers.cli import refused
from tests.helpers.overrides import PAIR, QUICK_UNTRACKED

RED_HALF = (255, 0, 0, 128)  # red at alpha 128 over white -> (255, 127, 127)


OVER_WHITE = (255, round(255 * 127 / 255), round(255 * 127 / 255))


def _make(mode):
    """A 6x4 image of one known colour in ``mode``, and the RGB nst must read from it."""
    if mode == "L":
        return Image.new("L", (6, 4), 100), (100, 100, 100)
    if mode == "LA":  # grey 100 at alpha 128 over white
        return Image.new("LA", (6, 4), (100, 128)), (178, 178, 178)
    if mode == "P":
        image = Image.new("P", (6, 4), 0)
        image.putpalette([200, 10, 30] + [0] * 765)
        return image, (200, 10, 30)
    if mode == "RGB":
        return Image.new("RGB", (6, 4), (10, 200, 30)), (10, 200, 30)
    if mode == "RGBA":
        return Image.new("RGBA", (6, 4), RED_HALF), OVER_WHITE
    if mode == "CMYK":
        return Image.new("CMYK", (6, 4), (0, 255, 255, 0)), (255, 0, 0)
    if mode == "I;16":  # 16-bit grey, 128 * 257 = 32896 -> 128
        return Image.new("I;16", (6, 4), 32896), (128, 128, 128)
    raise AssertionError(mode)


# Every mode in every format that can store it (Pillow writes BMP RGBA as RGB, WebP 16-bit wrongly).
CASES = [
    ("JPEG", "L"), ("JPEG", "RGB"), ("JPEG", "CMYK"),
    ("PNG", "L"), ("PNG", "LA"), ("PNG", "P"), ("PNG", "RGB"), ("PNG", "RGBA"), ("PNG", "I;16"),
    ("WEBP", "L"), ("WEBP", "LA"), ("WEBP", "P"), ("WEBP", "RGB"), ("WEBP", "RGBA"), ("WEBP", "CMYK"),
    ("TIFF", "L"), ("TIFF", "LA"), ("TIFF", "P"), ("TIFF", "RGB"), ("TIFF", "RGBA"), ("TIFF", "CMYK"),
    ("TIFF", "I;16"),
    ("BMP", "L"), ("BMP", "P"), ("BMP", "RGB"),
]


OPTIONS = {"JPEG": {"quality": 100}, "WEBP": {"lossless": True}}


@pytest.mark.parametrize("fmt, mode", CASES, ids=[f"{f}-{m}" for f, m in CASES])
def test_every_mode_and_format_loads_as_expected_rgb(tmp_path, fmt, mode):
    image, expected = _make(mode)
    path = tmp_path / f"image.{fmt.lower()}"
    image.save(path, fmt, **OPTIONS.get(fmt, {}))
    loaded = load_image(path)
    assert loaded.mode == "RGB" and loaded.size == (6, 4)
    pixels = np.asarray(loaded).reshape(-1, 3).astype(int)
    tolerance = 3 if fmt == "JPEG" else 1
    assert np.abs(pixels - np.array(expected)).max() <= tolerance, (pixels[0], expected)


def test_palette_with_transparency_is_composited_on_white(tmp_path):
    image = Image.new("P", (4, 4), 0)
    image.putpalette([10, 20, 30, 40, 50, 60] + [0] * 762)
    image.putpixel((0, 0), 1)
    image.save(tmp_path / "t.png", transparency=0)
    loaded = np.asarray(load_image(tmp_path / "t.png"))
    assert tuple(loaded[0, 0]) == (40, 50, 60)
    assert tuple(loaded[1, 1]) == (255, 255, 255)


def test_exif_orientation_is_honoured(tmp_path):
    image = Image.new("RGB", (8, 4), (0, 0, 0))
    image.paste((255, 255, 255), (0, 0, 2, 4))  # white band on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    image.save(tmp_path / "rotated.jpg", exif=exif, quality=100)
    loaded = load_image(tmp_path / "rotated.jpg")
    assert loaded.size == (4, 8)
    top = np.asarray(loaded)[:2].mean()
    bottom = np.asarray(loaded)[-2:].mean()
    assert top > 200 and bottom < 50  # the left band is now at the top


def test_resize_by_long_side_keeps_aspect():
    image = Image.new("RGB", (300, 200))
    assert resize_long_side(image, 60).size == (60, 40)
    assert resize_long_side(Image.new("RGB", (200, 300)), 60).size == (40, 60)
    assert resize_long_side(Image.new("RGB", (10, 5)), 40).size == (40, 20)  # upscales too


def test_style_long_side_follows_style_scale():
    assert style_long_side(256, 1.0) == 256
    assert style_long_side(256, 0.5) == 128
    assert style_long_side(100, 1.5) == 150


def test_load_tensor_shape_and_range(assets_dir):
    tensor = load_tensor(assets_dir / "tubingen.jpg", 64)
    assert tensor.shape == (1, 3, 48, 64) and tensor.dtype == torch.float32
    assert 0 <= tensor.min() and tensor.max() <= 1


def test_tensor_png_round_trip_and_clamp(tmp_path):
    tensor = torch.rand(1, 3, 5, 7)
    save_png(tensor, tmp_path / "x" / "out.png")
    back = pil_to_tensor(Image.open(tmp_path / "x" / "out.png"))
    assert (back - tensor).abs().max() <= 0.5 / 255 + 1e-6
    clamped = np.asarray(tensor_to_pil(torch.full((3, 2, 2), 2.0)))
    assert (clamped == 255).all()


def test_missing_file(tmp_path):
    with pytest.raises(ImageError, match=r"content image .*nope\.png: no such file"):
        load_image(tmp_path / "nope.png", "content")


def test_directory(tmp_path):
    with pytest.raises(ImageError, match="is a directory"):
        load_image(tmp_path)


def test_empty_file(tmp_path):
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(ImageError, match="empty"):
        load_image(tmp_path / "empty.jpg")


def test_not_an_image(tmp_path):
    (tmp_path / "notes.png").write_text("hello, I am text")
    with pytest.raises(ImageError, match="not an image"):
        load_image(tmp_path / "notes.png")


def test_truncated_image(tmp_path):
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buffer, "PNG")
    (tmp_path / "cut.png").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    with pytest.raises(ImageError, match=r"cut\.png"):
        load_image(tmp_path / "cut.png")


def test_decompression_bomb(tmp_path, monkeypatch):
    Image.new("L", (100, 100)).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 10000 px > 2x the limit: Pillow refuses
    with pytest.raises(ImageError) as refused:
        load_image(tmp_path / "big.png")
    # one limit, the one Pillow applies (it refuses twice MAX_IMAGE_PIXELS and only warns between)
    assert re.findall(r"\d+ pixels", str(refused.value)) == ["10000 pixels", "2000 pixels"]


# --- only regular files are opened ---------------------------------------------------------------


@pytest.fixture
def fifo(tmp_path):
    path = tmp_path / "pipe.jpg"
    os.mkfifo(path)
    return path


@pytest.mark.parametrize("role", ["content", "style", "style_masks"])
def test_a_fifo_is_refused_at_once_not_read(tmp_path, fifo, role, nst):
    # opening a FIFO blocks until a writer comes: before the check this never returned
    given = {"content": f"content={fifo}", "style": f"style={fifo}", "style_masks": f"style_masks=[{fifo}]"}
    args = [*PAIR, *QUICK_UNTRACKED]
    args = [a for a in args if not a.startswith(f"{role}=")] + [given[role]]
    what = {"content": "content", "style": "style", "style_masks": "style_masks[0]"}[role]
    start = time.perf_counter()
    done = nst(tmp_path / "outputs", *args, timeout=60)
    refused(done, f"nst: error: {what} image {fifo}: is a FIFO (named pipe), not a regular file")
    assert time.perf_counter() - start < 60


def test_dev_zero_is_refused_as_a_character_device(tmp_path, nst):
    done = nst(tmp_path / "outputs", "content=/dev/zero", "style=starry_night", *QUICK_UNTRACKED, timeout=60)
    refused(done, "nst: error: content image /dev/zero: is a character device, not a regular file")


def test_a_socket_is_refused():
    folder = Path(tempfile.mkdtemp(prefix="nst-sock-"))  # a unix socket path must be short
    try:
        with socket.socket(socket.AF_UNIX) as server:
            server.bind(str(folder / "s"))
            with pytest.raises(ImageError) as caught:
                load_image(folder / "s", "style")
        assert str(caught.value) == f"style image {folder / 's'}: is a socket, not a regular file"
    finally:
        shutil.rmtree(folder)


@pytest.mark.parametrize("mode, text", [
    (stat.S_IFIFO, "is a FIFO (named pipe), not a regular file"),
    (stat.S_IFCHR, "is a character device, not a regular file"),
    (stat.S_IFBLK, "is a block device, not a regular file"),
    (stat.S_IFSOCK, "is a socket, not a regular file"),
])
def test_every_kind_of_special_file_is_named(tmp_path, monkeypatch, mode, text):
    path = tmp_path / "x.png"
    path.write_bytes(b"x")
    real = os.stat(path)
    fake = os.stat_result((mode | 0o644, *tuple(real)[1:]))
    monkeypatch.setattr(Path, "stat", lambda self, **kwargs: fake)
    with pytest.raises(ImageError) as caught:
        check_image_file(path, "content")
    assert str(caught.value) == f"content image {path}: {text}"


def test_header_peek_skips_a_fifo(fifo):
    def hung(signum, frame):
        raise TimeoutError("header_size opened the FIFO and blocked")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(10)
    try:
        assert header_size(fifo) is None
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


# --- permission and empty files say so ----------------------------------------------------------


def test_an_empty_file_says_0_bytes(tmp_path, nst):
    (tmp_path / "empty.png").write_bytes(b"")
    done = nst(tmp_path / "outputs", f"content={tmp_path / 'empty.png'}", "style=starry_night", *QUICK_UNTRACKED)
    refused(done, f"nst: error: content image {tmp_path / 'empty.png'}: the file is empty (0 bytes)")


def _image(tmp_path):
    path = tmp_path / "photo.png"
    Image.new("RGB", (8, 8), "red").save(path)
    return path


def test_an_unreadable_file_says_permission_denied(tmp_path, monkeypatch):
    path = _image(tmp_path)
    monkeypatch.setattr(os, "access", lambda *args, **kwargs: False)
    with pytest.raises(ImageError) as caught:
        load_image(path, "content")
    assert str(caught.value) == (f"content image {path}: permission denied "
                                 "(cannot read the file; check its permissions)")


def test_a_permission_error_on_open_is_not_called_truncated(tmp_path, monkeypatch):
    # root passes os.access, and an ACL or a network filesystem can still refuse the open
    path = _image(tmp_path)

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(Image, "open", refuse)
    with pytest.raises(ImageError) as caught:
        load_image(path, "style")
    assert str(caught.value) == (f"style image {path}: permission denied "
                                 "(cannot read the file; check its permissions)")


def test_chmod_000_through_the_cli(tmp_path, nst):
    if os.geteuid() == 0:
        pytest.skip("root reads a chmod 000 file (the two tests above cover the message)")
    path = _image(tmp_path)
    path.chmod(0)
    done = nst(tmp_path / "outputs", f"content={path}", "style=starry_night", *QUICK_UNTRACKED)
    refused(done, f"nst: error: content image {path}: permission denied "
                  "(cannot read the file; check its permissions)")

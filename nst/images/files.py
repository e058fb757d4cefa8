"""Image input and output.

Whatever a user hands in (JPEG, PNG, WebP, TIFF, BMP; greyscale, palette,
alpha, CMYK, 16-bit; rotated by an EXIF tag) becomes an RGB float tensor in
[0, 1], because the backbones only understand three 8-bit-like channels.
"""

from __future__ import annotations

import math
import os
import re
import stat
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from nst.errors import ImageError
from nst.files import written

WHITE = (255, 255, 255)


# stat's answer for each kind of path that is not a regular file; opening one of these can block
# forever (a FIFO waits for a writer) or never end (/dev/zero), so the type is read before any open
_NOT_REGULAR = (
    (stat.S_ISDIR, "is a directory, expected an image file"),
    (stat.S_ISFIFO, "is a FIFO (named pipe), not a regular file"),
    (stat.S_ISCHR, "is a character device, not a regular file"),
    (stat.S_ISBLK, "is a block device, not a regular file"),
    (stat.S_ISSOCK, "is a socket, not a regular file"),
)
PERMISSION_DENIED = "permission denied (cannot read the file; check its permissions)"


def check_image_file(path: str | os.PathLike, what: str = "image") -> Path:
    """Refuse, from ``stat`` alone, anything but a non-empty, readable regular file; return ``path``.

    Every path a run reads goes through this before it is opened: Pillow (and the
    header peek of the memory check) would hang on a FIFO and read /dev/zero forever.
    """
    path = Path(path)
    try:
        info = path.stat()
    except FileNotFoundError:
        raise ImageError(f"{what} image {path}: no such file") from None
    except PermissionError:
        raise ImageError(f"{what} image {path}: {PERMISSION_DENIED}") from None
    except OSError as exc:
        raise ImageError(f"{what} image {path}: cannot be read ({exc.strerror or exc})") from exc
    for is_kind, text in _NOT_REGULAR:
        if is_kind(info.st_mode):
            raise ImageError(f"{what} image {path}: {text}")
    if info.st_size == 0:
        raise ImageError(f"{what} image {path}: the file is empty (0 bytes)")
    if not os.access(path, os.R_OK):
        raise ImageError(f"{what} image {path}: {PERMISSION_DENIED}")
    return path


def load_image(path: str | os.PathLike, what: str = "image") -> Image.Image:
    """Open ``path`` as an 8-bit RGB PIL image, upright per EXIF, alpha composited on white."""
    path = check_image_file(path, what)
    try:
        with Image.open(path) as opened:
            opened.load()
            image = ImageOps.exif_transpose(opened)
            return to_rgb(image)
    except Image.DecompressionBombError as exc:  # Pillow refuses twice its MAX_IMAGE_PIXELS (and warns above it)
        pixels = re.search(r"\((\d+) pixels\)", str(exc))
        raise ImageError(f"{what} image {path}: {pixels[1] + ' pixels, ' if pixels else ''}more than Pillow "
                         f"opens safely ({2 * Image.MAX_IMAGE_PIXELS} pixels, its guard against decompression "
                         f"bombs): use a smaller image") from exc
    except UnidentifiedImageError as exc:
        raise ImageError(
            f"{what} image {path}: not an image Pillow can read (JPEG, PNG, WebP, TIFF and BMP work)"
        ) from exc
    except PermissionError as exc:  # os.access says yes to root, and ACLs can still refuse
        raise ImageError(f"{what} image {path}: {PERMISSION_DENIED}") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"{what} image {path}: cannot be decoded ({exc}); is it truncated?") from exc


def header_size(path: str | os.PathLike) -> tuple[int, int] | None:
    """(width, height) from the file header without decoding pixels; None if unreadable.

    Only a regular file is opened: a FIFO would block here before ``load_image`` could refuse it.
    """
    if not Path(path).is_file():
        return None
    try:
        with Image.open(path) as image:
            return image.size
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        return None


def scaled_size(size: tuple[int, int], long_side: int) -> tuple[int, int]:
    """(width, height) after ``resize_long_side``."""
    width, height = size
    scale = long_side / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB; transparency is composited on white."""
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        # 16-bit images hold 0..65535; 32-bit integer ones that Pillow made from 16-bit files too.
        top = 65535.0 if mode != "F" else max(float(array.max()), 1.0)
        if mode == "I" and array.max() <= 255:
            top = 255.0
        array = np.clip(array / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(array).convert("RGB")
    has_alpha = mode in ("RGBA", "LA", "PA", "La", "RGBa") or (
        mode in ("P", "L", "RGB") and "transparency" in image.info
    )
    if has_alpha:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, WHITE + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def resize_long_side(image: Image.Image, long_side: int) -> Image.Image:
    """Scale ``image`` so that its longer side is ``long_side`` pixels, keeping the aspect ratio."""
    size = scaled_size(image.size, long_side)
    if size == image.size:
        return image
    return image.resize(size, Image.Resampling.LANCZOS)


def style_long_side(content_long_side: int, style_scale: float) -> int:
    """The style image's long side: ``style_scale`` times the content's (jcjohnson's -style_scale)."""
    return max(1, math.ceil(content_long_side * style_scale))


def pil_to_tensor(image: Image.Image) -> torch.Tensor:
    """PIL RGB -> float tensor (1, 3, H, W) in [0, 1]."""
    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0).contiguous()


def tensor_to_pil(tensor: torch.Tensor) -> Image.Image:
    """Tensor (1, 3, H, W) or (3, H, W) -> PIL RGB; values are clamped to [0, 1] here, not earlier."""
    if tensor.dim() == 4:
        tensor = tensor[0]
    array = tensor.detach().float().clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(array)


def upsample(image: torch.Tensor, size: tuple[int, int] | torch.Size) -> torch.Tensor:
    """(B, 3, h, w) -> (B, 3, *size), bilinearly, unclamped: how a coarse scale's result starts the next scale
    (clamping it there raised the loss it started from 250-fold: 221 -> 5.9e4 at 256 px)."""
    return torch.nn.functional.interpolate(image, size=tuple(size), mode="bilinear", align_corners=False)


def load_tensor(path: str | os.PathLike, long_side: int, what: str = "image") -> torch.Tensor:
    """Load ``path`` and resize it to ``long_side`` as a (1, 3, H, W) tensor in [0, 1]."""
    return pil_to_tensor(resize_long_side(load_image(path, what), long_side))


def load_mask(path: str | os.PathLike, height: int, width: int, what: str = "mask") -> torch.Tensor:
    """A mask image as (1, 1, height, width) in [0, 1]: its luminance, stretched to the content's shape."""
    gray = load_image(path, what).convert("L").resize((width, height), Image.Resampling.BILINEAR)
    return torch.from_numpy(np.asarray(gray, dtype=np.float32) / 255.0)[None, None].contiguous()


def save_png(tensor: torch.Tensor, path: str | os.PathLike) -> Path:
    """Save an image tensor as PNG (clamped to [0, 1]), written whole; parent folders are created."""
    path = Path(path)
    with written(path) as temporary:
        tensor_to_pil(tensor).save(temporary, format="PNG")
    return path

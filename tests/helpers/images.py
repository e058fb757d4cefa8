"""Synthetic test images."""

from __future__ import annotations

import torch


def smooth_image(h: int, w: int, seed: int = 0) -> torch.Tensor:
    """A smooth random RGB image in [0, 1] (low-frequency, so the backbone sees structure)."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, max(2, h // 8), max(2, w // 8), generator=generator)
    return torch.nn.functional.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)


def result_images(count: int, side: int) -> list:
    """``count`` 4:3 results of long side ``side``, each its own colour (PIL images)."""
    from PIL import Image

    return [Image.new("RGB", (side, side * 3 // 4), (40 * i % 255, 90, 160)) for i in range(count)]

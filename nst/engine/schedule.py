"""Coarse-to-fine schedules derived from the image size (``image.scales=auto``).

As crowsonkb/style-transfer-pytorch does, the long sides go up from 128 px to
``image.size`` by factors of sqrt(2) (512 -> 128, 181, 256, 362, 512), each
scale starting from the previous result upsampled; below 128 px VGG's conv5_1
sees fewer than 8 positions a side.

How long each scale runs: the final scale keeps the whole budget (``epochs``)
and the coarser ones together cost an eighth of it, split equally (an
evaluation at half the side costs a quarter). This schedule is for what
coarse-to-fine is known for (Gatys et al. 2017: large structures at high
resolution), not for reaching a low loss sooner (docs/pages/performance.md).
"""

from __future__ import annotations

import math

SMALLEST = 128  # px: the coarsest long side
STEP = math.sqrt(2)  # ratio of successive long sides (pixels halve)
COARSE_SHARE = 1 / 8  # what all coarser scales together cost, as a share of the final scale's budget


def auto_scales(size: int, smallest: int = SMALLEST) -> tuple[int, ...]:
    """Long sides from ``smallest`` up to ``size`` by factors of sqrt(2), coarse first; ``(size,)`` when
    ``size`` is at most ``smallest``."""
    sides = {size}
    power = 1
    while (side := round(size / STEP**power)) >= smallest:
        sides.add(side)
        power += 1
    return tuple(sorted(sides))


def coarse_to_fine(size: int, budget: int) -> list[tuple[int, int]]:
    """(long side, budget) per scale: the final scale keeps ``budget`` (epochs or evaluations), the coarser
    ones share ``COARSE_SHARE`` of its cost, each at least 1 and at most ``budget``.

    >>> coarse_to_fine(512, 20)
    [(128, 10), (181, 5), (256, 2), (362, 1), (512, 20)]
    """
    sides = auto_scales(size)
    coarse = sides[:-1]
    each = budget * COARSE_SHARE / max(len(coarse), 1)  # in evaluations (epochs) at the final size
    return [*((side, min(budget, max(1, round(each * (size / side) ** 2)))) for side in coarse), (size, budget)]

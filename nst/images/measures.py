"""Automatic measures of a result, beside the human judgements: cheap stand-ins for the two sides of the
content-style trade-off, logged as metrics on every finished run (``auto.*``) so runs can be sorted by them.

Why these two. A style transfer keeps the photo's structure and takes the painting's look; each measure
approximates one side:

- ``auto.ssim_content``: the structural similarity (SSIM, Wang et al. 2004) of the result to the content
  image, grayscale, Gaussian window of sigma 1.5, the content resized to the result's size. It measures how
  much of the photo's structure survives (edges, local contrast); higher is closer to the content. The same
  SSIM ``make fidelity`` uses to check that it falls as the style weight grows (``nst.cli.fidelity``).
- ``auto.color_distance_style``: the 2-Wasserstein (Frechet) distance between Gaussian fits (mean and 3x3
  covariance) of the result's and the style image's pixel colours in CIELAB, in Lab units (shifting every
  pixel's colour by a Delta-E of d moves it by d). It measures how far the result's palette is from the
  painting's; lower is closer to the style.

What they are NOT: a judgement of quality. The unchanged photo has SSIM 1, and nobody calls it a good style
transfer; a result recoloured with the painting's palette and nothing else scores well on colour. The colour
statistics ignore texture and brush strokes (where the colours are, the strokes' shapes), and both measures
are blind to artefacts such as the checkerboard noise of strided layers or a washed-out corner. They place a
run on the trade-off; a person judges whether it is good (``nst-review``, ``nst.compare.ranking``).

Both are cheap beside a run (tens of milliseconds at 512 px: docs/pages/performance.md); scikit-image is
imported inside the functions, only when a run is measured. The colour distance first shrinks both images to at most 256 px on the long side (``COLOR_SIDE``, area
averaging: deterministic), so it costs the same for any size; SSIM is computed at the result's size.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
from PIL import Image

SSIM_SIGMA = 1.5
COLOR_SIDE = 256  # the colour statistics are fitted on images at most this long on their long side


def ssim_to_content(result: Image.Image, content: Image.Image) -> float:
    """Grayscale SSIM (Gaussian window, sigma 1.5) of ``result`` to ``content`` resized (LANCZOS) to it.

    1 for the content itself, about 0.05-0.25 for an unrelated painting against a photo; NaN for a result
    smaller than the 11-px window on either side.
    """
    from skimage.metrics import structural_similarity

    image = result.convert("L")
    reference = content.convert("RGB").resize(image.size, Image.Resampling.LANCZOS).convert("L")
    if min(image.size) < 2 * int(3.5 * SSIM_SIGMA + 0.5) + 1:
        return math.nan
    a, b = (np.asarray(x, dtype=np.float64) / 255.0 for x in (image, reference))
    return float(structural_similarity(a, b, gaussian_weights=True, sigma=SSIM_SIGMA,
                                       use_sample_covariance=False, data_range=1.0))


def lab_pixels(image: Image.Image, side: int = COLOR_SIDE) -> np.ndarray:
    """The image's pixels in CIELAB, one row each (N x 3), after shrinking it to at most ``side`` px."""
    from skimage.color import rgb2lab

    picture = image.convert("RGB")
    if max(picture.size) > side:
        scale = side / max(picture.size)
        size = (max(1, round(picture.width * scale)), max(1, round(picture.height * scale)))
        picture = picture.resize(size, Image.Resampling.BOX)
    return rgb2lab(np.asarray(picture, dtype=np.float64) / 255.0).reshape(-1, 3)


def color_distance_to_style(result: Image.Image, style: Image.Image) -> float:
    """The 2-Wasserstein distance between Gaussian fits of the two images' CIELAB colours (Lab units).

    ``sqrt(|m1 - m2|^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)))``: 0 for identical colour statistics, lower when
    the result's palette is closer to the style's. The trace of the square root is the sum of the square
    roots of ``S1 S2``'s eigenvalues (real and non-negative: it is similar to ``S1^(1/2) S2 S1^(1/2)``);
    ``scipy.linalg.sqrtm`` gives the same number but warns, and may lose accuracy, when a covariance is
    singular, as a flat or a grey picture's is.
    """
    fits = []
    for image in (result, style):
        pixels = lab_pixels(image)
        fits.append((pixels.mean(axis=0), np.cov(pixels, rowvar=False, bias=True)))
    (m1, s1), (m2, s2) = fits
    cross = np.sqrt(np.clip(np.linalg.eigvals(s1 @ s2).real, 0.0, None)).sum()  # tr (S1 S2)^(1/2)
    squared = float(np.sum((m1 - m2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * cross)
    return math.sqrt(max(squared, 0.0))  # rounding leaves tiny negatives for identical statistics


class Measure(NamedTuple):
    name: str  # the MLflow metric
    function: Callable[[Image.Image, Image.Image], float] | None  # (result, reference); None: the engine's
    reference: str  # "content" or "style": what the result is compared with
    meaning: str
    closer: str  # "higher" or "lower": which way is closer to the reference


SSIM_CONTENT = Measure("auto.ssim_content", ssim_to_content, "content",
                       "structural similarity (grayscale SSIM) of the result to the content image", "higher")
COLOR_DISTANCE = Measure("auto.color_distance_style", color_distance_to_style, "style",
                         "2-Wasserstein distance of the result's CIELAB colour statistics to the style image's",
                         "lower")
MEASURES: tuple[Measure, ...] = (SSIM_CONTENT, COLOR_DISTANCE)  # computed from the images alone


# the style yardstick: computed by the engine on the run's backbone (nst.engine.yardstick), logged beside them
GRAM_DISTANCE = Measure("auto.gram_distance_style", None, "style",
                        "distance of the result's Gram matrices to the style image's on conv1_1..conv5_1 of the "
                        "run's backbone (relative, unweighted)", "lower")
EVERY: tuple[Measure, ...] = (*MEASURES, GRAM_DISTANCE)  # every auto.* metric a finished run logs


def measure(result: Image.Image, content: Image.Image, style: Image.Image) -> dict[str, float]:
    """Every image measure of ``result`` (``MEASURES``), by metric name."""
    references = {"content": content, "style": style}
    return {m.name: m.function(result, references[m.reference]) for m in MEASURES}

"""The automatic measures (nst/images/measures.py): SSIM to the content, colour distance to the style."""

import math

import numpy as np
import pytest
from PIL import Image

from nst.images import measures
from nst.images.measures import color_distance_to_style, measure, ssim_to_content

GREEN, BLUE, RED = 85, 170, 250  # PIL hues (0-255)


@pytest.fixture(scope="module")
def photo(assets_dir) -> Image.Image:
    return Image.open(assets_dir / "tubingen.jpg").convert("RGB").resize((128, 96), Image.Resampling.LANCZOS)


def noisy(image: Image.Image, sigma: float, seed: int = 0) -> Image.Image:
    pixels = np.asarray(image, dtype=np.float64)
    pixels = pixels + np.random.default_rng(seed).normal(0, sigma, pixels.shape)
    return Image.fromarray(np.clip(pixels, 0, 255).round().astype(np.uint8))


def painted(hue: int, seed: int, size=(64, 48)) -> Image.Image:
    """A picture in one hue: saturation and brightness vary (a gradient and random blobs), the hue does not."""
    rng = np.random.default_rng(seed)
    w, h = size
    y, x = np.mgrid[0:h, 0:w]
    blobs = np.asarray(Image.fromarray(rng.integers(0, 255, (6, 8), dtype=np.uint8)).resize(size, Image.BILINEAR))
    saturation = 120 + 100 * x / w
    value = 0.5 * blobs + 100 * y / h + 20
    hsv = np.stack([np.full((h, w), hue), saturation, value], axis=-1).clip(0, 255).astype(np.uint8)
    return Image.fromarray(hsv, "HSV").convert("RGB")


def with_hue(image: Image.Image, hue: int) -> Image.Image:
    """``image`` recoloured: every pixel's hue set to ``hue``, saturation and brightness kept."""
    hsv = np.asarray(image.convert("HSV")).copy()
    hsv[..., 0] = hue
    return Image.fromarray(hsv, "HSV").convert("RGB")


def test_ssim_is_one_for_the_image_itself_and_falls_as_noise_grows(photo):
    assert ssim_to_content(photo, photo) == pytest.approx(1.0, abs=1e-9)
    scores = [ssim_to_content(noisy(photo, sigma), photo) for sigma in (5, 20, 60)]
    assert 1.0 > scores[0] > scores[1] > scores[2], scores
    assert scores[2] < 0.5  # heavy noise leaves little of the structure


def test_ssim_compares_at_the_results_size(photo):
    content = photo.resize((320, 240), Image.Resampling.LANCZOS)
    result = photo.resize((96, 72), Image.Resampling.LANCZOS)
    score = ssim_to_content(result, content)
    # the content is brought to the result's size (LANCZOS), not the other way round
    assert score == ssim_to_content(result, content.resize(result.size, Image.Resampling.LANCZOS))
    assert score != ssim_to_content(result.resize(content.size, Image.Resampling.LANCZOS), content)
    assert score > 0.95


def test_ssim_is_nan_for_a_result_smaller_than_the_window(photo):
    assert math.isnan(ssim_to_content(photo.resize((8, 6)), photo))


def test_colour_distance_is_zero_for_identical_images_and_symmetric(photo):
    assert color_distance_to_style(photo, photo) == pytest.approx(0.0, abs=1e-6)
    style = painted(BLUE, seed=1)
    assert color_distance_to_style(photo, style) > 1
    assert color_distance_to_style(photo, style) == pytest.approx(color_distance_to_style(style, photo),
                                                                  rel=1e-9)


def test_colour_distance_is_the_wasserstein_distance_of_the_gaussian_fits():
    """Grays differ only in L*: the fits are 1-D, N(m1, 0) and N(m2, s2^2), and W2 = sqrt((m1-m2)^2 + s2^2)."""
    from skimage.color import rgb2lab

    flat = Image.new("RGB", (40, 30), (128, 128, 128))
    halves = np.zeros((30, 40, 3), dtype=np.uint8)
    halves[:, :20], halves[:, 20:] = 60, 200
    lightness = [rgb2lab(np.full((1, 1, 3), g / 255.0))[0, 0, 0] for g in (128, 60, 200)]
    mean, spread = (lightness[1] + lightness[2]) / 2, abs(lightness[2] - lightness[1]) / 2
    expected = math.hypot(mean - lightness[0], spread)
    assert color_distance_to_style(flat, Image.fromarray(halves)) == pytest.approx(expected, rel=1e-4)


def test_a_result_recoloured_with_the_styles_palette_is_closer_to_it_than_the_content():
    content, style = painted(GREEN, seed=0), painted(BLUE, seed=1)
    result = with_hue(content, BLUE)  # the content's structure, the style's hue
    assert color_distance_to_style(result, style) < 0.5 * color_distance_to_style(content, style)


def test_colour_distance_grows_as_the_result_moves_toward_another_palette():
    style = painted(BLUE, seed=1)
    result = painted(BLUE, seed=0)
    distances = [color_distance_to_style(with_hue(result, hue), style) for hue in (BLUE, 200, 225, RED)]
    assert distances == sorted(distances) and len(set(distances)) == 4, distances


def test_colour_distance_shrinks_large_images_first(photo):
    large = photo.resize((1024, 768), Image.Resampling.LANCZOS)
    style = painted(BLUE, seed=1)
    assert measures.lab_pixels(large).shape == (256 * 192, 3)
    # the statistics barely depend on the size the picture arrives at
    assert color_distance_to_style(large, style) == pytest.approx(color_distance_to_style(photo, style), rel=0.05)


def test_measure_gives_every_metric_by_name_as_a_finite_float(photo):
    found = measure(noisy(photo, 10), photo, painted(BLUE, seed=1))
    assert list(found) == ["auto.ssim_content", "auto.color_distance_style"]
    assert all(isinstance(v, float) and math.isfinite(v) for v in found.values()), found
    assert [m.closer for m in measures.MEASURES] == ["higher", "lower"]

"""Colour controls of Gatys et al., "Controlling Perceptual Factors in Neural Style Transfer" (CVPR 2017).

* ``luminance``: style transfer on luminance only. Content and style become their
  luminance (Y of YIQ, repeated over the three channels the network expects),
  the style's luminance first matched to the content's mean and standard
  deviation; the result's luminance is then recombined with the content's
  chroma (I, Q), so the result keeps the content's colours exactly.
* ``histogram``: the style image's colours are mapped by an affine transform to
  the content's colour mean and covariance (Cholesky, PCA or symmetric matrix
  square root), and the transfer runs on that recoloured style.

Images are (N, 3, H, W) RGB tensors; nothing is clamped here, so the matched
statistics hold exactly (the saved result is clamped as always).
"""

from __future__ import annotations

import torch

COLOR_MODES = ("none", "luminance", "histogram")
HISTOGRAM_MODES = ("cholesky", "pca", "symmetric")

# NTSC YIQ: Y carries the luminance, I and Q the chroma
_RGB_TO_YIQ = torch.tensor([[0.299, 0.587, 0.114],
                            [0.596, -0.274, -0.322],
                            [0.211, -0.523, 0.312]], dtype=torch.float64)
_YIQ_TO_RGB = torch.linalg.inv(_RGB_TO_YIQ)


def _apply(matrix: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    return torch.einsum("ij,njhw->nihw", matrix.to(image), image)


def rgb_to_yiq(image: torch.Tensor) -> torch.Tensor:
    return _apply(_RGB_TO_YIQ, image)


def yiq_to_rgb(image: torch.Tensor) -> torch.Tensor:
    return _apply(_YIQ_TO_RGB, image)


def luminance(image: torch.Tensor) -> torch.Tensor:
    """The Y channel, (N, 1, H, W)."""
    return rgb_to_yiq(image)[:, :1]


def as_gray_rgb(y: torch.Tensor) -> torch.Tensor:
    """A luminance channel repeated over R, G and B (what the network sees in luminance mode)."""
    return y.expand(-1, 3, -1, -1).contiguous()


def match_luminance(style: torch.Tensor, content: torch.Tensor) -> torch.Tensor:
    """The style's luminance with the content's luminance mean and standard deviation, as gray RGB."""
    ys, yc = luminance(style), luminance(content)
    matched = (ys - ys.mean()) / ys.std().clamp_min(1e-8) * yc.std() + yc.mean()
    return as_gray_rgb(matched)


def recombine(result: torch.Tensor, content: torch.Tensor) -> torch.Tensor:
    """RGB from the result's luminance and the content's chroma (content resized to the result first)."""
    if content.shape[-2:] != result.shape[-2:]:
        content = torch.nn.functional.interpolate(content, size=result.shape[-2:], mode="bilinear",
                                                  align_corners=False)
    yiq = torch.cat([luminance(result), rgb_to_yiq(content)[:, 1:]], dim=1)
    return yiq_to_rgb(yiq)


def color_statistics(image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean (3,) and covariance (3, 3) of the pixels' RGB values, in float64."""
    pixels = image.detach().double().permute(1, 0, 2, 3).reshape(3, -1)
    mean = pixels.mean(1)
    centred = pixels - mean[:, None]
    return mean, centred @ centred.T / pixels.shape[1]


def _sqrt_and_inverse(matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    values, vectors = torch.linalg.eigh(matrix)
    values = values.clamp_min(1e-12)
    return (vectors * values.sqrt()) @ vectors.T, (vectors * values.rsqrt()) @ vectors.T


def match_histogram(style: torch.Tensor, content: torch.Tensor, mode: str = "cholesky",
                    eps: float = 1e-5) -> torch.Tensor:
    """The style recoloured so its colour mean and covariance are the content's.

    ``x' = A (x - mu_s) + mu_c`` with ``A Sigma_s A^T = Sigma_c``: ``cholesky``
    (A = L_c L_s^-1), ``pca`` (A = Sigma_c^1/2 Sigma_s^-1/2) or ``symmetric``
    (the symmetric A of the optimal-transport map between the two Gaussians).
    ``eps`` regularises near-singular covariances (a grey image has one).
    """
    if mode not in HISTOGRAM_MODES:
        raise ValueError(f"unknown histogram mode {mode!r}: one of {', '.join(HISTOGRAM_MODES)}")
    mean_s, cov_s = color_statistics(style)
    mean_c, cov_c = color_statistics(content)
    identity = torch.eye(3, dtype=torch.float64)
    cov_s, cov_c = cov_s + eps * identity, cov_c + eps * identity
    if mode == "cholesky":
        transform = torch.linalg.cholesky(cov_c) @ torch.linalg.inv(torch.linalg.cholesky(cov_s))
    elif mode == "pca":
        root_c, _ = _sqrt_and_inverse(cov_c)
        _, inverse_root_s = _sqrt_and_inverse(cov_s)
        transform = root_c @ inverse_root_s
    else:
        root_s, inverse_root_s = _sqrt_and_inverse(cov_s)
        middle, _ = _sqrt_and_inverse(root_s @ cov_c @ root_s)
        transform = inverse_root_s @ middle @ inverse_root_s
    pixels = style.double().permute(1, 0, 2, 3).reshape(3, -1)
    mapped = transform @ (pixels - mean_s[:, None]) + mean_c[:, None]
    return mapped.reshape(3, style.shape[0], *style.shape[-2:]).permute(1, 0, 2, 3).to(style.dtype)


def network_images(content: torch.Tensor, styles: list[torch.Tensor], mode: str,
                   histogram: str = "cholesky") -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The content and style images the network should see under colour mode ``mode``."""
    if mode == "none":
        return content, styles
    if mode == "luminance":
        return as_gray_rgb(luminance(content)), [match_luminance(s, content) for s in styles]
    if mode == "histogram":
        return content, [match_histogram(s, content, histogram) for s in styles]
    raise ValueError(f"unknown colour mode {mode!r}: one of {', '.join(COLOR_MODES)}")

"""A job's inputs, checked and loaded: every cheap check before anything expensive happens.

``load_inputs`` resolves the backbone's name, checks the layers, the files (regular and
readable), the sizes and the memory a forward and backward pass would need, and only then
decodes the images: a typo costs a second, not a model download or a minute of optimising.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from nst.engine.backbones import (
    SPECS,
    activation_bytes,
    deepest_index,
    layer_table,
    validate_layers,
)
from nst.engine.devices import available_bytes, native_bf16, resolve_device, tune
from nst.engine.spec import RunSpec
from nst.engine.weights import resolve_name, warn_of_fallback
from nst.errors import ConfigError, ImageError
from nst.images.files import (
    check_image_file,
    header_size,
    load_mask,
    load_tensor,
    scaled_size,
    style_long_side,
)
from nst.images.samples import resolve_image

log = logging.getLogger(__name__)


@dataclass
class Inputs:
    """Everything a run needs that is cheap to prepare: its spec, checked layers and loaded images."""

    spec: RunSpec
    device: torch.device
    backbone_name: str
    backbone_notes: list[str]
    content_path: Path
    content: torch.Tensor
    content_layers: dict[str, float]
    style_layers: dict[str, float]
    style_paths: list[Path]  # every style image, with its blend weight and optional mask
    styles: list[torch.Tensor]
    style_blend: list[float]
    mask_paths: list[Path | None] | None = None
    masks: list[torch.Tensor | None] | None = None

    @property
    def style_path(self) -> Path:
        return self.style_paths[0]

    @property
    def style(self) -> torch.Tensor:
        return self.styles[0]

    @property
    def arch(self) -> str:
        return SPECS[self.backbone_name].arch

    @property
    def deepest(self) -> int:
        """The ``features`` index of the deepest layer in use."""
        return deepest_index(self.arch, [*self.content_layers, *self.style_layers])

    def input_files(self) -> list[Path]:
        """Every file the result depends on: content, styles, masks (what resume fingerprints)."""
        return [self.content_path, *self.style_paths, *(p for p in self.mask_paths or [] if p is not None)]


def load_inputs(spec: RunSpec) -> Inputs:
    """Check layers, files, sizes and memory, and load the images; raises ``NSTError`` before any heavy work."""
    shared = spec.shared
    device = resolve_device(shared.device)
    tune(device)
    if shared.precision == "bf16" and native_bf16(device) is False:
        log.warning("model.precision=bf16: this %s has no bfloat16 hardware (no avx512_bf16 or AMX on a CPU), so "
                    "bf16 is emulated and slower than fp32; use model.precision=fp32 here", device.type)
    name, notes = resolve_name(shared.model)
    arch = SPECS[name].arch
    validate_layers(arch, shared.content_layers, "loss.content_layers")
    validate_layers(arch, shared.style_layers, "loss.style_layers")
    table = layer_table(arch)
    content_layers, style_layers = spec.layer_weights({n: layer.channels for n, layer in table.items()})
    content_path, style_paths, mask_paths = _input_paths(spec)
    style_size = style_long_side(shared.size, shared.style_scale)
    deepest = deepest_index(arch, [*content_layers, *style_layers])
    headers = [(header_size(path), long_side)
               for path, long_side in [(content_path, shared.size), *((p, style_size) for p in style_paths)]]
    check_memory(device, arch, deepest, [scaled_size(size, side) for size, side in headers if size is not None],
                 "image.size", shared.size, "a smaller size (or image.style_scale)")
    content = load_tensor(content_path, shared.size, "content")
    styles = [load_tensor(p, style_size, "style") for p in style_paths]
    masks = _load_masks(spec, mask_paths, content)
    minimum = 2 ** sum(1 for n, layer in table.items() if n.startswith("pool") and layer.index < deepest)
    _check_sizes(spec, minimum, content_path, content, style_paths, styles)
    warn_of_fallback(shared.model, name, notes)  # after the checks: a usage error is the one thing said
    return Inputs(spec, device, name, notes, content_path, content.to(device), content_layers, style_layers,
                  style_paths, [s.to(device) for s in styles], list(shared.style_blend), mask_paths,
                  None if masks is None else [None if m is None else m.to(device) for m in masks])


def check_memory(device: torch.device, arch: str, deepest: int, shapes: list[tuple[int, int]], key: str,
                 value: object, remedy: str, batch: int = 1) -> None:
    """Refuse, before allocating anything, images of these (width, height) ``shapes`` whose forward and
    backward pass (``batch`` of them at once) would not fit on ``device``; the error names ``key``."""
    available = available_bytes(device)
    if available is None or not shapes:
        return
    need = max(activation_bytes(arch, deepest, height, width, batch=batch) for width, height in shapes)
    if need > available:
        gib = 1024**3
        images = f"{batch} images of {shapes[0][0]}x{shapes[0][1]} px need" if batch > 1 else (
            "at this size a forward and backward pass needs")
        raise ConfigError(key, value, f"{remedy}: {images} an estimated {need / gib:.1f} GiB of activations, "
                                      f"but {device} has {available / gib:.1f} GiB available")


def check_batch_memory(inputs: Inputs, members: int) -> None:
    """A batch needs ``members`` times one run's activations; refuse it before allocating them."""
    height, width = inputs.content.shape[-2:]
    check_memory(inputs.device, inputs.arch, inputs.deepest, [(width, height)], "hydra.launcher.max_batch",
                 members, "fewer members per batch", batch=members)


def _input_paths(spec: RunSpec) -> tuple[Path, list[Path], list[Path | None] | None]:
    """The content, style and mask files, each resolved from a path or a sample name.

    Each is checked to be a readable regular file here, before the memory check peeks at
    its header: opening a FIFO or a device would block or never end.
    """
    shared = spec.shared

    def local(name: str, what: str) -> Path:
        return check_image_file(resolve_image(name, what), what)

    content_path = local(shared.content, "content")
    style_paths = [local(name, "style" if len(shared.styles) == 1 else f"style {i + 1}")
                   for i, name in enumerate(shared.styles)]
    mask_paths = None if shared.style_masks is None else [
        None if name is None else local(name, f"style_masks[{i}]")
        for i, name in enumerate(shared.style_masks)]
    return content_path, style_paths, mask_paths


def _load_masks(spec: RunSpec, mask_paths: list[Path | None] | None,
                content: torch.Tensor) -> list[torch.Tensor | None] | None:
    """Each mask stretched to the content's shape; an all-black one is refused."""
    if mask_paths is None:
        return None
    masks = [None if p is None else load_mask(p, content.shape[-2], content.shape[-1], f"style_masks[{i}]")
             for i, p in enumerate(mask_paths)]
    for i, mask in enumerate(masks):
        if mask is not None and float(mask.max()) <= 0:
            raise ImageError(f"style_masks[{i}] {mask_paths[i]}: the mask is black everywhere, so style "
                             f"{spec.shared.styles[i]} would apply nowhere (white marks where it applies)")
    return masks


def _check_sizes(spec: RunSpec, minimum: int, content_path: Path, content: torch.Tensor,
                 style_paths: list[Path], styles: list[torch.Tensor]) -> None:
    """Every image, at every scale, must keep ``minimum`` px a side down to the deepest layer."""
    for what, path, image in (("content", content_path, content),
                              *(("style", p, s) for p, s in zip(style_paths, styles, strict=True))):
        if min(image.shape[-2:]) < minimum:
            raise ImageError(
                f"{what} image {path} is {image.shape[-1]}x{image.shape[-2]} px after resizing; the "
                f"deepest layer in use needs at least {minimum} px on each side (raise image.size"
                f"{' or image.style_scale' if what == 'style' else ''})")
    shared = spec.shared
    smallest = shared.scales[0]
    if smallest < shared.size:
        coarse_style = style_long_side(smallest, shared.style_scale)
        for what, image, long_side in (("content", content, smallest), *(("style", s, coarse_style) for s in styles)):
            width, height = scaled_size((image.shape[-1], image.shape[-2]), long_side)
            if min(width, height) < minimum:
                raise ConfigError("image.scales", list(shared.scales),
                                  f"scales whose {what} image is at least {minimum} px on each side (at "
                                  f"{smallest} px it is {width}x{height}; the deepest layer in use needs {minimum})")

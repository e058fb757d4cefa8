"""Choosing the torch device from ``device=auto|cpu|cuda|cuda:N|mps``."""

from __future__ import annotations

import os

import torch

from nst.errors import ConfigError

DEVICES = ("auto", "cpu", "cuda", "mps")


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend and backend.is_available())


DEVICE_CHOICES = f"one of {', '.join(DEVICES)} (cuda:N for GPU N, N = 0, 1, ...)"


def parse_device(name: object) -> tuple[str, int | None]:
    """``cuda:1`` -> ("cuda", 1); refuse anything but auto, cpu, cuda, cuda:N and mps.

    Checked at config time, so a typo such as ``cuda:x`` is refused before any work,
    not by torch after the images are loaded.
    """
    base, colon, index = name.partition(":") if isinstance(name, str) else ("", "", "")
    if base not in DEVICES or (colon and (base != "cuda" or not index.isdigit())):
        raise ConfigError("device", name, DEVICE_CHOICES)
    return base, int(index) if colon else None


def _gpu_indices(count: int) -> str:
    """``cuda:0 to cuda:3 (this machine has 4 CUDA GPUs)``: the indices a ``device=cuda:N`` may name."""
    indices = "cuda:0" if count == 1 else f"cuda:0 to cuda:{count - 1}"
    return f"{indices} (this machine has {count} CUDA GPU{'' if count == 1 else 's'})"


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA, then MPS, then CPU; an unavailable explicit choice is an error."""
    base, index = parse_device(name)
    if base == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps" if _mps_available() else "cpu")
    if base == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device", name, "cpu or auto: this torch build or machine has no CUDA GPU")
    if base == "cuda" and index is not None and index >= torch.cuda.device_count():
        # torch would accept cuda:99 here and fail at the first tensor moved there
        raise ConfigError("device", name, f"{_gpu_indices(torch.cuda.device_count())}, cuda, cpu or auto")
    if base == "mps" and not _mps_available():
        raise ConfigError("device", name, "cpu or auto: MPS (Apple GPU) is not available here")
    return torch.device(name)


def tune(device: torch.device) -> None:
    """On CUDA, let cuDNN time its convolution algorithms once per shape and keep the fastest.

    A style-transfer run repeats the same shapes hundreds of times, so the
    one-off search pays for itself within a few evaluations.
    """
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True


def native_bf16(device: torch.device) -> bool | None:
    """Whether ``device`` computes bfloat16 in hardware; None where that cannot be told.

    Without avx512_bf16 or AMX a CPU emulates bf16, and autocast then makes each
    evaluation slower, not faster.
    """
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    if device.type == "cpu":
        try:
            with open("/proc/cpuinfo") as cpuinfo:
                for line in cpuinfo:
                    if line.startswith("flags"):
                        flags = set(line.split(":", 1)[1].split())
                        return bool(flags & {"avx512_bf16", "amx_bf16"})
        except OSError:
            return None
    return None


def available_bytes(device: torch.device) -> int | None:
    """Memory a run may use on ``device``: free GPU memory, or the host's MemAvailable; None if unknown."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    if device.type == "cpu":
        try:
            with open("/proc/meminfo") as meminfo:
                for line in meminfo:
                    if line.startswith("MemAvailable:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            pass
        try:
            return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            return None
    return None

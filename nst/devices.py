"""Choosing the torch device from ``device=auto|cpu|cuda|mps``."""

from __future__ import annotations

import os

import torch

from nst.errors import ConfigError

DEVICES = ("auto", "cpu", "cuda", "mps")


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend and backend.is_available())


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA, then MPS, then CPU; an unavailable explicit choice is an error."""
    base = str(name).split(":")[0]
    if base not in DEVICES:
        raise ConfigError("device", name, f"one of {', '.join(DEVICES)} (cuda:N for a given GPU)")
    if base == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps" if _mps_available() else "cpu")
    if base == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device", name, "cpu or auto: this torch build or machine has no CUDA GPU")
    if base == "mps" and not _mps_available():
        raise ConfigError("device", name, "cpu or auto: MPS (Apple GPU) is not available here")
    return torch.device(name)


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

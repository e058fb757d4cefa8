"""Choosing the torch device from ``device=auto|cpu|cuda|mps``."""

from __future__ import annotations

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

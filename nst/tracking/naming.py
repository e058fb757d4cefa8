"""A run's name in the MLflow UI: what a reader tells runs apart by in the runs table and the charts."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from nst.figures import labels
from nst.tracking.tags import TAG_OVERRIDES

MAX_NAME = 250  # MLflow refuses a longer run name


def run_name(config: Mapping[str, Any], tags: Mapping[str, str], swept: Mapping[str, bool]) -> str:
    """A sweep child's swept values (``β=1e4 · α/β=1e-4``), or a single run's images then its other
    overrides (``tubingen + starry_night · epochs=3``).

    ``config`` is the job's resolved config, ``tags`` its Hydra tags (choices and overrides), ``swept`` what
    its sweep's parent says it varies (empty for a single run).
    """
    if swept:
        return labels.label(list(swept), config, tags)[:MAX_NAME]
    overrides = json.loads(tags.get(TAG_OVERRIDES, "[]"))
    rest = " ".join(o for o in overrides if not o.startswith(("content=", "style=")))
    return labels.SEPARATOR.join(part for part in (_pair(config), rest) if part)[:MAX_NAME]


def sweep_name(kind: str | None, config: Mapping[str, Any], swept: Iterable[str]) -> str:
    """A sweep's parent: what it is (its sweep file's name, else what it varies), then the backbone, size,
    epochs and pair it runs at, leaving out what it varies:
    ``ratio · vgg16_hed 128 px · 10 epochs · tubingen + starry_night`` (the pair last: MLflow's runs list
    cuts long names, and sweeps of one pair differ in the settings)."""
    order = list(dict.fromkeys(key.lstrip("+~") for key in swept))
    keys = set(order)
    setting = [str(labels.lookup(config, "model.name")) if not keys & {"model", "model.name"} else "",
               f"{labels.lookup(config, 'image.size')} px" if "image.size" not in keys else ""]
    parts = [kind or ", ".join(labels.name(key) for key in order) or "sweep", " ".join(part for part in setting if part),
             f"{labels.lookup(config, 'epochs')} epochs" if "epochs" not in keys else "",
             _pair(config) if not keys & {"content", "style", "pair"} else ""]
    return labels.SEPARATOR.join(part for part in parts if part)[:MAX_NAME]


def what_differs(setting: Mapping[str, str], earlier: Mapping[str, str], most: int = 3) -> str:
    """The settings in which a sweep differs from an earlier one whose runs would have the same names
    (``epochs=10 · image.size=128``): appended to its names to tell the two apart; empty if none do."""
    keys = [key for key in sorted(set(setting) | set(earlier)) if setting.get(key) != earlier.get(key)]
    return labels.SEPARATOR.join(f"{key}={setting.get(key, 'unset')}" for key in keys[:most])


def _pair(config: Mapping[str, Any]) -> str:
    def image(value) -> str:
        names = value if isinstance(value, list) else [value]
        return ",".join(Path(str(name)).stem for name in names)

    return f"{image(config.get('content'))} + {image(config.get('style'))}"

"""A run's name in the MLflow UI: what a reader tells runs apart by in the runs table and the charts."""

from __future__ import annotations

import json
from collections.abc import Mapping
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

    def image(value) -> str:
        names = value if isinstance(value, list) else [value]
        return ",".join(Path(str(name)).stem for name in names)

    overrides = json.loads(tags.get(TAG_OVERRIDES, "[]"))
    rest = " ".join(o for o in overrides if not o.startswith(("content=", "style=")))
    return labels.SEPARATOR.join(part for part in (f"{image(config.get('content'))} + {image(config.get('style'))}",
                                                   rest) if part)[:MAX_NAME]

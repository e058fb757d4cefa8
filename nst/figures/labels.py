"""What a sweep varied, in the seed's terms: run names, tile labels and the ``sweep.*`` params.

MLflow's runs table cut the old names (the override strings) to ``loss.style_weig…``,
so β was visible nowhere but inside grid.png. A label names only the swept values,
shortest first: ``β=1e4 · α/β=1e-4``, ``lr=0.2``, ``style_layers=conv1_1..conv3_1``,
``pair=mona_lisa_composition_vii``. α/β is added whenever α or β is swept, since the
seed's Figure 5 is read by that ratio.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence

ALPHA, BETA = "loss.content_weight", "loss.style_weight"
SYMBOLS = {BETA: "β", ALPHA: "α"}
SEPARATOR = " · "
# a swept number whose values span this factor or more is log-spaced: sweep.log10_<key> is logged too
LOG_SPAN = 100.0


def lookup(source: Mapping, key: str):
    """``key``'s value in a flat mapping (MLflow params, Hydra choices) or a nested config; None if absent."""
    key = key.lstrip("+~")
    if key in source:
        return _decoded(source[key])
    node = source
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def _decoded(value):
    """MLflow keeps params as text: a JSON list back to a list, a number back to a number."""
    if isinstance(value, str):
        if value.startswith("["):
            try:
                return json.loads(value)
            except ValueError:
                return value
        try:
            return float(value)
        except ValueError:
            return value
    return value


def finite_number(value) -> float | None:
    """``value`` as a finite float (MLflow keeps swept values as text), else None; a bool is not a number."""
    if isinstance(value, bool):
        return None
    try:
        result = float(value)
    except (TypeError, ValueError):
        return None
    return result if math.isfinite(result) else None


def sorted_unique(values: Iterable) -> list:
    """Each value once: in numeric order when every one is a finite number (``100`` before ``1e4``),
    else in the order first seen."""
    unique = list(dict.fromkeys(values))
    if all(finite_number(value) is not None for value in unique):
        return sorted(unique, key=finite_number)
    return unique


def short(value) -> str:
    """``1e-2``, ``0.2``, ``conv1_1..conv3_1`` (a run of consecutive layers), ``a,b``, ``tubingen``."""
    if isinstance(value, Sequence) and not isinstance(value, str):
        items = [short(item) for item in value]
        if len(items) > 2 and all(item.startswith("conv") for item in items):
            return f"{items[0]}..{items[-1]}"
        return ",".join(items)
    found = finite_number(value)
    if found is not None:
        return compact(found)
    return str(value)


def compact(value: float) -> str:
    """``1e4`` and ``1e-4`` (the seed's way of writing weights), ``100``, ``0.01``, ``2.5e5``."""
    if value == 0:
        return "0"
    exponent = math.floor(math.log10(abs(value)))
    if abs(exponent) < 4:
        return f"{value:.4g}"
    return f"{value / 10 ** exponent:.3g}e{exponent}"


def name(key: str) -> str:
    """``β`` for the style weight, ``α`` for the content weight, else the key's last part."""
    return SYMBOLS.get(key.lstrip("+~"), key.lstrip("+~").split(".")[-1])


def label(keys: Sequence[str], source: Mapping, choices: Mapping | None = None) -> str:
    """The swept ``keys`` with their values in ``source`` (a group's value from ``choices``)."""
    parts = []
    for key in keys:
        value = lookup(source, key)
        if value is None and choices is not None:
            value = lookup(choices, f"hydra.choice.{key.lstrip('+~')}")
        parts.append(f"{name(key)}={short(value)}")
    if any(key.lstrip("+~") in SYMBOLS for key in keys):
        alpha, beta = finite_number(lookup(source, ALPHA)), finite_number(lookup(source, BETA))
        if alpha is not None and beta:
            parts.append(f"α/β={compact(alpha / beta)}")
    return SEPARATOR.join(parts)


def log_spaced(values: Sequence) -> bool:
    """Positive numbers spanning a factor of ``LOG_SPAN`` or more: plotted and compared on log axes."""
    numbers = [finite_number(value) for value in values]
    return (len(numbers) > 1 and all(n is not None and n > 0 for n in numbers)
            and max(numbers) / min(numbers) >= LOG_SPAN)


def sweep_params(swept: Mapping[str, bool], source: Mapping, choices: Mapping | None = None) -> dict[str, str]:
    """``sweep.<key>`` for every swept key (the UI's scatter and parallel-coordinates plots read params),
    and ``sweep.log10_<key>`` for a log-spaced one, since those plots have linear axes only."""
    params = {}
    for key, logarithmic in swept.items():
        bare = key.lstrip("+~")
        value = lookup(source, bare)
        if value is None and choices is not None:
            value = lookup(choices, f"hydra.choice.{bare}")
        params[f"sweep.{bare}"] = short(value)
        found = finite_number(value)
        if logarithmic and found is not None and found > 0:
            params[f"sweep.log10_{bare}"] = f"{math.log10(found):.4g}"
    return params

"""Every module of nst has a place in the import layers that `make lint` enforces."""

from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

REPO = Path(__file__).resolve().parents[1]


def test_every_module_is_in_a_layer():
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]
    (layers,) = [c["layers"] for c in config["contracts"] if c["type"] == "layers"]
    placed = {name.strip() for layer in layers for name in layer.split("|")}
    modules = {f"nst.{path.stem}" for path in (REPO / "nst").glob("*.py") if path.stem != "__init__"}
    assert modules <= placed, f"give these modules a layer in pyproject.toml: {sorted(modules - placed)}"

"""Every module of nst has a place in the import layers that `make lint` enforces."""

from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

REPO = Path(__file__).resolve().parents[1]


def test_every_module_is_in_a_layer():
    """Each module of nst, at any depth, lies in a package (or is a module) that a layer names."""
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]
    (layers,) = [c["layers"] for c in config["contracts"] if c["type"] == "layers"]
    placed = {name.strip() for layer in layers for name in layer.split("|")}
    modules = {".".join(path.relative_to(REPO).with_suffix("").parts) for path in (REPO / "nst").rglob("*.py")}
    modules = {name.removesuffix(".__init__") for name in modules} - {"nst"}
    unplaced = {name for name in modules if not any(name == p or name.startswith(p + ".") for p in placed)}
    assert not unplaced, f"put these modules in a package of a layer in pyproject.toml: {sorted(unplaced)}"


def test_the_top_level_shows_the_packages():
    """``ls nst/`` shows the packages and a handful of foundation modules, nothing else."""
    top = sorted(path.stem for path in (REPO / "nst").glob("*.py") if path.stem != "__init__")
    assert top == ["downloads", "errors", "files", "interrupts", "messages", "phases"]


def test_a_run_does_not_import_pandas_or_scipy_at_start_up():
    """pandas took 0.7 s of a run's 3.2 s of imports; SciPy 1.5 s on the H200 (a sweep report imported at start-up)."""
    import subprocess
    import sys

    loaded = subprocess.run([sys.executable, "-c", "import sys, nst.cli.nst_app, nst.jobs.driver, nst.engine.run, nst.tracking.run_folder; "
                             "print(sorted({m.split('.')[0] for m in sys.modules} & {'pandas', 'scipy', 'mlflow'}))"],
                            capture_output=True, text=True, timeout=300)
    assert loaded.returncode == 0, loaded.stderr[-2000:]
    assert loaded.stdout.strip() == "[]"

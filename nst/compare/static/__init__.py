"""The pages' stylesheets and scripts, kept as files so that they read (and lint) as CSS and JavaScript."""

from functools import cache
from importlib.resources import files


@cache
def asset(name: str) -> str:
    """The text of ``name`` in this folder, read once per process."""
    return files(__package__).joinpath(name).read_text(encoding="utf-8")

"""Which config keys exist, read from ``conf/`` itself, and the checks of command-line overrides.

Hydra refuses a mistyped key (``loss.styleweight=1``) with advice to add it with
``+``, and then runs with the added value silently ignored; its grammar error on
an unquoted space, bracket or non-ASCII letter says nothing of quoting. Here the
keys any composition can have are the union of ``conf/config.yaml`` and every
option file of every config group (Hydra's own ``hydra.*`` aside), so a typo
gets a did-you-mean from that list, and nothing new has to be registered: a key
written in a file under ``conf/`` is known.
"""

from __future__ import annotations

import difflib
import functools
import re
import shlex
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.errors import OverrideParseException
from omegaconf import DictConfig, OmegaConf

from nst.errors import OverrideError, UnknownKeyError

CONFIG_DIR = Path(__file__).resolve().parents[1] / "conf"
_PACKAGE = re.compile(r"^#\s*@package\s+(\S+)")


@dataclass(frozen=True)
class Schema:
    """Every dotted key a composed config can have, and the config group names."""

    keys: frozenset[str]  # sections and values: loss, loss.style_weight, ...
    leaves: frozenset[str]  # keys holding a value (number, list, null), whose insides are not keys
    groups: frozenset[str]  # model, optimizer, experiment, sweep, pair, local, ...

    def knows(self, key: str) -> bool:
        """A key of the schema, or inside a value (``style.0``), which Hydra then checks itself."""
        parts = key.split(".")
        return key in self.keys or key in self.groups or any(
            ".".join(parts[:i]) in self.leaves for i in range(1, len(parts)))

    def suggestion(self, key: str) -> str | None:
        """The closest known key: ``loss.styleweight`` -> ``loss.style_weight``, ``modle`` -> ``model``."""
        close = difflib.get_close_matches(key, sorted(self.keys | self.groups), n=1, cutoff=0.6)
        return close[0] if close else None

    def check(self, key: str) -> None:
        if not self.knows(key):
            raise UnknownKeyError(key, self.suggestion(key))


def _package(path: Path, group: str) -> str:
    """Where an option file's keys land: its ``# @package`` header, else the group (Hydra's rule)."""
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        match = _PACKAGE.match(line)
        if match:
            package = match.group(1).replace("_group_", group)
            return package.removeprefix("_global_").lstrip(".")
    return group


def _dotted(node: object, prefix: str) -> Iterator[tuple[str, bool]]:
    """(key, is_leaf) for every key under ``node``; Hydra's own settings and defaults lists are no keys."""
    if not isinstance(node, dict):
        yield prefix, True
        return
    if prefix:
        yield prefix, False
    for name, child in node.items():
        if not prefix and name in ("hydra", "defaults"):
            continue
        yield from _dotted(child, f"{prefix}.{name}" if prefix else str(name))


def _nest(package: str, content: object) -> object:
    for part in reversed([p for p in package.split(".") if p]):
        content = {part: content}
    return content


@functools.cache
def schema(config_dir: Path = CONFIG_DIR) -> Schema:
    """The schema of ``config_dir`` (read once per process: a few milliseconds of YAML)."""
    primary = OmegaConf.to_container(OmegaConf.load(config_dir / "config.yaml"))
    found = list(_dotted(primary, ""))
    groups = {next(iter(entry)).split("@")[0].removeprefix("optional ").strip()
              for entry in primary.get("defaults", []) if isinstance(entry, dict)} - {"hydra"}
    for option in sorted(config_dir.rglob("*.yaml")):
        group = option.parent.relative_to(config_dir).as_posix()
        if group == "." or group == "hydra" or group.startswith("hydra/"):
            continue
        groups.add(group)
        content = OmegaConf.to_container(OmegaConf.load(option)) or {}
        if isinstance(content, dict):
            content.pop("defaults", None)
        package = _package(option, group.replace("/", "."))
        found.extend(_dotted(_nest(package, content), ""))
    return Schema(frozenset(k for k, _ in found), frozenset(k for k, leaf in found if leaf), frozenset(groups))


def check_config(cfg: DictConfig, config_dir: Path = CONFIG_DIR) -> None:
    """Refuse a composed config holding a key no file under conf/ defines (added with ``+``,
    or by a sweep's params); its first such key is named."""
    known = schema(config_dir)
    container = OmegaConf.to_container(cfg, resolve=False, throw_on_missing=False)
    for key, _leaf in _dotted(container, ""):
        parent = key.rpartition(".")[0]
        if parent and not known.knows(parent):
            continue  # only the outermost unknown key is worth naming
        known.check(key)


# --- command-line overrides ------------------------------------------------------------------


def _hydra_quoted(value: str) -> str:
    """``value`` as a Hydra quoted string (double quotes unless the value holds one)."""
    if '"' in value and "'" not in value:
        return f"'{value}'"
    return '"' + value.replace('"', '\\"') + '"'


def quoting_hint(arg: str, multirun: bool) -> str:
    """The override as it should be typed: ``'content="/tmp/été (1).jpg"'`` (shell quotes around
    Hydra's); the values of a list, or of a multirun's comma sweep, each quoted."""
    key, _, value = arg.partition("=")
    if value.startswith("[") and value.endswith("]"):
        value = "[" + ",".join(_hydra_quoted(v.strip()) for v in value[1:-1].split(",")) + "]"
    elif multirun and "," in value:
        value = ",".join(_hydra_quoted(v) for v in value.split(","))
    else:
        value = _hydra_quoted(value)
    return shlex.quote(f"{key}={value}")


def parse_overrides(args: Sequence[str], multirun: bool = False) -> list[Override]:
    """Parse the command line's overrides with Hydra's own grammar; one that does not parse is
    refused with the quoting that makes it parse."""
    parser = OverridesParser.create()
    parsed: list[Override] = []
    for arg in args:
        try:
            parsed.extend(parser.parse_overrides([arg]))
        except OverrideParseException as exc:
            if "=" not in arg or arg.partition("=")[2][:1] in ("'", '"'):
                first = str(exc).strip().splitlines()[0]
                raise OverrideError(f"cannot parse the override {arg}: {first}") from None
            raise OverrideError(f"cannot parse the override {arg}: quote the value for Hydra, "
                                f"e.g. {quoting_hint(arg, multirun)}") from None
    return parsed


def check_override_keys(overrides: Sequence[Override], config_dir: Path = CONFIG_DIR) -> None:
    """Refuse an override (``key=``, ``+key=``, ``++key=``) of a key no file under conf/ defines.

    Hydra's settings (``hydra.*``, ``hydra/launcher=``), deletions (``~key``) and
    package overrides (``group@package=``) are left to Hydra.
    """
    known = schema(config_dir)
    for override in overrides:
        key = override.key_or_group
        if (override.is_delete() or override.package is not None or key == "hydra"
                or key.startswith(("hydra.", "hydra/")) or "/" in key):
            continue
        known.check(key)


def values_of(overrides: Sequence[Override], prefixes: Sequence[str]) -> Iterator[tuple[str, object]]:
    """(key, value) of each override of a key under ``prefixes``; a comma or range sweep gives one
    pair per value (an interval sweep is left to its sweeper)."""
    for override in overrides:
        key = override.key_or_group
        if override.is_delete() or not key.startswith(tuple(prefixes)):
            continue
        if override.is_discrete_sweep():
            for value in override.sweep_iterator():
                yield key, value
        elif not override.is_sweep_override():
            yield key, override.value()

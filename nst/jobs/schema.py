"""Which config keys exist, read from ``conf/`` itself, and the checks of command-line overrides.

Hydra refuses a mistyped key (``loss.styleweight=1``) with advice to add it with
``+``, and then runs with the added value silently ignored; its grammar error on
an unquoted space, bracket or non-ASCII letter says nothing of quoting. Here the
keys any composition can have are the union of ``conf/config.yaml`` and every
option file of every config group (Hydra's own ``hydra.*`` aside), so a typo
gets a did-you-mean from that list, and nothing new has to be registered: a key
written in a file under ``conf/`` is known. A group's options are its files
(``model=nosuch`` would get Hydra's many-line error, in a multirun after the
sweep's parent run was created), and a comma in a single run's value (Hydra's
"Ambiguous value") is refused with the quoting that passes it as one value.
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
from hydra.core.override_parser.types import Override, ValueType
from hydra.errors import OverrideParseException
from omegaconf import DictConfig, OmegaConf

from nst.errors import OverrideError, UnknownKeyError, UnknownOptionError

CONFIG_DIR = Path(__file__).resolve().parents[2] / "conf"
_PACKAGE = re.compile(r"^#\s*@package\s+(\S+)")
# keys that moved: the old name is refused with the new one as its suggestion
MOVED = {"tracking.log_every": "frame_every", "tracking.video": "video"}


@dataclass(frozen=True)
class Schema:
    """Every dotted key a composed config can have, and the config group names."""

    keys: frozenset[str]  # sections and values: loss, loss.style_weight, ...
    leaves: frozenset[str]  # keys holding a value (number, list, null), whose insides are not keys
    groups: frozenset[str]  # model, optimizer, experiment, sweep, pair, local, ...
    options: dict[str, frozenset[str]]  # group -> its option files' names (groups with a folder in conf/)
    nullable: frozenset[str]  # groups whose default is null (experiment, sweep): null is an option
    multirun: frozenset[str]  # "sweep=ratio": options that set hydra.mode=MULTIRUN
    numbers: frozenset[str]  # leaves that hold a number or a boolean in every file that sets them

    def knows(self, key: str) -> bool:
        """A key of the schema, or inside a value (``style.0``), which Hydra then checks itself."""
        parts = key.split(".")
        return key in self.keys or key in self.groups or any(
            ".".join(parts[:i]) in self.leaves for i in range(1, len(parts)))

    def suggestion(self, key: str) -> str | None:
        """The closest known key: ``loss.styleweight`` -> ``loss.style_weight``, ``modle`` -> ``model``."""
        if key in MOVED:
            return MOVED[key]
        close = difflib.get_close_matches(key, sorted(self.keys | self.groups), n=1, cutoff=0.6)
        return close[0] if close else None

    def check(self, key: str) -> None:
        if not self.knows(key):
            raise UnknownKeyError(key, self.suggestion(key))

    def check_option(self, group: str, option: object) -> None:
        """Refuse an option of ``group`` that has no file in conf/<group>/, with a did-you-mean."""
        option = "null" if option is None else str(option)
        allowed = sorted(self.options[group]) + (["null"] if group in self.nullable else [])
        if option not in allowed:
            close = difflib.get_close_matches(option, allowed, n=1, cutoff=0.6)
            raise UnknownOptionError(group, option, allowed, close[0] if close else None)


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


def _dotted(node: object, prefix: str) -> Iterator[tuple[str, bool, object]]:
    """(key, is_leaf, value) for every key under ``node``; Hydra's own settings and defaults lists are no keys."""
    if not isinstance(node, dict):
        yield prefix, True, node
        return
    if prefix:
        yield prefix, False, None
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
    defaults = {next(iter(entry)).split("@")[0].removeprefix("optional ").strip(): next(iter(entry.values()))
                for entry in primary.get("defaults", []) if isinstance(entry, dict)}
    defaults.pop("hydra", None)
    groups, options, multirun = set(defaults), {}, set()
    for option in sorted(config_dir.rglob("*.yaml")):
        group = option.parent.relative_to(config_dir).as_posix()
        if group == "." or group == "hydra" or group.startswith("hydra/"):
            continue
        groups.add(group)
        options.setdefault(group, set()).add(option.stem)
        content = OmegaConf.to_container(OmegaConf.load(option)) or {}
        if isinstance(content, dict):
            content.pop("defaults", None)
        nested = _nest(_package(option, group.replace("/", ".")), content)
        found.extend(_dotted(nested, ""))
        if isinstance(nested, dict) and (nested.get("hydra") or {}).get("mode") == "MULTIRUN":
            multirun.add(f"{group}={option.stem}")
    numbers = {key for key, leaf, value in found if leaf and isinstance(value, int | float)}
    numbers -= {key for key, leaf, value in found if leaf and value is not None and not isinstance(value, int | float)}
    return Schema(frozenset(k for k, _, _ in found), frozenset(k for k, leaf, _ in found if leaf), frozenset(groups),
                  {group: frozenset(names) for group, names in options.items()},
                  frozenset(group for group, default in defaults.items() if default is None),
                  frozenset(multirun), frozenset(numbers))


def check_config(cfg: DictConfig, config_dir: Path = CONFIG_DIR) -> None:
    """Refuse a composed config holding a key no file under conf/ defines (added with ``+``,
    or by a sweep's params); its first such key is named."""
    known = schema(config_dir)
    container = OmegaConf.to_container(cfg, resolve=False, throw_on_missing=False)
    for key, _leaf, _value in _dotted(container, ""):
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
            hint = _working_hint(arg, multirun)
            if hint is None:
                raise OverrideError(f"cannot parse the override {arg}: {_why_unparsable(arg, exc)}") from None
            raise OverrideError(f"cannot parse the override {arg}: quote the value for Hydra, e.g. {hint}") from None
    return parsed


def _working_hint(arg: str, multirun: bool) -> str | None:
    """``quoting_hint``'s override, if it parses and means what was typed: None when quoting would turn a
    number, a boolean or nothing into text (``1,,2``, ``choice(1,2``, ``[1,2``), which the job would then
    refuse."""
    key, equals, value = arg.partition("=")
    if not equals or value[:1] in ("'", '"') or key.lstrip("+~") in schema().numbers:
        return None
    hint = quoting_hint(arg, multirun)
    parser = OverridesParser.create()
    try:
        (hinted,) = parser.parse_overrides(shlex.split(hint))
    except OverrideParseException:
        return None
    values = sweep_values(hinted) if hinted.is_discrete_sweep() else [hinted._convert_value(hinted.value())]
    for value in values if isinstance(values, list) else [values]:
        for item in value if isinstance(value, list) else [value]:
            if item == "":
                return None
            try:
                (plain,) = parser.parse_overrides([f"{hinted.key_or_group}={item}"])
            except OverrideParseException:
                continue  # needs the quotes: they are the fix
            if not isinstance(plain.value(), str):
                return None
    return hint


def _why_unparsable(arg: str, exc: Exception) -> str:
    """Why Hydra's grammar refuses ``arg``, in words where they can be found (brackets, empty values)."""
    value = arg.partition("=")[2]
    for opening, closing in ("()", "[]", "{}"):
        if value.count(opening) != value.count(closing):
            return f"its {opening} and {closing} do not pair up"
    if re.search(r"(^|[,(\[])\s*(,|$)", value) and not value.startswith(("'", '"')):
        return "it has an empty value between commas"
    return str(exc).strip().splitlines()[0]


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


def check_override_values(overrides: Sequence[Override], multirun: bool,
                          config_dir: Path = CONFIG_DIR) -> None:
    """Refuse what Hydra would refuse only after starting (a multirun's parent run already created),
    in many lines: an option with no file in conf/<group>/ (each value of a sweep), and a comma in a
    single run's value, which Hydra reads as a sweep. A run is a multirun with ``-m``,
    ``hydra.mode=MULTIRUN`` or an option that sets it (``sweep=ratio``); ``hydra`` groups are Hydra's.
    """
    known = schema(config_dir)
    sets_multirun = known.multirun | {"hydra.mode=MULTIRUN"}
    multirun = multirun or any(f"{o.key_or_group}={o.value()}" in sets_multirun
                               for o in overrides if not o.is_sweep_override())
    for override in overrides:
        key, line = override.key_or_group, override.input_line
        if override.is_delete() or key == "hydra" or key.startswith(("hydra.", "hydra/")):
            continue
        if not multirun and override.value_type == ValueType.SIMPLE_CHOICE_SWEEP:
            if key in known.options:
                raise OverrideError(f"{line} has a comma, which Hydra reads as a sweep: "
                                    "to run each option, use nst -m")
            raise OverrideError(f"{line} has a comma, which Hydra reads as a sweep (nst -m); "
                                f"to pass one value quote it: {quoting_hint(line, False)}")
        if key in known.options and override.value_type != ValueType.GLOB_CHOICE_SWEEP:
            sweep = override.is_discrete_sweep()
            for option in sweep_values(override) if sweep else [override.value()]:
                known.check_option(key, option)


def sweep_values(override: Override) -> list:
    """The values a discrete sweep (``1,2``, ``choice(...)``, ``range(...)``) expands to, as plain values: a
    quoted one is its text, not Hydra's ``QuotedString``."""
    return [Override._convert_value(value) for value in override.sweep_iterator()]


def values_of(overrides: Sequence[Override], prefixes: Sequence[str]) -> Iterator[tuple[str, object]]:
    """(key, value) of each override of a key under ``prefixes``; a comma or range sweep gives one
    pair per value (an interval sweep is left to its sweeper)."""
    for override in overrides:
        key = override.key_or_group
        if override.is_delete() or not key.startswith(tuple(prefixes)):
            continue
        if override.is_discrete_sweep():
            for value in sweep_values(override):
                yield key, value
        elif not override.is_sweep_override():
            yield key, override.value()

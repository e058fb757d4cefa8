"""User-facing errors.

Every error a user can cause (a bad path, a bad value, weights that cannot be
obtained) is an ``NSTError``: the CLI prints its message and exits with status 2,
with no traceback. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class NSTError(Exception):
    """Base class of errors caused by input or environment, not by nst's code."""

    exit_code = 2


class ConfigError(NSTError):
    """A config value is not allowed; the message names the key, the value and what is allowed."""

    def __init__(self, key: str, value: object, allowed: str):
        self.key, self.value, self.allowed = key, value, allowed
        super().__init__(f"{key}={value!r} is not allowed: {allowed}")


class TrackingError(NSTError):
    """The tracking store cannot be reached, created or written; the message names it and what to do."""


class UnrecordedRunError(TrackingError):
    """A run ended and its files are on disk, but the store could not record it (exit 1: work was done)."""

    exit_code = 1


class OutputError(NSTError):
    """A run's own files cannot be written (disk full, read-only folder); exit 1: work had started."""

    exit_code = 1


class ImageError(NSTError):
    """An image file cannot be read or used."""


class AssetError(NSTError):
    """A sample asset name cannot be resolved to a verified local file."""


class WeightsError(NSTError):
    """Backbone weights cannot be obtained, or the cached copy is corrupt."""


class DownloadError(NSTError):
    """A download failed or its bytes do not match the expected sha256."""


class NonFiniteLossError(NSTError):
    """The loss became NaN or infinite; the last finite image is kept on the exception."""

    def __init__(self, message: str, last_finite_image=None, evaluation: int | None = None,
                 history: list | None = None):
        super().__init__(message)
        self.last_finite_image = last_finite_image
        self.evaluation = evaluation
        self.history = history if history is not None else []


class OverrideError(NSTError):
    """A command-line override that Hydra's grammar cannot parse; the message shows the quoting that works."""


class UnknownKeyError(NSTError):
    """A config key that no file under ``conf/`` defines: a typo that Hydra, given ``+``, would
    silently ignore."""

    def __init__(self, key: str, suggestion: str | None = None):
        self.key, self.suggestion = key, suggestion
        hint = f" (did you mean {suggestion}?)" if suggestion else ""
        super().__init__(f"unknown config key {key!r}{hint}; nst --help lists the groups, conf/ holds every key")


class UnknownOptionError(NSTError):
    """A config group option with no file in ``conf/<group>/``: Hydra's own error is many lines, and
    in a multirun comes after the sweep's parent run was created (and left FAILED)."""

    def __init__(self, group: str, option: str, allowed: list[str], suggestion: str | None = None):
        self.group, self.option, self.allowed, self.suggestion = group, option, allowed, suggestion
        hint = f" (did you mean {suggestion}?)" if suggestion else ""
        super().__init__(f"{group}={option} is not an option of {group}{hint}: "
                         f"one of {', '.join(allowed)} (conf/{group}/)")

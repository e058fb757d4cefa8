"""Messages nst prints itself, each shown once on the terminal and kept in the job's log file.

Hydra's job logging sends every record both to the console and to ``<job>.log``:
a message nst prints (``nst: error: ...`` on stderr) and also logs would be shown
twice. ``say`` prints it and hands the log record to the file handlers only.
"""

from __future__ import annotations

import logging
import sys
from typing import TextIO


def file_handlers(logger: logging.Logger) -> list[logging.Handler]:
    """The file handlers a record of ``logger`` reaches (up its ancestors, as propagation goes)."""
    found: list[logging.Handler] = []
    current: logging.Logger | None = logger
    while current is not None:
        found += [h for h in current.handlers if isinstance(h, logging.FileHandler)]
        current = current.parent if current.propagate else None
    return found


def to_log_file(logger: logging.Logger, level: int, message: str) -> None:
    """``message`` in the log files only, not on the console handlers."""
    if not logger.isEnabledFor(level):
        return
    record = logger.makeRecord(logger.name, level, "(nst)", 0, message, (), None)
    for handler in file_handlers(logger):
        if record.levelno >= handler.level:
            handler.handle(record)


def say(message: str, logger: logging.Logger, level: int = logging.INFO, stream: TextIO | None = None) -> None:
    """Print ``message`` once (stdout, or ``stream``) and keep it in the job's log file."""
    print(message, file=stream or sys.stdout)
    to_log_file(logger, level, message)

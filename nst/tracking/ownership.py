"""Who owns a RUNNING run, whether that owner still lives, and the heartbeat that says so.

A run ends FINISHED, FAILED or KILLED from its own process; a process killed with
``kill -9`` or by the OOM killer cannot, and its run (and its sweep's parent)
stayed RUNNING forever. So each run records its owner (host, pid and the
process's start time, which tells a live owner from a new process that reused
the pid) and a heartbeat tag that a background thread refreshes. Any later
command that opens the store (``nst.tracking.store.open_store``) ends the runs whose owner
is gone. On the owner's host that is certain (the pid is gone or belongs to
another process); from another host (a cluster), a run whose heartbeat is older
than ``STALE_AFTER_S`` counts as dead.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone

from nst.tracking.tags import TAG_HEARTBEAT, TAG_HOST, TAG_OWNER, TAG_PID

log = logging.getLogger(__name__)

DIED = "process died"  # how the reason recorded for a run whose owner is gone starts
HEARTBEAT_S = 30.0
# ten missed heartbeats: long enough for a store locked by a slow writer, short enough to notice a dead node
STALE_AFTER_S = 10 * HEARTBEAT_S


def _start_ticks(pid: int) -> str:
    """The process's start time in clock ticks since boot (/proc/<pid>/stat field 22); '' if unknown."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def owner() -> str:
    """This process as ``host:pid:start``."""
    return f"{os.uname().nodename}:{os.getpid()}:{_start_ticks(os.getpid())}"


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def owner_gone(tags: dict[str, str], start_ms: int, now: float | None = None) -> str | None:
    """Why the owner of a RUNNING run is gone (the reason to record), or None when it may be alive.

    Runs recorded before owners were (tags ``nst.host`` and ``nst.pid`` only) are judged by their pid.
    """
    host, pid, start = _parse_owner(tags)
    last = tags.get(TAG_HEARTBEAT) or datetime.fromtimestamp(start_ms / 1000, timezone.utc).isoformat(
        timespec="seconds")
    reason = f"{DIED} (no heartbeat since {last}; owner {host or '?'} pid {pid or '?'})"
    if host == os.uname().nodename and pid:
        alive = _alive(pid) and (not start or _start_ticks(pid) in ("", start))
        return None if alive else reason
    try:
        beat = datetime.fromisoformat(last).timestamp()
    except ValueError:
        return None
    return reason if (now if now is not None else time.time()) - beat > STALE_AFTER_S else None


def _parse_owner(tags: dict[str, str]) -> tuple[str, int | None, str]:
    host, _, rest = tags.get(TAG_OWNER, "").partition(":")
    pid_text, _, start = rest.partition(":")
    host = host or tags.get(TAG_HOST, "")
    pid_text = pid_text or tags.get(TAG_PID, "")
    return host, int(pid_text) if pid_text.isdigit() else None, start


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


class Heartbeat:
    """A daemon thread that calls each registered run's ``beat`` every ``HEARTBEAT_S``."""

    def __init__(self, interval: float = HEARTBEAT_S):
        self.interval = interval
        self.beats: dict[str, Callable[[], None]] = {}
        self.lock = threading.Lock()
        self.thread: threading.Thread | None = None

    def add(self, run_id: str, beat: Callable[[], None]) -> None:
        with self.lock:
            self.beats[run_id] = beat
            if self.thread is None:
                self.thread = threading.Thread(target=self._loop, name="nst-heartbeat", daemon=True)
                self.thread.start()

    def remove(self, run_id: str) -> None:
        with self.lock:
            self.beats.pop(run_id, None)

    def _loop(self) -> None:
        while True:
            time.sleep(self.interval)
            with self.lock:
                beats = list(self.beats.values())
            for beat in beats:
                try:
                    beat()
                except Exception:  # noqa: BLE001 - a missed beat is harmless; the next one may get through
                    log.debug("heartbeat not recorded", exc_info=True)


HEARTBEAT = Heartbeat()

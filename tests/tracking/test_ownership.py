"""A run's owner and heartbeat (nst/tracking/ownership.py): whether the process that owns a RUNNING run is gone."""

import subprocess
import sys
import time

from nst.tracking import ownership, tags


def test_owner_liveness_tells_dead_pids_reused_pids_and_stale_heartbeats():
    alive = {tags.TAG_OWNER: ownership.owner(), tags.TAG_HEARTBEAT: ownership.now_iso()}
    assert ownership.owner_gone(alive, 0) is None
    host, pid, start = ownership.owner().split(":")
    reused = {tags.TAG_OWNER: f"{host}:{pid}:{int(start) + 1}"}  # this pid, another process's start time
    assert ownership.owner_gone(reused, 0).startswith("process died")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    gone = {tags.TAG_OWNER: f"{host}:{dead.pid}:", tags.TAG_HEARTBEAT: "2026-01-01T00:00:00+00:00"}
    assert ownership.owner_gone(gone, 0) == (f"process died (no heartbeat since 2026-01-01T00:00:00+00:00; "
                                            f"owner {host} pid {dead.pid})")
    elsewhere = {tags.TAG_OWNER: "another-node:12:34", tags.TAG_HEARTBEAT: "2026-01-01T00:00:00+00:00"}
    beat = time.mktime((2026, 1, 1, 0, 0, 0, 0, 0, 0)) - time.timezone
    assert ownership.owner_gone(elsewhere, 0, now=beat + 60) is None
    assert ownership.owner_gone(elsewhere, 0, now=beat + ownership.STALE_AFTER_S + 1).startswith("process died")

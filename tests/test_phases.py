"""A job's phases are timed back to back, from the process start, and kept in its run.json."""

import json
import time
from pathlib import Path

from nst import phases
from tests.helpers.overrides import TRACKED_RUN


def test_laps_add_up_per_phase_in_the_order_a_run_goes_through_them():
    phases.take()
    phases.lap(phases.OPTIMISATION)
    time.sleep(0.02)
    phases.lap(phases.CONFIG)
    time.sleep(0.01)
    phases.lap(phases.CONFIG)
    taken = phases.take()
    assert list(taken) == [phases.CONFIG, phases.OPTIMISATION]
    assert taken[phases.CONFIG] >= 0.03
    assert phases.take() == {}, "take ends the job's phases"
    assert phases.summary({"config": 0.5, "record": 1.25}) == "config 0.50 s, record 1.25 s"


def test_the_clock_starts_when_the_process_started():
    assert 0 < phases.process_age() < time.monotonic()


def test_a_runs_phases_are_in_its_run_json_and_sum_to_the_process_wall_time(nst_process, tmp_path):
    started = time.monotonic()
    done = nst_process(tmp_path / "outputs", *TRACKED_RUN, f"hydra.run.dir={tmp_path / 'run'}")
    wall = time.monotonic() - started
    assert done.returncode == 0, done.stderr[-2000:]
    record = json.loads(Path(tmp_path / "run" / "run.json").read_text())
    timed = record["phases"]
    assert list(timed) == list(phases.ORDER), "every phase of a tracked run, in order"
    assert timed[phases.OPTIMISATION] >= record["elapsed_s"] * 0.9
    # what is left after the last phase: Hydra's end of the job and the process's exit
    assert wall - 1.5 <= sum(timed.values()) <= wall, (timed, wall)

"""The bench's rows around the optimisation: the phases of one run (nst/bench/run_phases.py) and the ratio sweep
into a new store (nst/bench/races.py's store_sweep_race), their bookkeeping on a stand-in nst, then end to end."""

import json

import pytest

from nst.bench import cli, races, reference, run_phases
from nst.bench.cli import main
from nst.phases import ORDER


def _fake_nst(calls, seconds=0.5, jobs=0):
    """A stand-in for races.run_nst that records its overrides and writes what nst would: one run's
    run.json under runs/, or ``jobs`` sweep jobs' under multiruns/<stamp>/."""

    def run_nst(overrides, out, timeout=7200):
        calls.append(list(overrides))
        folders = ([out / "multiruns" / "stamp" / str(job) for job in range(jobs)] if jobs
                   else [out / "runs" / f"run-{len(calls)}"])
        for folder in folders:
            folder.mkdir(parents=True)
            phases = {name: 0.01 * len(calls) for name in ORDER}
            (folder / "run.json").write_text(json.dumps({"elapsed_s": 0.05, "phases": phases}))
        return seconds
    return run_nst


def test_phases_race_warms_the_store_up_then_alternates_tracked_and_untracked(monkeypatch):
    calls = []
    monkeypatch.setattr(run_phases, "run_nst", _fake_nst(calls))
    rows = list(run_phases.phases_race("random", 64, 2, "cpu"))
    # an untimed tracked run first, then tracked and untracked in turn, each the same run but for tracking
    assert len(calls) == 5 and all(call[:len(calls[0])] == calls[0] for call in calls)
    assert "tracking=none" not in calls[0] and "image.size=64" in calls[0] and "model=random" in calls[0]
    assert [call[len(calls[0]):] for call in calls[1:]] == [[], ["tracking=none"]] * 2
    assert [(row["run"], row["mode"]) for row in rows] == [(1, "tracked"), (1, "untracked"),
                                                           (2, "tracked"), (2, "untracked")]
    # each row reads its own run's run.json (the n-th call's phases are 0.01 n each)
    assert [row["phases"]["imports"] for row in rows] == pytest.approx([0.02, 0.03, 0.04, 0.05])
    first = rows[0]
    assert first["outside"] == pytest.approx(0.5 - 0.05)
    assert first["exit"] == pytest.approx(0.5 - 0.02 * len(ORDER))
    tracked = run_phases.medians(rows, "tracked")
    assert tracked["phases"]["record"] == pytest.approx(0.03) and tracked["wall"] == 0.5
    assert tracked["outside"] == pytest.approx(0.45)


def test_medians_take_each_runs_own_difference_and_leave_unrecorded_phases_empty():
    rows = [{"mode": "tracked", "phases": {"imports": 1.0}, "wall": wall, "elapsed": elapsed,
             "outside": wall - elapsed, "exit": wall - 1.0}
            for wall, elapsed in [(10.0, 1.0), (20.0, 15.0), (30.0, 20.0)]]
    row = run_phases.medians(rows + [{**rows[0], "mode": "untracked"}], "tracked")
    assert row["wall"] == 20.0 and row["elapsed"] == 15.0
    assert row["outside"] == 9.0  # of 9, 5, 10; not 20 - 15
    assert row["phases"]["imports"] == 1.0 and row["phases"]["store"] is None


def test_store_sweep_race_runs_each_sweep_into_a_new_store_and_sums_its_jobs(monkeypatch):
    calls, outs = [], []
    fake = _fake_nst(calls, seconds=1.2, jobs=6)
    monkeypatch.setattr(races, "run_nst", lambda overrides, out: outs.append(out) or fake(overrides, out))
    rows = list(races.store_sweep_race("random", 64, 2, "cpu"))
    assert len(set(outs)) == 2 and all("sweep=ratio" in call and "tracking=none" not in call for call in calls)
    assert rows == [{"seconds": 1.2, "optimising": pytest.approx(0.3), "jobs": 6}] * 2
    monkeypatch.setattr(races, "run_nst", _fake_nst([], jobs=5))  # a job lost: no row to mislead
    with pytest.raises(RuntimeError, match="5 run.json"):
        next(races.store_sweep_race("random", 64, 1, "cpu"))


def _table(lines: list[str], heading: str) -> list[list[str]]:
    """The cells of each row of the table under ``heading`` (its header and rule left out)."""
    start = next(index for index, line in enumerate(lines) if line.startswith(heading))
    rows = []
    for line in lines[start + 2:]:
        if rows and not line.startswith("|"):
            break
        if line.startswith("|") and not line.startswith("|---"):
            rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows[1:]


@pytest.mark.timeout(1200)
@pytest.mark.slow  # a few minutes: 3 runs and a 6-job sweep of the nst command
@pytest.mark.usefixtures("calibrated")  # the random backbone, seed 0, for every nst process
def test_runs_around_the_optimisation(capsys, monkeypatch):
    monkeypatch.setattr(cli, "matmul_gflops", lambda device="cpu": reference.matmul_gflops(256, 1, device))
    assert main(["--sizes", "--backbones", "random", "--quality-size", "0", "--sweep-size", "0",
                 "--phases-size", "64", "--phases-runs", "1", "--store-sweep-size", "64",
                 "--store-sweep-runs", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    # the phases: a row per run, then each mode's medians (with one run, the run's own numbers)
    phases = _table(lines, "## Phases of one run")
    assert [row[:2] for row in phases] == [["1", "tracked"], ["1", "untracked"],
                                           ["median", "tracked"], ["median", "untracked"]]
    for row in phases:
        seconds = [float(cell) for cell in row[2:]]
        assert len(seconds) == len(ORDER) + 4 and min(seconds) >= 0
        *stages, wall, elapsed, outside, start_exit = seconds
        assert wall >= elapsed > 0 and outside == pytest.approx(wall - elapsed, abs=0.011)
        assert start_exit == pytest.approx(wall - sum(stages), abs=0.011 * len(ORDER))
        assert stages[ORDER.index("optimisation")] >= elapsed - 0.011  # the loop is inside its phase
    assert phases[2][2:] == phases[0][2:] and phases[3][2:] == phases[1][2:]
    assert float(phases[1][2 + ORDER.index("store")]) < 0.05  # untracked: no store to open
    # the sweep into a new store: wall / optimising is the ratio of the two
    sweep = _table(lines, "## Ratio sweep into a new store")
    assert [row[0] for row in sweep] == ["1", "median"] and sweep[1][1:] == sweep[0][1:]
    wall, optimising, ratio = (float(cell) for cell in sweep[0][1:])
    assert wall >= optimising > 0 and ratio == pytest.approx(wall / optimising, rel=0.01, abs=0.01)

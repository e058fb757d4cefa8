"""The benchmark's measurements (nst/bench/races.py): time to quality through the engine's own loop, and
the subprocesses of the sweep race."""

import sys

import pytest

from nst.bench import races
from nst.bench.races import QUALITY_VARIANTS, bench_inputs, time_to_quality
from nst.engine import schedule


@pytest.mark.usefixtures("calibrated")  # the random backbone, seed 0
def test_coarse_to_fine_row_is_a_users_auto_scales_run_through_the_engines_loop():
    variant = QUALITY_VARIANTS["coarse_to_fine"]
    inputs = bench_inputs("random", 181, "cpu", variant, 10)
    # image.scales=auto with conf's L-BFGS epoch (20 iterations): ceil(10 / 20) = 1 epoch at 181 px
    assert inputs.spec.schedule == schedule.coarse_to_fine(181, 1) == [(128, 1), (181, 1)]
    assert inputs.spec.member.optimizer.max_iter == 20
    (reference, row) = time_to_quality("random", 181, 10, "cpu", variants=["coarse_to_fine"])
    trace = row["trace"]
    # every record numbered and timed across the scales, each with its scale, coarse first
    assert [record["evaluation"] for record in trace] == list(range(1, len(trace) + 1))
    assert all(a["elapsed_s"] <= b["elapsed_s"] for a, b in zip(trace, trace[1:], strict=False))
    scales = [record["scale"] for record in trace]
    coarse = scales.count(128)
    assert coarse > 0 and scales == [128] * coarse + [181] * (len(trace) - coarse)
    if row["evals"] is not None:  # the row's evaluations count the coarse scale's
        assert row["evals"] == trace[-1]["evaluation"] > coarse
        assert row["loss"] <= reference["target"]


def test_a_failed_subprocess_raises_with_its_stderr():
    with pytest.raises(RuntimeError, match="boom"):
        races._run([sys.executable, "-c", "import sys; sys.exit('boom')"], 60)
    assert races._run([sys.executable, "-c", "print('ok')"], 60) == "ok\n"

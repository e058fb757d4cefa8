"""`make bench` (nst/bench/cli.py, python -m nst.bench): every table, and the rows and traces asked for."""

import subprocess
import sys

import pandas as pd
import pytest
from PIL import Image

from nst.bench import cli, reference
from nst.bench.cli import main
from nst.bench.races import QUALITY_VARIANTS


@pytest.mark.timeout(600)
@pytest.mark.slow  # 20-60 s: make test stays under 10 minutes on 2 cores
def test_bench_prints_every_table(tmp_path):
    done = subprocess.run([sys.executable, "-m", "nst.bench", "--sizes", "64", "--evals", "1",
                           "--backbones", "random", "--quality-size", "64", "--quality-evals", "30",
                           "--quality-images", str(tmp_path),
                           "--run-size", "64", "--run-evals", "6", "--sweep-size", "64", "--sweep-evals", "4", "--bf16", "always",
                           "--phases-size", "0", "--store-sweep-size", "0"],  # test_runs_around_the_optimisation
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    rows = [line for line in lines if line.startswith("| random")]
    assert len(rows) == 1 and "64x48" in rows[0]
    assert "GFLOP/s" in done.stdout
    # time to quality: the reference reaches its own target; nst's rows say when they did
    quality_at = lines.index(next(line for line in lines if line.startswith("## Time to quality")))
    run_at = lines.index(next(line for line in lines if line.startswith("## One L-BFGS run")))
    quality = [line for line in lines[quality_at:run_at] if line.startswith(("| reference", "| nst"))]
    assert len(quality) == 5 and "| 1.00x |" in quality[0]
    assert [line.split("|")[1].strip() for line in quality[1:]] == [label for label, *_ in QUALITY_VARIANTS.values()]
    # content, style, the reference's image and one per row that reached the target, each 64x48
    reached = sum("not reached" not in line for line in quality[1:])
    grid = Image.open(tmp_path / "quality_side_by_side.png")
    assert grid.width * grid.height >= (3 + reached) * 64 * 48
    assert f"images: {tmp_path / 'quality_side_by_side.png'}" in done.stdout
    # one run: the budget is spent (torch's strong-Wolfe search may overrun it by one evaluation);
    # nst's runs end with one more, at the image they keep (nst.optimization._Member)
    runs = {cells[1].strip(): int(cells[2]) for cells in (line.split("|") for line in lines[run_at:])
            if len(cells) > 2 and cells[1].strip().startswith(("reference (fp32, strong", "nst ("))}
    assert len(runs) == 4
    for name, count in runs.items():
        final = 1 if name.startswith("nst") else 0
        assert count == 6 + final if "fixed step" in name else count in (6 + final, 7 + final), (name, count)
    sweep = [line for line in lines if line.startswith(("| reference: 6 processes", "| nst -m", "| nst, one run"))]
    assert len(sweep) == 5 and all(float(line.split("|")[2]) > 0 for line in sweep)


@pytest.mark.usefixtures("calibrated")  # the random backbone, seed 0
def test_quality_variants_pick_nsts_rows_and_their_traces_are_saved(capsys, tmp_path, monkeypatch):
    # the machine line's matmul rate on 256^2 (4096^2 took 9 s on one core; test_bench_prints_every_table has it)
    monkeypatch.setattr(cli, "matmul_gflops", lambda device="cpu": reference.matmul_gflops(256, 1, device))
    assert main(["--sizes", "--backbones", "random", "--quality-size", "64", "--quality-evals", "10",
                 "--sweep-size", "0", "--phases-size", "0", "--store-sweep-size", "0",
                 "--quality-variants", "recolored", "fp32",
                 "--quality-images", str(tmp_path)]) == 0
    table = [line.split("|") for line in capsys.readouterr().out.splitlines()
             if line.startswith(("| reference", "| nst"))]
    rows = [cells[1].strip() for cells in table]
    # the reference, then the chosen rows in the order asked
    assert rows == ["reference (fp32)", QUALITY_VARIANTS["recolored"][0], QUALITY_VARIANTS["fp32"][0]]
    # the trace: every row's evaluations in order, up to the one the table reports (all 10 of the
    # reference's); nst's rows per layer, their last loss the one the table says was reached
    trace = pd.read_csv(tmp_path / "quality_trace.csv")
    assert list(dict.fromkeys(trace["impl"])) == rows
    for cells in table:
        own = trace[trace["impl"] == cells[1].strip()]
        assert list(own["evaluation"]) == list(range(1, len(own) + 1))
        assert own["elapsed_s"].is_monotonic_increasing
        if cells[2].strip() != "not reached":
            reached = own[own["evaluation"] == int(cells[2])]
            assert float(reached["total"].iloc[0]) == pytest.approx(float(cells[5]), rel=1e-5)
            if cells[1].strip() != rows[0]:  # nst's rows stop where they reach it
                assert int(own["evaluation"].iloc[-1]) == int(cells[2])
    assert len(trace[trace["impl"] == rows[0]]) == 10
    nst_rows = trace[trace["impl"] != rows[0]]
    assert nst_rows["style/conv5_1"].notna().all() and nst_rows["content/conv4_2"].notna().all()

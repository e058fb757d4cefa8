"""The benchmark measures what it claims: its reference computes nst's loss, its FLOP count is right."""

import subprocess
import sys

import pandas as pd
import pytest
import torch
from PIL import Image

from nst.bench import races
from nst.bench.cli import main
from nst.bench.races import QUALITY_VARIANTS, bench_inputs, time_to_quality
from nst.bench.reference import CONTENT_LAYERS, STYLE_LAYERS, ReferenceLoss, evaluation_flops
from nst.engine import schedule
from nst.engine.backbones import SPECS, FeatureExtractor, layer_table, random_state
from nst.engine.losses import StyleTransferLoss, paper_style_layer_weights

from .conftest import smooth_image


@pytest.mark.parametrize("calibrated", [False, True])
def test_reference_loss_equals_nst_loss_on_the_same_weights(calibrated):
    state = random_state("vgg19", 3)
    extractor = FeatureExtractor(SPECS["random"], state, CONTENT_LAYERS + STYLE_LAYERS)
    if calibrated:  # per-filter divisors, as nst.calibration sets them
        generator = torch.Generator().manual_seed(0)
        extractor.set_scales({name: 0.1 + 10 * torch.rand(layer_table("vgg19")[name].channels, generator=generator)
                              for name in CONTENT_LAYERS + STYLE_LAYERS})
    content, style, image = smooth_image(32, 32, 1), smooth_image(32, 32, 2), smooth_image(32, 32, 3)
    table = layer_table("vgg19")
    ours = StyleTransferLoss(extractor, content, style, content_layers={"conv4_2": 1.0},
                             style_layers=dict(zip(STYLE_LAYERS, paper_style_layer_weights(
                                 [table[n].channels for n in STYLE_LAYERS]), strict=True)),
                             style_weight=100.0)
    reference = ReferenceLoss(state, "vgg19", extractor.preprocess, content, style, style_weight=100.0,
                              scales=extractor.scales)
    torch.testing.assert_close(reference(image), ours(image).total.sum(), rtol=1e-5, atol=0)
    # the reference runs the whole network; nst stops at conv5_1
    assert len(reference.features) == 37 and len(extractor.features) == table["conv5_1"].index + 1


def test_evaluation_flops_by_hand():
    # conv1_1 on 10x10: 2 * 3 * 64 * 9 * 100 forward, doubled for the backward to the input
    assert evaluation_flops("vgg19", layer_table("vgg19")["conv1_1"].index, 10, 10) == 2 * 2 * 3 * 64 * 9 * 100
    # conv1_1 + conv1_2 + pool1 + conv2_1 (on 5x5)
    expected = 2 * (2 * 3 * 64 * 9 * 100 + 2 * 64 * 64 * 9 * 100 + 2 * 64 * 128 * 9 * 25)
    assert evaluation_flops("vgg19", layer_table("vgg19")["conv2_1"].index, 10, 10) == expected


@pytest.mark.timeout(600)
@pytest.mark.slow  # 20-60 s: make test stays under 10 minutes on 2 cores
def test_bench_prints_every_table(tmp_path):
    done = subprocess.run([sys.executable, "-m", "nst.bench", "--sizes", "64", "--evals", "1",
                           "--backbones", "random", "--quality-size", "64", "--quality-evals", "30",
                           "--quality-images", str(tmp_path),
                           "--run-size", "64", "--run-evals", "6", "--sweep-size", "64", "--sweep-evals", "4", "--bf16", "always"],
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


def test_quality_variants_pick_nsts_rows_and_their_traces_are_saved(capsys, tmp_path):
    assert main(["--sizes", "--backbones", "random", "--quality-size", "64", "--quality-evals", "10",
                 "--sweep-size", "0", "--quality-variants", "recolored", "fp32",
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

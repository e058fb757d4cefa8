"""Device helpers: bf16 on hardware without it is flagged before the run starts."""

import logging

import pytest
import torch

from nst.engine import devices
from nst.engine.inputs import load_inputs
from nst.jobs.config import parse

from .test_config import make

TINY = ["model=random", "tracking=none", "progress=false", "optimizer.max_iter=2", "image.size=32",
        "model.precision=bf16", "optimizer.line_search=null"]


@pytest.mark.parametrize("native, warned", [(False, True), (True, False), (None, False)])
def test_bf16_without_bf16_hardware_is_warned_about(monkeypatch, caplog, native, warned):
    monkeypatch.setattr("nst.engine.inputs.native_bf16", lambda device: native)
    with caplog.at_level(logging.WARNING, logger="nst.engine.inputs"):
        load_inputs(parse(make(*TINY)))
    assert any("no bfloat16 hardware" in r.getMessage() for r in caplog.records) is warned


def test_native_bf16_reads_the_cpu_flags(monkeypatch, tmp_path):
    real_open = open

    def fake_cpuinfo(flags):
        path = tmp_path / "cpuinfo"
        path.write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
        monkeypatch.setattr("builtins.open", lambda name, *a, **k: real_open(
            path if name == "/proc/cpuinfo" else name, *a, **k))

    fake_cpuinfo("fpu avx2 avx512f avx512bw")
    assert devices.native_bf16(torch.device("cpu")) is False
    fake_cpuinfo("fpu avx2 avx512f avx512_bf16")
    assert devices.native_bf16(torch.device("cpu")) is True
    fake_cpuinfo("fpu amx_tile amx_bf16")
    assert devices.native_bf16(torch.device("cpu")) is True


def test_tune_turns_on_cudnn_autotuning_for_cuda_only(monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    devices.tune(torch.device("cpu"))
    assert torch.backends.cudnn.benchmark is False
    devices.tune(torch.device("cuda"))
    assert torch.backends.cudnn.benchmark is True

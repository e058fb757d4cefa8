"""Choosing the device (nst/engine/devices.py): a device that is not there is refused; bf16 hardware is
read from the CPU flags; cuDNN autotuning only on CUDA."""

import pytest
import torch

from nst.engine import devices
from nst.engine.devices import resolve_device
from nst.errors import ConfigError


def test_cuda_without_cuda_is_refused():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ConfigError, match="no CUDA GPU"):
        resolve_device("cuda")


@pytest.mark.parametrize("count, allowed", [
    (1, "cuda:0 (this machine has 1 CUDA GPU), cuda, cpu or auto"),
    (4, "cuda:0 to cuda:3 (this machine has 4 CUDA GPUs), cuda, cpu or auto"),
])
def test_a_gpu_index_beyond_the_count_is_refused(gpus, count, allowed):
    gpus(count)
    with pytest.raises(ConfigError) as caught:
        resolve_device("cuda:99")
    assert str(caught.value) == f"device='cuda:99' is not allowed: {allowed}"
    assert resolve_device(f"cuda:{count - 1}") == torch.device(f"cuda:{count - 1}")
    assert resolve_device("cuda") == torch.device("cuda")


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

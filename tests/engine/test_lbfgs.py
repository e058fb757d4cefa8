"""CompactLBFGS follows torch.optim.LBFGS's trajectory; nst picks it only off the CPU."""

import subprocess
import sys
import textwrap

import pytest
import torch

from nst.engine.lbfgs import LBFGS, CompactLBFGS
from nst.engine.optimization import OptimizerSettings


def _problem(n: int = 40, seed: int = 0):
    """A smooth, non-quadratic, ill-conditioned objective in float64."""
    generator = torch.Generator().manual_seed(seed)
    basis = torch.randn(n, n, generator=generator, dtype=torch.float64)
    matrix = basis @ basis.T / n + 0.05 * torch.eye(n, dtype=torch.float64)
    offset = torch.randn(n, generator=generator, dtype=torch.float64)
    return lambda x: 0.5 * x @ matrix @ x - offset @ x + 0.01 * (x**4).sum()


def _trajectory(optimizer_class, line_search, history, steps=3, max_iter=12, lr=1.0):
    objective = _problem()
    x = torch.zeros(40, dtype=torch.float64, requires_grad=True)
    optimizer = optimizer_class([x], lr=lr, max_iter=max_iter, history_size=history, tolerance_grad=0,
                                tolerance_change=0, line_search_fn=line_search)
    losses = []

    def closure():
        optimizer.zero_grad()
        value = objective(x)
        value.backward()
        losses.append(float(value.detach()))
        return value

    for _ in range(steps):  # state carries over between steps, as it does across nst's epochs
        optimizer.step(closure)
    return x.detach(), losses


@pytest.mark.parametrize("history", [100, 4])  # 4: the history wraps around several times
def test_fixed_step_trajectory_equals_torch(history):
    ours, our_losses = _trajectory(CompactLBFGS, None, history, lr=0.3)
    theirs, their_losses = _trajectory(torch.optim.LBFGS, None, history, lr=0.3)
    assert len(our_losses) == len(their_losses) == 36
    torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(torch.tensor(our_losses), torch.tensor(their_losses), rtol=1e-10, atol=0)
    assert their_losses[-1] < 0.5 * their_losses[1]  # it did optimise


@pytest.mark.parametrize("history", [100, 4])
def test_strong_wolfe_trajectory_equals_torch(history):
    ours, our_losses = _trajectory(CompactLBFGS, "strong_wolfe", history, steps=2, max_iter=8)
    theirs, their_losses = _trajectory(torch.optim.LBFGS, "strong_wolfe", history, steps=2, max_iter=8)
    assert len(our_losses) == len(their_losses)  # the same line-search decisions
    torch.testing.assert_close(ours, theirs, rtol=1e-8, atol=1e-10)


def test_stops_on_the_evaluation_budget_like_torch():
    objective = _problem()
    counts = []
    for optimizer_class in (CompactLBFGS, torch.optim.LBFGS):
        x = torch.zeros(40, dtype=torch.float64, requires_grad=True)
        optimizer = optimizer_class([x], max_iter=50, max_eval=7, line_search_fn="strong_wolfe")
        calls = []

        def closure(x=x, optimizer=optimizer, calls=calls):
            optimizer.zero_grad()
            value = objective(x)
            value.backward()
            calls.append(1)
            return value

        optimizer.step(closure)
        counts.append(len(calls))
    assert counts[0] == counts[1] <= 8


def test_build_keeps_torch_lbfgs_on_the_cpu_and_compact_elsewhere():
    settings = OptimizerSettings(name="lbfgs")
    on_cpu = settings.build([torch.zeros(3, requires_grad=True)])
    elsewhere = settings.build([torch.zeros(3, device="meta", requires_grad=True)])
    assert type(on_cpu) is LBFGS and type(on_cpu).step is torch.optim.LBFGS.step
    assert type(elsewhere) is CompactLBFGS


def test_nsts_lbfgs_runs_without_importing_the_compiler():
    """torch.optim's first add_param_group or zero_grad imports torch._dynamo (seconds); nst's class does not,
    and takes torch's steps."""
    script = textwrap.dedent("""
        import sys, torch
        from nst.engine.lbfgs import LBFGS
        def run(cls):
            x = torch.linspace(-1, 1, 20, dtype=torch.float64, requires_grad=True)
            optimizer = cls([x], max_iter=6, line_search_fn="strong_wolfe")
            def closure():
                optimizer.zero_grad()
                value = ((x - 0.3) ** 4).sum() + (x ** 2).sum()
                value.backward()
                return value
            optimizer.step(closure)
            return x.detach()
        ours = run(LBFGS)
        assert "torch._dynamo" not in sys.modules, "nst's LBFGS imported torch._dynamo"
        assert torch.equal(ours, run(torch.optim.LBFGS))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]

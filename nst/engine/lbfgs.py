"""L-BFGS whose search direction costs a handful of GPU kernels instead of hundreds.

``torch.optim.LBFGS`` computes its direction with the two-loop recursion: for a
history of m pairs, 4m small vector operations, and each of its 2m step sizes is
read back to the host (``alpha=`` takes a Python number), so every iteration
waits on the GPU 2m times; on a GPU that bookkeeping can cost more than the
network's forward and backward pass.

``CompactLBFGS`` computes the same direction from the compact representation of
the L-BFGS matrix (Byrd, Nocedal and Schnabel 1994, eq. 3.13): the history is
kept as two stacked matrices, so the direction is two matrix-vector products,
two small triangular solves and two more products, with no read-back. The outer
loop (first step, tolerances, fixed step or strong-Wolfe line search via torch's
own ``_strong_wolfe``, evaluation budget) is torch's, so both optimisers follow
the same trajectory up to rounding (tested). On the CPU the two-loop recursion
reads less memory and is cheaper, so nst keeps torch's direction there: ``LBFGS``,
torch's class less its import of the compiler (``OptimizerSettings.build``).
"""

from __future__ import annotations

import torch
from torch.optim.lbfgs import _strong_wolfe


def _unwrapped(method):
    """The function torch wrapped in ``torch._disable_dynamo`` (the method itself where it is not wrapped)."""
    return getattr(method, "__wrapped__", method)


class LBFGS(torch.optim.LBFGS):
    """``torch.optim.LBFGS`` whose first use does not import ``torch._dynamo``.

    torch wraps ``Optimizer.add_param_group`` and ``zero_grad`` so that ``torch.compile`` leaves them
    alone, and that wrapper imports the whole compiler on its first call, in every run's start-up.
    nst never compiles an optimiser step, so it calls the functions torch wrapped.
    """

    add_param_group = _unwrapped(torch.optim.Optimizer.add_param_group)
    zero_grad = _unwrapped(torch.optim.Optimizer.zero_grad)


class CompactLBFGS(LBFGS):
    """``torch.optim.LBFGS`` with the compact-form direction; same arguments, same state semantics."""

    @torch.no_grad()
    def _direction(self, state: dict, grad: torch.Tensor) -> torch.Tensor:
        """-H g for the current history (H: the L-BFGS inverse-Hessian approximation)."""
        count = len(state.get("slots", ()))
        gamma = state["gamma"]
        if count == 0:
            return grad.neg()
        # (k, 2, n) -> (2k, n) rows s_0, y_0, s_1, y_1, ... in buffer order: a view, no copy
        pairs = state["pairs"][:count].reshape(2 * count, -1)
        order = state["order"]  # buffer slots, oldest first
        sy = state["sy"][:count, :count][order][:, order]  # sy[i, j] = s_i . y_j, chronological
        yy = state["yy"][:count, :count][order][:, order]
        projected = (pairs @ grad).reshape(count, 2)[order]
        s_g, y_g = projected[:, 0], projected[:, 1]
        upper = torch.triu(sy)
        # [p; q] = M [S^T g; gamma Y^T g] with M = [[R^-T (D + gamma Y^T Y) R^-1, -R^-T], [-R^-1, 0]]
        u = torch.linalg.solve_triangular(upper, s_g.unsqueeze(1), upper=True)
        inner = torch.diag(sy).unsqueeze(1) * u + gamma * (yy @ u) - gamma * y_g.unsqueeze(1)
        p = torch.linalg.solve_triangular(upper.T, inner, upper=False).squeeze(1)
        q = -u.squeeze(1)
        coefficients = torch.empty(count, 2, dtype=grad.dtype, device=grad.device)
        coefficients[order, 0] = p
        coefficients[order, 1] = gamma * q
        hg = gamma * grad + coefficients.reshape(1, -1) @ pairs
        return hg.reshape(-1).neg()

    @torch.no_grad()
    def _remember(self, state: dict, s: torch.Tensor, y: torch.Tensor, ys: torch.Tensor, size: int) -> None:
        """Store the pair (s, y), dropping the oldest when ``size`` pairs are held."""
        if "pairs" not in state:
            state["pairs"] = torch.empty(size, 2, s.numel(), dtype=s.dtype, device=s.device)
            state["sy"] = torch.zeros(size, size, dtype=s.dtype, device=s.device)
            state["yy"] = torch.zeros(size, size, dtype=s.dtype, device=s.device)
            state["slots"] = []
        slots: list[int] = state["slots"]
        slot = slots.pop(0) if len(slots) == size else len(slots)
        slots.append(slot)
        pairs = state["pairs"]
        pairs[slot, 0] = s
        pairs[slot, 1] = y
        filled = len(slots)
        # new row and column of S^T Y and Y^T Y (only the slots in use are ever read)
        s_row = pairs[:filled, 1] @ s  # s . y_j
        y_col = pairs[:filled, 0] @ y  # s_i . y
        y_row = pairs[:filled, 1] @ y  # y . y_j
        state["sy"][slot, :filled] = s_row
        state["sy"][:filled, slot] = y_col
        state["yy"][slot, :filled] = y_row
        state["yy"][:filled, slot] = y_row
        state["order"] = torch.tensor(slots, device=s.device)
        state["gamma"] = ys / y.dot(y)

    @torch.no_grad()
    def step(self, closure):  # type: ignore[override]
        """One call runs up to ``max_iter`` iterations, as ``torch.optim.LBFGS.step`` does."""
        closure = torch.enable_grad()(closure)
        group = self.param_groups[0]
        lr, max_iter, max_eval = group["lr"], group["max_iter"], group["max_eval"]
        tolerance_grad, tolerance_change = group["tolerance_grad"], group["tolerance_change"]
        line_search, history = group["line_search_fn"], group["history_size"]
        state = self.state[self._params[0]]
        state.setdefault("func_evals", 0)
        state.setdefault("n_iter", 0)
        state.setdefault("gamma", 1.0)

        first_loss = closure()
        loss = float(first_loss.detach())
        evaluations = 1
        state["func_evals"] += 1
        grad = self._gather_flat_grad()
        if grad.abs().max() <= tolerance_grad:
            return first_loss
        d, t = state.get("d"), state.get("t")
        previous_grad = state.get("prev_flat_grad")

        iterations = 0
        while iterations < max_iter:
            iterations += 1
            state["n_iter"] += 1
            if state["n_iter"] > 1:
                y = grad.sub(previous_grad)
                s = d.mul(t)
                ys = y.dot(s)
                if ys > 1e-10:  # keep the pair only where the curvature condition holds
                    self._remember(state, s, y, ys, history)
            d = self._direction(state, grad)
            if previous_grad is None:
                previous_grad = grad.clone(memory_format=torch.contiguous_format)
            else:
                previous_grad.copy_(grad)
            previous_loss = loss

            t = min(1.0, 1.0 / float(grad.abs().sum())) * lr if state["n_iter"] == 1 else lr
            gtd = grad.dot(d)
            if gtd > -tolerance_change:
                break
            if line_search is not None:
                if line_search != "strong_wolfe":
                    raise RuntimeError("only 'strong_wolfe' is supported")
                start = self._clone_param()

                def directional(x, step, direction):
                    return self._directional_evaluate(closure, x, step, direction)

                loss, grad, t, used = _strong_wolfe(directional, start, t, d, loss, grad, gtd,
                                                    max_ls=max_eval - evaluations)
                self._add_grad(t, d)
                converged = grad.abs().max() <= tolerance_grad
            else:
                self._add_grad(t, d)
                used = 0
                converged = False
                if iterations != max_iter:
                    with torch.enable_grad():
                        loss = float(closure().detach())
                    grad = self._gather_flat_grad()
                    converged = grad.abs().max() <= tolerance_grad
                    used = 1
            evaluations += used
            state["func_evals"] += used
            if iterations == max_iter or evaluations >= max_eval or converged:
                break
            if d.mul(t).abs().max() <= tolerance_change:
                break
            if abs(loss - previous_loss) < tolerance_change:
                break
        state.update(d=d, t=t, prev_flat_grad=previous_grad)
        return first_loss

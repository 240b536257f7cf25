"""Validation errors, float32, diagnostics (turnover starvation), layer wrapper."""

from __future__ import annotations

import cvxpy as cp
import numpy as np
import pytest
import torch

from mpo.errors import ConvergenceError, InfeasibleError
from mpo.learn.qp import DMPOLayer, QPSpec, min_turnover, solve_qp


def test_delta_too_small_names_sample(qp_case):
    case = qp_case(seed=0, batch=4, n=6, turnover="tight")
    case.w_prev[2] = torch.tensor([0.5, 0.5, 0.5, 0.0, 0.0, 0.0], dtype=torch.float64)
    delta = case.delta.clone()
    delta[2] = 0.4  # needs 0.5 to get back to the simplex
    with pytest.raises(InfeasibleError, match=r"sample 2: delta=0\.4 < needed 0\.5"):
        solve_qp(case.spec, case.mu, case.L, case.w_prev, delta)


def test_cap_too_small_for_budget():
    with pytest.raises(InfeasibleError, match="n \\* w_max"):
        QPSpec(n=5, w_max=0.19)


@pytest.mark.parametrize("field", ["mu", "L", "w_prev"])
def test_nan_input_names_sample(qp_case, field):
    case = qp_case(seed=1, batch=3, n=5)
    getattr(case, field)[1].view(-1)[0] = float("nan")
    with pytest.raises(ValueError, match=rf"{field} has non-finite entries in samples \[1\]"):
        solve_qp(*case.args())


def test_wrong_shapes_and_dtypes(qp_case):
    case = qp_case(seed=2, batch=3, n=5, horizon=2)
    with pytest.raises(ValueError, match="mu must have shape"):
        solve_qp(case.spec, case.mu[:, :1], case.L, case.w_prev, case.delta)
    with pytest.raises(ValueError, match="L must have shape"):
        solve_qp(case.spec, case.mu, case.L[:, :, :4], case.w_prev, case.delta)
    with pytest.raises(ValueError, match="w_prev must have shape"):
        solve_qp(case.spec, case.mu, case.L, case.w_prev[:2], case.delta)
    with pytest.raises(ValueError, match="delta must be a scalar or have shape"):
        solve_qp(case.spec, case.mu, case.L, case.w_prev, case.delta[:2])
    with pytest.raises(TypeError, match="cast every input"):
        solve_qp(case.spec, case.mu, case.L.float(), case.w_prev, case.delta)
    with pytest.raises(ValueError, match="needs the diagonal risk d"):
        spec = QPSpec(n=5, horizon=2, rank=5, factor="lowrank_diag")
        solve_qp(spec, case.mu, case.L, case.w_prev, case.delta)


def test_non_convergence_raises_or_masks(qp_case):
    case = qp_case(seed=3, batch=4, n=6, turnover="tight")
    spec = QPSpec(**{**case.spec.__dict__, "max_iter": 2})
    with pytest.raises(ConvergenceError, match=r"sample\(s\) \[0, 1, 2, 3\]"):
        solve_qp(spec, case.mu, case.L, case.w_prev, case.delta)
    spec = QPSpec(**{**case.spec.__dict__, "max_iter": 2, "on_failure": "nan"})
    w, info = solve_qp(spec, case.mu, case.L, case.w_prev, case.delta, return_info=True)
    assert torch.isnan(w[~info.converged]).all()
    assert not bool(info.converged.any())


def test_min_turnover_matches_lp():
    rng = np.random.default_rng(0)
    for w_max in (None, 0.3):
        for _ in range(5):
            v = rng.normal(0.15, 0.3, 6)
            x = cp.Variable(6)
            cons = [cp.sum(x) == 1, x >= 0] + ([] if w_max is None else [x <= w_max])
            prob = cp.Problem(cp.Minimize(cp.norm1(x - v)), cons)
            prob.solve(solver=cp.CLARABEL)
            got = float(min_turnover(torch.tensor(v), w_max))
            assert abs(got - prob.value) < 1e-7


def test_float32(qp_case):
    case64 = qp_case(seed=4, batch=6, n=8, horizon=2, w_max=0.3, turnover="tight")
    case32 = qp_case(
        seed=4, batch=6, n=8, horizon=2, w_max=0.3, turnover="tight", dtype=torch.float32
    )
    w64 = solve_qp(*case64.args())
    mu = case32.mu.clone().requires_grad_()
    w32 = solve_qp(case32.spec, mu, case32.L, case32.w_prev, case32.delta)
    assert w32.dtype == torch.float32
    torch.testing.assert_close(w32.double(), w64, atol=1e-6, rtol=0)
    (g,) = torch.autograd.grad(w32[:, 0, 0].sum(), [mu])
    assert g.dtype == torch.float32 and torch.isfinite(g).all()
    spec = QPSpec(**{**case32.spec.__dict__, "upcast": False})
    w32_native = solve_qp(spec, case32.mu, case32.L, case32.w_prev, case32.delta)
    torch.testing.assert_close(w32_native.double(), w64, atol=1e-3, rtol=0)


def test_turnover_starvation_diagnostic():
    """Turnover binds and L1 kinks pin w_1: d w_1 / d mu is exactly zero and counted."""
    n, B = 6, 4
    spec = QPSpec(n=n, gamma=0.01, eps=1e-3)
    mu = torch.zeros(B, 1, n, dtype=torch.float64)
    mu[:, 0, 0], mu[:, 0, 1] = 0.5, -0.5  # buy asset 0, sell asset 1, hold the rest
    L = 0.05 * torch.eye(n, dtype=torch.float64).expand(B, 1, n, n).clone()
    w_prev = torch.full((B, n), 1.0 / n, dtype=torch.float64)
    delta = torch.full((B,), 0.1, dtype=torch.float64, requires_grad=True)
    mu.requires_grad_()
    wp = w_prev.clone().requires_grad_()
    w, info = solve_qp(spec, mu, L, wp, delta, return_info=True)
    torch.testing.assert_close(w[:, 0, 0], w_prev[:, 0] + 0.05)
    assert bool(info.turnover_active.all()) and bool(info.starved.all())
    assert info.starved_share == 1.0
    g_mu, g_wp, g_delta = torch.autograd.grad(w[:, 0, 0].sum(), [mu, wp, delta])
    assert torch.equal(g_mu, torch.zeros_like(g_mu))
    torch.testing.assert_close(g_delta, torch.full_like(g_delta, 0.5))
    assert bool((g_wp != 0).any())


def test_not_starved_without_turnover_limit(qp_case):
    case = qp_case(seed=6, batch=5, n=8, turnover="none")
    _, info = solve_qp(*case.args(), return_info=True)
    assert info.starved_share == 0.0 and not bool(info.turnover_active.any())


def test_layer_backends_agree(qp_case):
    case = qp_case(seed=8, batch=3, n=6, horizon=2, turnover="tight")
    fast = DMPOLayer(case.spec)
    ref = DMPOLayer(case.spec, backend="cvxpylayers")
    w_fast = fast(case.mu, case.L, case.w_prev, case.delta)
    w_ref = ref(case.mu, case.L, case.w_prev, case.delta)
    torch.testing.assert_close(w_fast, w_ref, atol=1e-6, rtol=0)
    assert fast.last_info is not None and bool(fast.last_info.converged.all())


def test_readme_example_runs():
    from pathlib import Path

    import mpo.learn.qp as qp

    text = (Path(qp.__file__).parent / "README.md").read_text()
    code = text.split("```python\n", 1)[1].split("```", 1)[0]
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert namespace["info"].converged.all()
    assert namespace["mu"].grad is not None

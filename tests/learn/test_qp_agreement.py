"""Fast solver vs a high-precision cvxpy/Clarabel solve, on random batches."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mpo.learn.qp import reference_solve, solve_qp

FEAS_TOL = 1e-8
AGREE_TOL = 1e-6


def _assert_feasible(case, w: np.ndarray) -> None:
    spec = case.spec
    assert np.all(w >= -FEAS_TOL)
    if spec.w_max is not None:
        assert np.all(w <= spec.w_max + FEAS_TOL)
    np.testing.assert_allclose(w.sum(-1), 1.0, atol=FEAS_TOL)
    if case.delta is not None:
        turnover = np.abs(w[:, 0] - case.w_prev.numpy()).sum(-1)
        assert np.all(turnover <= case.delta.numpy() + FEAS_TOL)


CASES = [
    # (horizon, factor, w_max, turnover, shared)
    (1, "full", None, "none", False),
    (1, "full", 0.3, "tight", False),
    (1, "lowrank", 0.25, "loose", False),
    (1, "lowrank_diag", None, "tight", False),
    (2, "full", None, "tight", False),
    (2, "lowrank", 0.3, "tight", True),
    (2, "lowrank_diag", 0.25, "loose", False),
    (3, "full", 0.3, "tight", False),
    (3, "lowrank", None, "none", True),
    (3, "lowrank_diag", 0.3, "tight", True),
]


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize(("horizon", "factor", "w_max", "turnover", "shared"), CASES)
def test_agrees_with_clarabel(qp_case, seed, horizon, factor, w_max, turnover, shared):
    case = qp_case(
        seed=100 * seed + horizon,
        batch=6,
        n=8,
        horizon=horizon,
        factor=factor,
        w_max=w_max,
        turnover=turnover,
        shared=shared,
    )
    w, info = solve_qp(*case.args(), **case.kwargs(), return_info=True)
    ref = reference_solve(*case.args(), **case.kwargs())
    assert bool(info.converged.all())
    assert bool(info.polished.all())
    np.testing.assert_allclose(w.numpy(), ref, atol=AGREE_TOL, rtol=0)
    _assert_feasible(case, w.numpy())


def test_binding_cases_bind(qp_case):
    """Tight turnover and a low cap must actually be active in most samples."""
    case = qp_case(seed=7, batch=12, n=10, horizon=2, w_max=0.15, turnover="tight")
    case.mu[:, :, :3] += 0.2  # pile into three assets -> the cap binds
    w, info = solve_qp(*case.args(), return_info=True)
    ref = reference_solve(*case.args())
    np.testing.assert_allclose(w.numpy(), ref, atol=AGREE_TOL, rtol=0)
    turnover = (w[:, 0] - case.w_prev).abs().sum(-1)
    assert bool(info.turnover_active.all())
    torch.testing.assert_close(turnover, case.delta, atol=1e-9, rtol=0)
    assert bool(((w - 0.15).abs() < 1e-10).any(-1).all())  # cap active in every period
    assert bool((w < 1e-10).any())  # lower bounds active too
    _assert_feasible(case, w.numpy())


def test_kinks_no_trade_region(qp_case):
    """Large gamma: many weights stay at w_prev (L1 kinks), still exact."""
    case = qp_case(seed=3, batch=8, n=8, horizon=3, gamma=0.02, turnover="loose")
    w, info = solve_qp(*case.args(), return_info=True)
    ref = reference_solve(*case.args())
    np.testing.assert_allclose(w.numpy(), ref, atol=AGREE_TOL, rtol=0)
    kinks = (w[:, 0] - case.w_prev).abs() < 1e-12
    assert int(kinks.sum()) >= 8


def test_larger_problem_agrees(qp_case):
    case = qp_case(seed=11, batch=4, n=40, horizon=2, w_max=0.1, turnover="tight")
    w = solve_qp(*case.args())
    ref = reference_solve(*case.args())
    np.testing.assert_allclose(w.numpy(), ref, atol=AGREE_TOL, rtol=0)
    _assert_feasible(case, w.numpy())


def test_ill_conditioned_not_worse_than_reference(qp_case):
    """Tiny eps and low rank: solutions are ill-determined, compare objectives instead."""
    case = qp_case(seed=5, batch=8, n=20, horizon=2, factor="lowrank", rank=4, turnover="tight")
    spec = type(case.spec)(**{**case.spec.__dict__, "eps": 1e-7})
    case.spec = spec
    w = solve_qp(*case.args())
    ref = torch.tensor(reference_solve(*case.args()))
    _assert_feasible(case, w.numpy())

    def objective(x: torch.Tensor) -> torch.Tensor:
        Sig = case.L @ case.L.mT + spec.eps * torch.eye(spec.n, dtype=x.dtype)
        quad = 0.5 * (x.unsqueeze(-2) @ Sig @ x.unsqueeze(-1)).squeeze(-1).squeeze(-1)
        prev = torch.cat([case.w_prev.unsqueeze(1), x[:, :-1]], 1)
        l1 = spec.gamma * (x - prev).abs().sum(-1)
        return (quad - (case.mu * x).sum(-1) + l1).sum(-1)

    assert bool((objective(w) <= objective(ref) + 1e-9).all())


def test_seed_determinism(qp_case):
    a, b, c = qp_case(seed=1), qp_case(seed=1), qp_case(seed=2)
    wa, wb, wc = (solve_qp(*x.args()) for x in (a, b, c))
    torch.testing.assert_close(wa, wb, atol=0, rtol=0)
    assert not torch.allclose(wa, wc)

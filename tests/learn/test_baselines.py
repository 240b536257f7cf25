"""Baselines: the exact turnover projection, Ledoit-Wolf risk, two-stage and direct training."""

from __future__ import annotations

import cvxpy as cp
import numpy as np
import pytest
import torch
from _helpers import tiny_data, tiny_spec
from sklearn.covariance import LedoitWolf

from mpo.learn.baselines import (
    direct_decider,
    equal_weight_decider,
    ledoit_wolf_factors,
    project_turnover,
    train_direct,
    train_two_stage,
    two_stage_decider,
)
from mpo.learn.qp import min_turnover
from mpo.learn.train import TrainingCosts, run_sequential


def _cvxpy_projection(v, p, delta, u):
    x = cp.Variable(len(v))
    cons = [cp.sum(x) == 1, x >= 0, x <= u, cp.norm1(x - p) <= delta]
    cp.Problem(cp.Minimize(cp.sum_squares(x - v)), cons).solve(
        solver=cp.CLARABEL, tol_gap_abs=1e-12, tol_gap_rel=1e-12, tol_feas=1e-12
    )
    return x.value


@pytest.mark.parametrize("w_max", [None, 0.4])
def test_projection_matches_cvxpy_and_is_feasible(w_max):
    rng = np.random.default_rng(0)
    n, B = 7, 12
    u = 1.0 if w_max is None else w_max
    v = torch.tensor(rng.normal(0.1, 0.4, (B, n)))
    p = torch.tensor(rng.dirichlet(np.ones(n), B))
    p = torch.minimum(p, torch.tensor(u))
    p = p / p.sum(-1, keepdim=True)
    p = torch.minimum(p, torch.tensor(u))  # may leave the budget: an infeasible w_prev
    delta = min_turnover(p, w_max) + torch.tensor(rng.uniform(0.01, 0.5, B))
    w = project_turnover(v, p, delta, w_max)
    assert float((w.sum(-1) - 1).abs().max()) <= 1e-8
    assert float(w.min()) >= -1e-8 and float(w.max()) <= u + 1e-8
    assert float(((w - p).abs().sum(-1) - delta).max()) <= 1e-8
    for b in range(B):
        ref = _cvxpy_projection(v[b].numpy(), p[b].numpy(), float(delta[b]), u)
        np.testing.assert_allclose(w[b].numpy(), ref, atol=1e-7)


def test_projection_gradient_matches_finite_differences():
    rng = np.random.default_rng(1)
    v = torch.tensor(rng.normal(0, 0.3, (4, 6)), requires_grad=True)
    p = torch.full((4, 6), 1 / 6, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda x: project_turnover(x, p, 0.25, 0.5), (v,), eps=1e-7)


def test_ledoit_wolf_factors_are_sklearn_covariances():
    spec = tiny_spec()
    ds, (_, _, test) = tiny_data(spec)
    pos = test.positions[:3]
    L = ledoit_wolf_factors(ds, pos, 50)
    for k, p in enumerate(pos):
        cov = LedoitWolf().fit(ds.returns[p - 50 : p].numpy()).covariance_
        np.testing.assert_allclose((L[k] @ L[k].T).numpy(), cov, rtol=1e-7, atol=1e-14)


def test_two_stage_and_direct_decisions_are_feasible():
    spec = tiny_spec(qp={"delta": 0.15, "w_max": 0.35})
    ds, (train, val, test) = tiny_data(spec)
    two = train_two_stage(spec, ds, train, val, progress=False)
    direct = train_direct(spec, ds, train, val, progress=False)
    assert len(two.fit.history) == 1 and np.isfinite(two.fit.history[0]["loss"])
    assert direct.fit.history[0]["violation"] <= 1e-8
    costs = TrainingCosts.from_spec(spec)
    for name, dec in [
        ("two_stage", two_stage_decider(two.model, ds, test, 60)),
        ("direct", direct_decider(direct.model, ds, test)),
        ("equal_weight", equal_weight_decider(ds.n_assets, 0.35, 0.15)),
    ]:
        ev = run_sequential(name, dec, ds, test, costs, 0.35)
        assert ev.max_violation <= 1e-8, name
        assert np.isfinite(ev.metrics()["sharpe"])
        assert ev.turnover.max() <= 0.15 + 1e-8


def test_equal_weight_moves_towards_equal_weight_within_the_limit():
    dec = equal_weight_decider(4, None, 0.2)
    w_prev = torch.tensor([0.7, 0.1, 0.1, 0.1], dtype=torch.float64)
    w, delta, _ = dec(0, w_prev)
    np.testing.assert_allclose(w.numpy(), [0.6, 0.1 + 0.1 / 3, 0.1 + 0.1 / 3, 0.1 + 0.1 / 3])
    w2, _, _ = dec(0, torch.full((4,), 0.25, dtype=torch.float64))
    np.testing.assert_allclose(w2.numpy(), 0.25)

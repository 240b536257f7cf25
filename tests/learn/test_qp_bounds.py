"""Per-weight bounds ``lower <= w <= upper`` in the DMPO QP (participation / liquidity boxes).

Checked against cvxpy + Clarabel at 1e-12 (reference_solve with the same box), against
finite differences for the gradients, and the feasibility guarantee to 1e-9.
"""

from __future__ import annotations

import cvxpy as cp
import numpy as np
import pytest
import torch

from mpo.errors import InfeasibleError
from mpo.learn.qp import make_backend, min_turnover, reference_solve, solve_qp, validate_inputs


def _box(case, seed: int, participation: float = 0.03, illiquid: int = 2):
    """A participation box on the executed trade and a liquidity screen (names that may
    only shrink) in every period, intersected with the cap; zero-width entries included."""
    rng = np.random.default_rng(seed)
    B, H, n = case.mu.shape
    wp = case.w_prev
    cap = 1.0 if case.spec.w_max is None else case.spec.w_max
    lo = torch.zeros(B, H, n, dtype=torch.float64)
    hi = torch.full((B, H, n), cap, dtype=torch.float64)
    c = torch.tensor(participation * rng.uniform(0.5, 1.5, (B, n)))
    c[::2, 0] = 0.0  # a name without volume: its weight is pinned (a zero-width box)
    lo[:, 0] = (wp - c).clamp(min=0.0)
    hi[:, 0] = torch.minimum(wp + c, hi[:, 0])
    names = torch.tensor(rng.choice(n, size=illiquid, replace=False))
    hi[:, :, names] = torch.minimum(hi[:, :, names], wp[:, None, names])
    return lo, torch.maximum(hi, lo)


@pytest.mark.parametrize(
    ("horizon", "w_max", "factor"),
    [
        (1, None, "full"),
        (1, 0.3, "full"),
        (2, 0.3, "full"),
        (3, None, "full"),
        (2, 0.3, "lowrank_diag"),
    ],  # fmt: skip
)
def test_box_agrees_with_reference_and_holds(qp_case, horizon, w_max, factor):
    case = qp_case(seed=50 + horizon, batch=10, n=9, horizon=horizon, w_max=w_max,
                   factor=factor, turnover="tight")  # fmt: skip
    lo, hi = _box(case, seed=horizon)
    assert bool(((hi - lo) == 0).any())  # zero-width boxes are part of the test
    w, info = solve_qp(case.spec, case.mu, case.L, case.w_prev, case.delta, d=case.d,
                       lower=lo, upper=hi, return_info=True)  # fmt: skip
    assert bool(info.polished.all()) and bool(info.converged.all())
    ref = reference_solve(case.spec, case.mu, case.L, case.w_prev, case.delta, d=case.d,
                          lower=lo, upper=hi)  # fmt: skip
    np.testing.assert_allclose(w.numpy(), ref, atol=1e-7, rtol=0)
    assert float((lo - w).max()) <= 1e-9 and float((w - hi).max()) <= 1e-9
    np.testing.assert_allclose(w.sum(-1).numpy(), 1.0, atol=1e-9)
    turnover = (w[:, 0] - case.w_prev).abs().sum(-1)
    assert bool((turnover <= case.delta + 1e-9).all())
    # the box binds: without it the solution differs
    free = solve_qp(case.spec, case.mu, case.L, case.w_prev, case.delta, d=case.d)
    assert float((free - w).abs().max()) > 1e-3


@pytest.mark.parametrize("horizon", [1, 2])
def test_gradients_with_a_box_match_finite_differences(qp_case, horizon):
    case = qp_case(seed=60 + horizon, batch=6, n=7, horizon=horizon, w_max=0.35,
                   turnover="tight")  # fmt: skip
    lo, hi = _box(case, seed=10 + horizon, participation=0.05, illiquid=1)
    rng = np.random.default_rng(horizon)
    weights = torch.tensor(rng.standard_normal(case.mu.shape))
    dmu = torch.tensor(rng.standard_normal(case.mu.shape))
    dL = torch.tensor(rng.standard_normal(case.L.shape))

    def f(mu, L):
        w = solve_qp(case.spec, mu, L, case.w_prev, case.delta, lower=lo, upper=hi)
        return (w * weights).sum()

    mu = case.mu.clone().requires_grad_()
    L = case.L.clone().requires_grad_()
    g_mu, g_L = torch.autograd.grad(f(mu, L), [mu, L])
    h = 1e-6
    with torch.no_grad():
        fd_mu = (f(case.mu + h * dmu, case.L) - f(case.mu - h * dmu, case.L)) / (2 * h)
        fd_L = (f(case.mu, case.L + h * dL) - f(case.mu, case.L - h * dL)) / (2 * h)
    assert abs(float((g_mu * dmu).sum()) - float(fd_mu)) <= 1e-5 * max(1.0, abs(float(fd_mu)))
    assert abs(float((g_L * dL).sum()) - float(fd_L)) <= 1e-5 * max(1.0, abs(float(fd_L)))
    assert float(g_mu.abs().sum()) > 0  # not all pinned


def test_min_turnover_with_a_box_is_the_lp_optimum():
    rng = np.random.default_rng(3)
    for _ in range(20):
        n = 6
        wp = rng.dirichlet(np.ones(n)) * rng.uniform(0.8, 1.2)
        lo = np.maximum(wp - rng.uniform(0, 0.2, n), 0) * (rng.uniform(size=n) < 0.5)
        hi = np.maximum(np.minimum(wp + rng.uniform(0, 0.2, n), 0.5), lo)
        if lo.sum() > 1 or hi.sum() < 1:
            continue
        w = cp.Variable(n)
        lp = cp.Problem(cp.Minimize(cp.norm1(w - wp)), [cp.sum(w) == 1, w >= lo, w <= hi])
        lp.solve(solver=cp.CLARABEL)
        got = min_turnover(torch.tensor(wp), 0.5, torch.tensor(lo), torch.tensor(hi))
        assert abs(float(got) - lp.value) <= 1e-7


def test_bad_boxes_are_refused(qp_case):
    case = qp_case(seed=71, batch=3, n=5, horizon=1, w_max=0.5)
    B, H, n = case.mu.shape
    ok_hi = torch.full((B, H, n), 0.5, dtype=torch.float64)
    zeros = torch.zeros(B, H, n, dtype=torch.float64)
    cases = [
        ({"lower": zeros - 0.1}, "lower < 0"),
        ({"lower": zeros + 0.3, "upper": ok_hi.clone().fill_(0.2)}, "lower > upper"),
        ({"upper": ok_hi.clone().fill_(0.1)}, r"sum\(upper\) < 1"),
        ({"lower": zeros + 0.25}, r"sum\(lower\) > 1"),
    ]
    for kwargs, match in cases:
        with pytest.raises(InfeasibleError, match=match):
            validate_inputs(*case.args(), **kwargs)
    with pytest.raises(ValueError, match="lower must have shape"):
        validate_inputs(*case.args(), lower=torch.zeros(B, n + 1, dtype=torch.float64))
    far = zeros.clone()
    far[:, 0, 0] = 0.45  # the box forces a trade larger than the turnover limit allows
    tight = torch.full((B,), 0.01, dtype=torch.float64)
    with pytest.raises(InfeasibleError, match="turnover limit too small"):
        validate_inputs(case.spec, case.mu, case.L, case.w_prev, tight, lower=far)
    with pytest.raises(ValueError, match="'fast' backend"):
        make_backend("cvxpylayers")(*case.args(), upper=ok_hi)


def test_a_box_warm_starts(qp_case):
    """The cached active sets carry over with a box (the bound values come from the batch)."""
    case = qp_case(seed=81, batch=8, n=8, horizon=2, w_max=0.3, turnover="tight")
    lo, hi = _box(case, seed=4)
    warm = make_backend("fast", warm_start=True)
    keys = torch.arange(8)
    with torch.no_grad():
        warm(*case.args(), lower=lo, upper=hi, keys=keys)
        w, info = warm(*case.args(), lower=lo, upper=hi, keys=keys)
    assert bool(info.warm.all())
    ref = reference_solve(*case.args(), lower=lo, upper=hi)
    np.testing.assert_allclose(w.numpy(), ref, atol=1e-7, rtol=0)


FIXTURES = __import__("pathlib").Path(__file__).parents[1] / "fixtures"


def test_weights_next_to_a_bound_are_moved_onto_it():
    """A two-stage evaluation sample of the README's synthetic run (market seed 1) whose
    drifted w_prev holds entries of 5e-11 to 1e-9: kink and bound closer than the
    polish's tolerance. It stalled before; now it converges, is polished, and keeps the
    original turnover limit."""
    from mpo.learn.qp import QPSpec

    data = np.load(FIXTURES / "qp_near_kink.npz")
    mu, L, w_prev, delta = (torch.tensor(data[k]) for k in ("mu", "L", "w_prev", "delta"))
    assert float(w_prev[w_prev > 0].min()) < 1e-10
    spec = QPSpec(n=20, horizon=2, gamma=0.001, eps=1e-6, w_max=0.25, factor="full")
    w, info = solve_qp(spec, mu, L, w_prev, delta, return_info=True)  # raises if not
    assert bool(info.polished.all())
    assert float((w[:, 0] - w_prev).abs().sum()) <= float(delta[0]) + 1e-12
    assert float(w.min()) >= -1e-12 and float(w.max()) <= 0.25 + 1e-12
    # the objective is Clarabel's on the original problem (it ends optimal_inaccurate there)
    x = cp.Variable((2, 20))
    S = (L[0] @ L[0].mT).numpy() + 1e-6 * np.eye(20)
    m, wp = mu[0].numpy(), w_prev[0].numpy()

    def objective(v):
        risk = sum(0.5 * cp.quad_form(v[t], S) - m[t] @ v[t] for t in range(2))
        return risk + 0.001 * (cp.norm1(v[0] - wp) + cp.norm1(v[1] - v[0]))

    cons = [cp.sum(x, 1) == 1, x >= 0, x <= 0.25, cp.norm1(x[0] - wp) <= float(delta[0])]
    prob = cp.Problem(cp.Minimize(objective(x)), cons)
    prob.solve(solver=cp.CLARABEL)
    ours = objective(cp.Constant(w[0].numpy())).value
    assert ours <= prob.value + 1e-9


def test_two_stage_holds_w_prev_where_the_solver_fails():
    from mpo.learn.baselines import TwoStageModel
    from mpo.learn.encoders import EncoderConfig, Views
    from mpo.learn.options import QPOptions
    from mpo.learn.qp import QPInfo

    class Failing:
        def __call__(self, spec, mu, L, w_prev, delta, **kw):
            B = mu.shape[0]
            f = torch.zeros(B, dtype=torch.bool)
            nan = torch.full((B,), float("nan"), dtype=torch.float64)
            info = QPInfo(torch.zeros(B, dtype=torch.long), nan, nan, nan, f, f, f, f)
            return torch.full((B, spec.horizon, spec.n), float("nan"), dtype=torch.float64), info

    enc = EncoderConfig(n_assets=4, n_features=1, window=5, horizon=1)
    model = TwoStageModel(enc, QPOptions(w_max=0.5))
    model.qp_backend = Failing()
    w_prev = torch.tensor([[0.4, 0.3, 0.2, 0.1]], dtype=torch.float64)
    views = Views(
        torch.zeros(1, 1, 4, dtype=torch.float64), torch.eye(4, dtype=torch.float64)[None]
    )
    w, info = model.solve(views, w_prev, 0.2)
    assert not bool(info.converged.any())
    torch.testing.assert_close(w[:, 0], w_prev)

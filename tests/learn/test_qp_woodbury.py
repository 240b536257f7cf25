"""Woodbury Newton steps for low-rank risk models, and ill-conditioned low-rank instances."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from mpo.errors import SpecError
from mpo.learn.qp import QPSpec, reference_solve, solve_qp
from mpo.learn.qp import ipm as ipm_module


def _with(spec: QPSpec, **changes) -> QPSpec:
    return dataclasses.replace(spec, **changes)


@pytest.mark.parametrize(
    ("horizon", "factor", "w_max", "shared"),
    [
        (1, "lowrank", None, False),
        (1, "lowrank_diag", 0.15, False),
        (2, "lowrank_diag", None, True),
        (3, "lowrank", 0.15, False),
        (3, "lowrank_diag", 0.2, True),
    ],
)
def test_woodbury_agrees_with_dense_and_reference(qp_case, horizon, factor, w_max, shared):
    case = qp_case(
        seed=40 + horizon,
        batch=6,
        n=24,
        horizon=horizon,
        factor=factor,
        rank=3,
        w_max=w_max,
        turnover="tight",
        shared=shared,
    )
    c = torch.tensor(np.random.default_rng(horizon).standard_normal((6, horizon, 24)))
    out = {}
    for newton in ("dense", "woodbury"):
        spec = _with(case.spec, newton=newton)
        mu = case.mu.clone().requires_grad_()
        L = case.L.clone().requires_grad_()
        w, info = solve_qp(spec, mu, L, case.w_prev, case.delta, d=case.d, return_info=True)
        assert bool(info.polished.all())
        out[newton] = (w.detach(), torch.autograd.grad((w * c).sum(), [mu, L]))
    ref = reference_solve(case.spec, case.mu, case.L, case.w_prev, case.delta, d=case.d)
    np.testing.assert_allclose(out["woodbury"][0].numpy(), ref, atol=1e-6, rtol=0)
    torch.testing.assert_close(out["woodbury"][0], out["dense"][0], atol=1e-9, rtol=0)
    for a, b in zip(out["woodbury"][1], out["dense"][1], strict=True):
        torch.testing.assert_close(a, b, atol=1e-7, rtol=1e-6)


def test_woodbury_is_used_and_never_factors_n_by_n(qp_case, monkeypatch):
    """``newton="auto"`` with a low-rank factor takes the Woodbury path end to end.

    No ``n x n`` Cholesky, and no dense ``Sigma`` at all: the polish and the backward
    use the factors too (``(B, H, n, n)`` memory would dominate at large ``n``).
    """
    from mpo.learn.qp import fast

    case = qp_case(seed=3, batch=4, n=30, horizon=2, factor="lowrank_diag", rank=3)
    assert case.spec.woodbury  # auto: 2 * H * k = 12 <= n = 30
    sizes = []
    real = torch.linalg.cholesky_ex

    def spy(A, *args, **kwargs):
        sizes.append(A.shape[-1])
        return real(A, *args, **kwargs)

    def no_dense(*args, **kwargs):
        raise AssertionError("dense Sigma formed on the Woodbury path")

    monkeypatch.setattr(ipm_module.torch.linalg, "cholesky_ex", spy)
    monkeypatch.setattr(fast, "covariance", no_dense)
    mu = case.mu.clone().requires_grad_()
    L = case.L.clone().requires_grad_()
    w_prev = case.w_prev.clone().requires_grad_()
    d = case.d.clone().requires_grad_()
    w = solve_qp(case.spec, mu, L, w_prev, case.delta, d=d)
    w[:, 0].sum().backward()
    assert all(bool(torch.isfinite(x.grad).all()) for x in (mu, L, w_prev, d))
    # capacitance (H k = 6), border (H + 1) and the polish's free-slot block; never n x n
    assert 6 in sizes and max(sizes) < 30


def test_woodbury_spec_errors():
    with pytest.raises(SpecError, match="needs a low-rank factor"):
        QPSpec(n=10, newton="woodbury")
    with pytest.raises(SpecError, match="newton must be"):
        QPSpec(n=10, rank=2, factor="lowrank", newton="sparse")
    assert not QPSpec(n=10, rank=2, factor="lowrank", horizon=3).woodbury  # 2*3*2 > 10
    assert QPSpec(n=10, rank=2, factor="lowrank", horizon=3, newton="woodbury").woodbury


@pytest.mark.parametrize("newton", ["dense", "woodbury"])
def test_ill_conditioned_low_rank_is_polished(newton):
    """Rank 3 + eps 1e-6 in n = 20: the active-set solve needs iterative refinement.

    Without it the polished point of sample 12 missed the budget by 2e-9 at every stage
    and the solve raised ``ConvergenceError``.
    """
    rng = np.random.default_rng(0)
    n, k, B = 20, 3, 16
    spec = QPSpec(n=n, rank=k, factor="lowrank", gamma=0.002, eps=1e-6, newton=newton)
    mu = torch.tensor(0.01 * rng.standard_normal((B, 1, n)))
    L = torch.tensor(0.1 * rng.standard_normal((B, 1, n, k)) / np.sqrt(k))
    w_prev = torch.tensor(rng.dirichlet(np.ones(n), size=B))
    delta = torch.full((B,), 0.3, dtype=torch.float64)
    w, info = solve_qp(spec, mu, L, w_prev, delta, return_info=True)
    assert bool(info.polished.all()) and bool(info.converged.all())
    ref = reference_solve(spec, mu, L, w_prev, delta)
    np.testing.assert_allclose(w.numpy(), ref, atol=1e-6, rtol=0)
    assert float((w.sum(-1) - 1).abs().max()) <= 1e-12
    turnover = (w[:, 0] - w_prev).abs().sum(-1)
    assert bool((turnover <= delta + 1e-12).all())


def test_near_degenerate_kink_is_corrected(monkeypatch):
    """A weight almost exactly at its no-trade threshold (relative margin 2e-5).

    The interior point's indicators put asset 89 on its kink at every stage, the KKT
    check rejected each polish and the solve raised ``ConvergenceError``; the corrected
    active set (that kink released upwards) passes. Without the correction round the
    first polish of the same instance is rejected, so this test pins the mechanism, not
    luck.
    """
    rng = np.random.default_rng(0)
    draws = None
    for n, H, k, B in [(20, 1, 3, 64), (100, 1, 5, 64), (100, 3, 5, 64), (100, 1, 5, 256)]:
        draws = (
            0.01 * rng.standard_normal((B, H, n)),
            0.1 * rng.standard_normal((B, H, n, k)) / np.sqrt(k),
            0.01 * rng.random((B, H, n)),
            rng.dirichlet(np.ones(n), size=B),
        )
    i = slice(179, 180)
    mu, L, d, w_prev = (torch.tensor(x[i]) for x in draws)
    delta = torch.tensor([0.3], dtype=torch.float64)
    spec = QPSpec(n=100, rank=5, factor="lowrank_diag", gamma=0.002, eps=1e-6, on_failure="nan")
    w, info = solve_qp(spec, mu, L, w_prev, delta, d=d, return_info=True)
    assert bool(info.polished.all()) and bool(info.converged.all())
    ref = reference_solve(spec, mu, L, w_prev, delta, d=d)
    np.testing.assert_allclose(w.numpy(), ref, atol=2e-6, rtol=0)  # flat optimum
    assert abs(float(w[0, 0, 89] - w_prev[0, 89])) > 1e-8  # released from the kink

    from mpo.learn.qp import fast

    # The polish of each stage's iterate, in order (the later, tighter stages may recover
    # the point on some BLAS builds, so the mechanism is pinned at the first polish).
    first_polish = []
    polish = fast._polish

    def spy(*args):
        kkt, ok = polish(*args)
        first_polish.append(bool(ok.all()))
        return kkt, ok

    monkeypatch.setattr(fast, "_polish", spy)
    monkeypatch.setattr(fast, "_PLAIN", False)
    _, info1 = solve_qp(spec, mu, L, w_prev, delta, d=d, return_info=True)
    assert bool(info1.polished.all()) and first_polish == [True]  # the correction round
    first_polish.clear()
    monkeypatch.setattr(fast, "_CORRECT", 0)
    solve_qp(spec, mu, L, w_prev, delta, d=d, return_info=True)
    assert first_polish[0] is False  # only the interior point's own iterate: rejected


@pytest.mark.parametrize("newton", ["dense", "woodbury"])
def test_hard_multi_period_low_rank_sample(newton):
    """Sample 46 of the benchmark's n = 100, k = 5, H = 3, B = 256 low-rank batch.

    It needs 17 interior-point iterations, its first polishes fail, and with plain
    Woodbury solves the dual residual stalled at 1e-7 and the solve raised
    ``ConvergenceError``; one refinement step per Woodbury solve fixes it.
    """
    rng = np.random.default_rng(0)
    B, H, n, k = 256, 3, 100, 5
    mu = 0.01 * rng.standard_normal((B, H, n))
    L = 0.1 * rng.standard_normal((B, H, n, k)) / np.sqrt(k)
    w_prev = rng.dirichlet(np.ones(n), size=B)
    d = rng.uniform(0.002, 0.01, (B, H, n))
    mu, L, w_prev, d = (torch.tensor(x[46:47]) for x in (mu, L, w_prev, d))
    delta = torch.tensor([0.3], dtype=torch.float64)
    spec = QPSpec(
        n=n, horizon=H, rank=k, factor="lowrank_diag", gamma=0.002, eps=1e-6, newton=newton
    )
    w, info = solve_qp(spec, mu, L, w_prev, delta, d=d, return_info=True)
    assert bool(info.polished.all()) and bool(info.converged.all())
    ref = reference_solve(spec, mu, L, w_prev, delta, d=d)
    np.testing.assert_allclose(w.numpy(), ref, atol=1e-6, rtol=0)

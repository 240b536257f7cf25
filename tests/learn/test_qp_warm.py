"""Warm starts of the fast backend from cached active sets (mpo.learn.qp.warm).

A warm start may change the cost of a solve, never its result: every test compares the
warm solve with a cold solve of the same inputs (weights and gradients) and, where the
cached active set is wrong, checks that the samples fell back to the interior point.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mpo.errors import SpecError
from mpo.learn.options import QPOptions
from mpo.learn.qp import make_backend, reference_solve, validate_inputs
from mpo.learn.qp.warm import ActiveSetCache


def _solve(backend, case, mu, L, w_prev, keys=None):
    mu = mu.clone().requires_grad_()
    L = L.clone().requires_grad_()
    w_prev = w_prev.clone().requires_grad_()
    w, info = backend(case.spec, mu, L, w_prev, case.delta, d=case.d, keys=keys)
    weights = torch.linspace(-1.0, 1.0, w.shape[-1], dtype=w.dtype)
    grads = torch.autograd.grad((w * weights).sum(), [mu, L, w_prev])
    return w.detach(), grads, info


def _perturbed(case, scale: float, seed: int):
    g = torch.Generator().manual_seed(seed)
    mu = case.mu * (1 + scale * torch.randn(case.mu.shape, generator=g, dtype=case.mu.dtype))
    L = case.L * (1 + scale * torch.randn(case.L.shape, generator=g, dtype=case.L.dtype))
    return mu, L


def _assert_same(a, b) -> None:
    (wa, ga, _), (wb, gb, _) = a, b
    torch.testing.assert_close(wa, wb, atol=1e-10, rtol=0)
    for x, y in zip(ga, gb, strict=True):
        torch.testing.assert_close(x, y, atol=1e-8, rtol=1e-7)


@pytest.mark.parametrize(
    ("horizon", "factor", "w_max"), [(1, "full", 0.3), (2, "full", None), (2, "lowrank_diag", 0.3)]
)
def test_warm_solves_equal_cold_solves(qp_case, horizon, factor, w_max):
    case = qp_case(seed=7 + horizon, batch=12, n=10, horizon=horizon, factor=factor,
                   w_max=w_max, turnover="tight")  # fmt: skip
    cold, warm = make_backend("fast"), make_backend("fast", warm_start=True)
    keys = torch.arange(100, 112)
    first = _solve(warm, case, case.mu, case.L, case.w_prev, keys)
    assert not bool(first[2].warm.any())  # nothing cached yet: every sample solved cold
    assert len(warm.cache(case.spec)) == 12
    for scale in (0.0, 1e-3, 3e-2):
        mu, L = _perturbed(case, scale, seed=int(scale * 1e4))
        got = _solve(warm, case, mu, L, case.w_prev, keys)
        _assert_same(got, _solve(cold, case, mu, L, case.w_prev))
        info = got[2]
        assert bool(info.polished.all()) and bool(info.converged.all())
        assert bool((info.iterations[info.warm] == 0).all())
        if scale == 0.0:
            assert bool(info.warm.all())  # the same problem: its own active set is right
    ref = reference_solve(case.spec, mu, L, case.w_prev, case.delta, d=case.d)
    np.testing.assert_allclose(got[0].numpy(), ref, atol=1e-6, rtol=0)


def test_a_wrong_cache_falls_back_to_the_interior_point(qp_case):
    """Active sets cached from other problems (mu negated, other w_prev) are judged by the
    KKT check; the samples that fail it are solved cold, and the result is unchanged."""
    case = qp_case(seed=21, batch=10, n=9, horizon=2, w_max=0.3, turnover="tight")
    other = qp_case(seed=22, batch=10, n=9, horizon=2, w_max=0.3, turnover="tight")
    warm = make_backend("fast", warm_start=True)
    keys = torch.arange(10)
    with torch.no_grad():
        warm(other.spec, -other.mu, other.L, other.w_prev, None, keys=keys)
    cache = warm.cache(case.spec)
    cache.hits = cache.misses = 0
    got = _solve(warm, case, case.mu, case.L, case.w_prev, keys)
    assert cache.misses > 0 and not bool(got[2].warm.all())
    _assert_same(got, _solve(make_backend("fast"), case, case.mu, case.L, case.w_prev))
    # the failed entries were replaced by the accepted active sets of this solve
    again = _solve(warm, case, case.mu, case.L, case.w_prev, keys)
    assert bool(again[2].warm.all())


def test_mixed_batches_and_keys(qp_case):
    """Known and unknown keys in one batch; a call without keys is solved cold."""
    case = qp_case(seed=31, batch=8, n=8, horizon=1, w_max=0.4, turnover="tight")
    warm, cold = make_backend("fast", warm_start=True), make_backend("fast")
    with torch.no_grad():
        warm(case.spec, case.mu[:4], case.L[:4], case.w_prev[:4], case.delta[:4],
             keys=torch.tensor([3, 1, 7, 5]))  # fmt: skip
    keys = torch.tensor([3, 1, 7, 5, 0, 2, 4, 6])
    got = _solve(warm, case, case.mu, case.L, case.w_prev, keys)
    assert got[2].warm.tolist() == [True] * 4 + [False] * 4
    assert torch.isnan(got[2].gap[:4]).all() and torch.isfinite(got[2].gap[4:]).all()
    _assert_same(got, _solve(cold, case, case.mu, case.L, case.w_prev))
    no_keys = _solve(warm, case, case.mu, case.L, case.w_prev)
    assert no_keys[2].warm is None  # no keys: no warm start tried


def test_cache_tables():
    cache = ActiveSetCache()
    assert np.isnan(cache.hit_rate) and len(cache) == 0
    spec_keys = torch.tensor([5, 0])
    assert not bool(cache.known(spec_keys).any())
    with pytest.raises(KeyError, match="no entry"):
        cache.lookup(spec_keys)
    from mpo.learn.qp.active import ActiveSet

    B, H, n = 2, 2, 3
    act = ActiveSet(
        lower=torch.tensor([[[1, 0, 0], [0, 0, 1]], [[0, 1, 0], [0, 0, 0]]], dtype=torch.bool),
        upper=torch.zeros(B, H, n, dtype=torch.bool),
        kink=torch.tensor([[[0, 1, 0], [0, 1, 0]], [[0, 0, 1], [1, 0, 0]]], dtype=torch.bool),
        sign=torch.tensor([[[1.0, 0, -1], [0, 0, 1]], [[-1, 1, 0], [0, 1, -1]]]),
        turnover=torch.tensor([True, False]),
    )
    cache.store(spec_keys, act, torch.tensor([True, False]))
    assert cache.known(torch.tensor([5, 0, 9])).tolist() == [True, False, False]
    got = cache.lookup(torch.tensor([5]))
    for name in ("lower", "upper", "kink", "sign", "turnover"):
        assert torch.equal(getattr(got, name), getattr(act, name)[:1].to(getattr(got, name).dtype))
    cache.store(torch.tensor([5]), act.select(torch.tensor([True, False])), torch.tensor([False]))
    assert len(cache) == 0  # a failed solve forgets the stale entry
    cache.store(torch.tensor([40]), act.select(torch.tensor([False, True])), torch.tensor([True]))
    assert len(cache) == 1 and bool(cache.known(torch.tensor([40])).all())  # table grew


def test_keys_are_validated(qp_case):
    case = qp_case(seed=41, batch=3, n=5)
    for bad, match in ((torch.tensor([0.0, 1.0, 2.0]), "integer"), (torch.tensor([0, 1]), r"\(3,\)"),
                       (torch.tensor([0, -1, 2]), ">= 0")):  # fmt: skip
        with pytest.raises(ValueError, match=match):
            validate_inputs(*case.args(), keys=bad)
    with pytest.raises(ValueError, match="warm_rounds"):
        make_backend("fast", warm_start=True, warm_rounds=-1)
    with pytest.raises(TypeError, match="warm_start"):
        make_backend("fast", warm_start="yes")
    with pytest.raises(SpecError, match="'fast' QP backend"):
        QPOptions(backend="cvxpylayers", warm_start=True)
    assert QPOptions(warm_start=True).backend_options() == {"warm_start": True}


def test_training_with_warm_starts_matches_cold_training():
    """One epoch through the training loop with [qp] warm_start and w_prev = "fixed":
    the same losses as without warm starts, and warm solves are counted."""
    from mpo.data.synthetic import make_synthetic
    from mpo.learn.config import TrainSpec
    from mpo.learn.dataset import chronological_split, make_dataset
    from mpo.learn.train import train_dmpo

    market = make_synthetic(n_assets=5, n_periods=260, seed=3, predictability=0.8)
    runs = {}
    for warm in (False, True):
        spec = TrainSpec().with_updates(
            features={"window": 5, "features": ["returns"]},
            encoder={"hidden": 4, "rank": 2, "factor": "lowrank_diag"},
            qp={"horizon": 1, "delta": 0.2, "w_max": 0.5, "warm_start": warm},
            train={
                "epochs": 2,
                "batch_size": 32,
                "lr": 1e-4,
                "w_prev": "fixed",
                "remedy": "none",
            },  # fmt: skip
        )
        ds = make_dataset(market, spec.feature_spec(), spec.cost_model().estimates)
        train, val, _ = chronological_split(ds, 0.2, 0.2, None)
        runs[warm] = train_dmpo(spec, ds, train, val, progress=False)
    cold, warm = (runs[k].fit.history for k in (False, True))
    for a, b in zip(cold, warm, strict=True):
        assert abs(a["loss"] - b["loss"]) <= 1e-9 and abs(a["val"] - b["val"]) <= 1e-9
    assert "warm" not in cold[-1] and warm[-1]["warm"] > 0.5  # tiny lr: the sets recur

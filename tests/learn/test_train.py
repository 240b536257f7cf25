"""DMPO training: feasibility, learning the planted component, reproducibility, resume,
starvation logging and its remedies, losses."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from _helpers import tiny_data, tiny_market, tiny_spec

from mpo.costs import CostModel
from mpo.data.synthetic import make_synthetic
from mpo.errors import SpecError
from mpo.learn.baselines import equal_weight_decider
from mpo.learn.config import parse_train_spec
from mpo.learn.dataset import Outcomes
from mpo.learn.fitting import beats, fit
from mpo.learn.train import (
    TrainingCosts,
    build_dmpo_model,
    dmpo_batch_loss,
    dmpo_decider,
    net_returns,
    run_sequential,
    sample_w_prev,
    sharpe_loss,
    train_dmpo,
    utility_loss,
)
from mpo.metrics import sharpe_ratio


def _state_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("remedy", ["none", "l1_penalty", "learned_delta", "curriculum"])
def test_every_training_and_inference_decision_is_feasible(remedy):
    spec = tiny_spec(qp={"delta": 0.1, "w_max": 0.3, "horizon": 2}, train={"remedy": remedy})
    ds, (train, val, test) = tiny_data(spec)
    res = train_dmpo(spec, ds, train, val, progress=False)
    assert len(res.fit.history) == 2
    assert max(h["violation"] for h in res.fit.history) <= 1e-8
    ev = run_sequential("dmpo", dmpo_decider(res.model, ds, test), ds, test,
                        TrainingCosts.from_spec(spec), 0.3)  # fmt: skip
    assert ev.max_violation <= 1e-8
    assert ev.weights.min() >= -1e-8 and ev.weights.max() <= 0.3 + 1e-8
    assert ev.turnover.max() <= 0.1 + 1e-8


def test_dmpo_learns_the_planted_component():
    """Strong AR(1) style factors, zero drift: only a model that learned the predictable
    component beats equal weight and its own untrained (random-weights) encoder."""
    market = make_synthetic(
        n_assets=10, n_periods=1600, seed=1, predictability=0.8,
        market_vol=0.004, style_vol=0.01, mean_drift=0.0,
    )  # fmt: skip
    spec = tiny_spec(
        features={"window": 5, "features": ["returns"]},
        encoder={"hidden": 16, "rank": 3},
        costs={"half_spread": 2e-4, "impact": 0.0},
        split={"val": 0.15, "test": 0.25},
        train={"epochs": 4, "batch_size": 64, "max_batches": None, "lr": 1e-2, "patience": 8,
               "remedy": "l1_penalty"},
    )  # fmt: skip
    ds, (train, val, test) = tiny_data(spec, market)
    trained = train_dmpo(spec, ds, train, val, progress=False).model
    random = build_dmpo_model(trained.encoder_config, trained.qp_options, spec.train.seed)
    costs = TrainingCosts.from_spec(spec)
    sharpe = {
        name: run_sequential(name, dec, ds, test, costs, None).metrics()["sharpe"]
        for name, dec in [
            ("dmpo", dmpo_decider(trained, ds, test)),
            ("random", dmpo_decider(random, ds, test)),
            ("ew", equal_weight_decider(ds.n_assets, None, spec.qp.delta)),
        ]
    }
    assert sharpe["dmpo"] > sharpe["ew"] + 1.0, sharpe
    assert sharpe["dmpo"] > sharpe["random"] + 1.0, sharpe


def test_same_seed_same_weights_different_seed_different_weights():
    spec = tiny_spec(encoder={"dropout": 0.1, "layers": 2})
    ds, (train, val, _) = tiny_data(spec)
    a = train_dmpo(spec, ds, train, val, progress=False).model.state_dict()
    torch.manual_seed(12345)  # the caller's global RNG state must not matter
    b = train_dmpo(spec, ds, train, val, progress=False).model.state_dict()
    c = train_dmpo(spec.with_updates(train={"seed": 1}), ds, train, val, progress=False)
    assert _state_equal(a, b)
    assert not _state_equal(a, c.model.state_dict())


def test_ctrl_c_saves_a_state_that_resumes_to_the_same_weights():
    spec = tiny_spec(train={"epochs": 3, "patience": 10})
    ds, (train, val, _) = tiny_data(spec)
    full = train_dmpo(spec, ds, train, val, progress=False)
    saved = {}

    def interrupt(epoch, log):
        if epoch == 0:
            raise KeyboardInterrupt

    part = train_dmpo(spec, ds, train, val, progress=False, on_epoch_end=interrupt,
                      on_interrupt=saved.update)  # fmt: skip
    assert part.fit.interrupted and saved["epoch"] == 1 and len(saved["history"]) == 1
    resumed = train_dmpo(spec, ds, train, val, progress=False, resume=saved)
    assert not resumed.fit.interrupted and len(resumed.fit.history) == 3
    assert _state_equal(full.model.state_dict(), resumed.model.state_dict())
    assert [h["loss"] for h in full.fit.history] == [h["loss"] for h in resumed.fit.history]


def test_starvation_is_logged_and_the_l1_remedy_removes_it():
    spec = tiny_spec(qp={"delta": 0.05}, train={"remedy": "none", "w_prev": "equal"})
    ds, (train, val, _) = tiny_data(spec, tiny_market(n_periods=300, seed=3))
    hard = train_dmpo(spec, ds, train, val, progress=False).fit.history
    assert all(0 < h["starved"] <= h["binding"] <= 1 for h in hard)
    l1 = train_dmpo(spec.with_updates(train={"remedy": "l1_penalty"}), ds, train, val,
                    progress=False).fit.history  # fmt: skip
    assert all(h["starved"] == 0 and h["binding"] == 0 for h in l1)


def test_learned_delta_stays_below_the_hard_limit_and_gets_gradient():
    spec = tiny_spec(qp={"delta": 0.05}, train={"remedy": "learned_delta", "w_prev": "equal"})
    ds, (train, val, _) = tiny_data(spec)
    model = train_dmpo(spec, ds, train, val, progress=False).model
    assert model.delta_logit is not None
    assert float(model.delta_logit) != math.log(9.0)  # it moved: gradient flowed into delta
    w_prev = torch.full((3, 5), 0.2, dtype=torch.float64)
    assert bool((model.inference_delta(w_prev) <= 0.05).all())


def test_net_returns_and_losses_match_their_formulas():
    rng = np.random.default_rng(0)
    B, H, n = 6, 2, 4
    w = torch.tensor(rng.dirichlet(np.ones(n), (B, H)))
    w_prev = torch.tensor(rng.dirichlet(np.ones(n), B))
    y = torch.tensor(rng.normal(0, 0.01, (B, H, n)))
    cash = torch.tensor(rng.uniform(0, 1e-3, (B, H)))
    sigma = torch.tensor(rng.uniform(0.005, 0.02, (B, H, n)))
    volume = torch.tensor(rng.uniform(1e7, 1e8, (B, H, n)))
    out = Outcomes(y, cash, sigma, volume)
    costs = TrainingCosts(CostModel(half_spread=1e-3, impact=0.5), value=1e7)
    r = net_returns(w, w_prev, out, costs).numpy()
    z = (w[:, 0] - w_prev).numpy()

    def cost(z, k, b=0.5, value=1e7):
        value = np.reshape(value, (-1, 1))
        coef = b * sigma[:, k].numpy() / np.sqrt(volume[:, k].numpy() / value)
        return 1e-3 * np.abs(z).sum(-1) + (coef * np.abs(z) ** 1.5).sum(-1)

    gross = (w[:, 0] * y[:, 0]).sum(-1).numpy()
    expect = gross - cost(z, 0) * (1 + cash[:, 0].numpy())
    np.testing.assert_allclose(r, expect, rtol=1e-12)
    # a value per sample (the simulator's value path)
    values = torch.tensor(rng.uniform(1e6, 1e8, B))
    rv = net_returns(w, w_prev, out, costs, value=values).numpy()
    expect_v = gross - cost(z, 0, value=values.numpy()) * (1 + cash[:, 0].numpy())
    np.testing.assert_allclose(rv, expect_v, rtol=1e-12)
    # the plan: each step charged at its own period's sigma, V and cash return
    rp = net_returns(w, w_prev, out, costs, steps="plan").numpy()
    z2 = (w[:, 1] - w[:, 0]).numpy()
    step2 = (w[:, 1] * y[:, 1]).sum(-1).numpy() - cost(z2, 1) * (1 + cash[:, 1].numpy())
    np.testing.assert_allclose(rp, (expect + step2) / 2, rtol=1e-12)
    rt = torch.tensor(expect)
    np.testing.assert_allclose(
        float(utility_loss(rt, 5.0)), -(expect.mean() - 2.5 * expect.var(ddof=1)) * 252
    )


def test_sharpe_loss_is_minus_the_reports_sharpe_ratio():
    """One convention: ``mpo.metrics.sharpe_ratio`` (ddof=1, sqrt(252)) in loss and reports."""
    for seed in range(3):
        r = torch.tensor(np.random.default_rng(seed).normal(3e-4, 0.01, 200))
        np.testing.assert_allclose(
            -float(sharpe_loss(r)), sharpe_ratio(r.numpy(), 252), rtol=0, atol=1e-12
        )


def test_nan_validation_ranks_below_every_score_and_is_logged(caplog):
    """A flat validation series has no Sharpe ratio (NaN): never the best epoch."""
    assert np.isnan(sharpe_ratio(np.zeros(10), 252))
    assert beats(-5.0, float("nan")) and not beats(float("nan"), -5.0)
    assert not beats(float("nan"), float("nan")) and beats(1.0, 0.5)
    model = torch.nn.Linear(2, 1).double()
    x = torch.randn(16, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    scores = iter([float("nan"), -3.0, float("nan"), -4.0])

    def batch_loss(pos, epoch, gen):
        return model(x[pos]).pow(2).mean(), {"n": len(pos)}

    spec = tiny_spec(train={"epochs": 4, "patience": 10, "max_batches": None})
    with caplog.at_level("WARNING", logger="mpo.learn.fitting"):
        res = fit(model, batch_loss, lambda: next(scores), np.arange(16), spec.train,
                  progress=False)  # fmt: skip
    assert res.best_epoch == 1 and res.best_val == -3.0
    assert sum("validation score is NaN" in m for m in caplog.messages) == 2


def test_random_w_prev_respects_the_cap_and_the_generator():
    g = torch.Generator().manual_seed(0)
    w = sample_w_prev("random", 200, 6, 0.3, 0.9, g)
    assert float((w.sum(-1) - 1).abs().max()) < 1e-12 and float(w.max()) <= 0.3 + 1e-12
    w2 = sample_w_prev("random", 200, 6, 0.3, 0.9, torch.Generator().manual_seed(0))
    assert torch.equal(w, w2)


def test_cvxpylayers_backend_gives_the_fast_solvers_training_gradient():
    spec = tiny_spec(train={"remedy": "none"}, qp={"backend": "cvxpylayers"},
                     encoder={"factor": "lowrank"})  # fmt: skip
    ds, (train, _, _) = tiny_data(spec)
    grads = {}
    for backend in ("cvxpylayers", "fast"):
        sp = spec.with_updates(qp={"backend": backend})
        model = build_dmpo_model(sp.encoder_config(5), sp.qp_options(), seed=0)
        loss, _ = dmpo_batch_loss(model, ds, sp)(train.positions[:8], 0,
                                                 torch.Generator().manual_seed(0))  # fmt: skip
        loss.backward()
        grads[backend] = torch.cat([p.grad.flatten() for p in model.parameters()])
    # degenerate active sets (kinks) make the two backends pick different elements of the
    # generalised gradient on some samples, so compare directions, not entries
    a, b = grads["cvxpylayers"], grads["fast"]
    cosine = float(a @ b / (a.norm() * b.norm()))
    assert cosine > 0.9, cosine


def test_qp_gamma_defaults_to_the_l1_cost_rate_and_kappa_is_its_old_name():
    spec = tiny_spec(costs={"half_spread": 7e-4})
    assert spec.qp_options().gamma == 7e-4
    assert spec.with_updates(qp={"gamma": 0.0}).qp_options().gamma == 0.0
    old = parse_train_spec({"costs": {"kappa": 7e-4}})  # as older specs wrote it
    assert old.costs.half_spread == 7e-4 and old.qp_options().gamma == 7e-4
    assert old.costs == parse_train_spec({"costs": {"half_spread": 7e-4}}).costs


def test_training_costs_are_the_policy_cost_model():
    """[costs] of a training spec is a policy spec's, plus the value impact is charged at."""
    from mpo.config import CostsSpec

    spec = tiny_spec(costs={"half_spread": 3e-4, "impact": 0.7, "sigma_span": 5, "value": 1e7})
    policy = CostsSpec(half_spread=3e-4, impact=0.7, sigma_span=5)
    costs = TrainingCosts.from_spec(spec)
    assert repr(costs.model) == repr(CostModel.from_spec(policy)) and costs.value == 1e7
    assert costs.model.estimates == policy.estimates()
    with pytest.raises(SpecError, match="'holding' has no training formula"):
        tiny_spec(costs={"short_fee": 1.0})
    with pytest.raises(SpecError, match="kappa is the old name of costs.half_spread"):
        tiny_spec(costs={"kappa": 1e-3, "half_spread": 1e-3})

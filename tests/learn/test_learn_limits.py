"""Participation limits and liquidity screens in the learned QP (training and evaluation)."""

from __future__ import annotations

import json
from pathlib import Path

import _helpers
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from mpo.costs.estimates import CostEstimates
from mpo.learn.cost_inputs import planner_volumes
from mpo.learn.dataset import chronological_split, make_dataset
from mpo.learn.evaluation import batched_sharpe, dmpo_decider, run_sequential
from mpo.learn.limits import BoxLimits, trade_box
from mpo.learn.train import TrainingCosts, train_dmpo

D = torch.float64


def test_trade_box_rules():
    w_prev = torch.tensor([[0.40, 0.30, 0.20, 0.10, 0.00]], dtype=D)
    adv = torch.tensor([[1e6, 2e6, 1e6, 5e4, 1e6]], dtype=D)
    limits = BoxLimits(participation=0.05, min_adv=1e5)
    lower, upper, relaxed = trade_box(limits, w_prev, adv, value=1e6, horizon=2, w_max=0.35)
    c = 0.05 * adv[0] / 1e6  # 0.05, 0.1, 0.05, 0.0025, 0.05
    np.testing.assert_allclose(lower[0, 0], (w_prev[0] - c).clamp(min=0))
    # name 0 sits above the cap it cannot reach in one trade: sells as fast as allowed
    assert float(upper[0, 0, 0]) == pytest.approx(0.35)
    assert float(upper[0, 0, 1]) == pytest.approx(0.35)  # the cap binds before w_prev + c
    assert float(upper[0, 0, 3]) == pytest.approx(0.10)  # illiquid: may only shrink
    assert float(upper[0, 1, 3]) == pytest.approx(0.10) and float(lower[0, 1, 3]) == 0.0
    assert float(upper[0, 1, 1]) == pytest.approx(0.35)  # later periods: only the cap
    assert not bool(relaxed.any())
    none = trade_box(BoxLimits(), w_prev, adv, 1e6, 2, 0.35)
    assert none[0] is None and none[1] is None
    # all the weight in names that may only shrink, the rest capped: no feasible box
    stuck = torch.tensor([[0.5, 0.5, 0.0, 0.0]], dtype=D)
    _, up, relaxed = trade_box(BoxLimits(min_adv=1e9), stuck, torch.full((1, 4), 1e6, dtype=D),
                               1e6, 1, 0.3)  # fmt: skip
    assert bool(relaxed.all()) and float(up.min()) == pytest.approx(0.3)


def test_planner_volumes_are_strictly_past():
    market = _helpers.tiny_market(n_periods=120)
    est = CostEstimates()
    dates = market.calendar[40:60]
    adv = planner_volumes(market, dates, est)
    i = market.calendar.get_loc(dates[5])
    direct = est.planner_volume(dates[5], market.dollar_volumes.iloc[:i], market.tickers)
    np.testing.assert_allclose(adv[5], direct, rtol=1e-14)
    # the volumes of t and later do not move the estimate at t
    from dataclasses import replace

    changed = market.volumes.copy()
    changed.iloc[i:] *= 7.0
    market2 = replace(market, volumes=changed)
    adv2 = planner_volumes(market2, dates, est)
    np.testing.assert_array_equal(adv2[:6], adv[:6])
    assert not np.allclose(adv2[6:], adv[6:])


def _limited(participation=2e-4, min_adv=None, seed=0):
    # synthetic dollar volumes ~1e8 per name at value 1e6: c = p * V / v ~ 0.02 per name
    spec = _helpers.tiny_spec(
        qp={"delta": 0.3, "w_max": 0.5, "participation": participation, "min_adv": min_adv},
        train={"seed": seed},
    )
    market = _helpers.tiny_market(n_periods=300, predictability=0.5)
    ds = make_dataset(market, spec.feature_spec(), spec.cost_model().estimates, adv=True)
    s = spec.split
    return spec, ds, chronological_split(ds, s.val, s.test, s.purge)


def test_training_and_evaluation_respect_the_box():
    spec, ds, (train, val, test) = _limited(participation=2e-4, min_adv=1.1e8)
    assert spec.has_limits and ds.adv is not None
    tr = train_dmpo(spec, ds, train, val, progress=False)
    assert tr.model.qp_options.participation == 2e-4  # recorded in the checkpoint's options
    costs = TrainingCosts.from_spec(spec)
    ev = run_sequential("dmpo", dmpo_decider(tr.model, ds, test, value=costs.value), ds, test,
                        costs, spec.qp.w_max)  # fmt: skip
    n = ds.n_assets
    w_prev = torch.full((n,), 1.0 / n, dtype=D)
    illiquid_seen = 0
    for k, pos in enumerate(test.positions):
        w = torch.tensor(ev.weights[k])
        adv = ds.adv[pos]
        c = 2e-4 * adv / costs.value
        assert bool(((w - w_prev).abs() <= c + 1e-8).all()), k
        illiquid = adv < 1.1e8
        illiquid_seen += int(illiquid.sum())
        assert bool((w[illiquid] <= w_prev[illiquid] + 1e-8).all()), k
        y = ds.returns[pos]
        w_prev = w * (1 + y) / (1 + float(w @ y))
    assert illiquid_seen > 0
    assert np.isfinite(batched_sharpe(tr.model, ds, val, costs))
    # the limits change the decisions: the same model without them trades more
    free = type(tr.model.qp_options)(**{**tr.model.qp_options.to_dict(), "participation": None,
                                        "min_adv": None})  # fmt: skip
    tr.model.qp_options = free
    ev_free = run_sequential("free", dmpo_decider(tr.model, ds, test), ds, test, costs,
                             spec.qp.w_max)  # fmt: skip
    assert ev_free.turnover.max() > ev.turnover.max() + 0.1  # 0.30 vs 0.10 on this seed


def test_limits_need_the_datasets_adv():
    spec, _, _ = _limited()
    market = _helpers.tiny_market(n_periods=300)
    ds = make_dataset(market, spec.feature_spec(), spec.cost_model().estimates)
    train, val, _ = chronological_split(ds, 0.2, 0.2, None)
    with pytest.raises(Exception, match="adv=True"):
        train_dmpo(spec, ds, train, val, progress=False)


def test_mpo_train_with_limits(tmp_path: Path):
    """``mpo train`` with ``[qp] participation`` and ``min_adv`` runs every model under the
    box and records the limits in the results and the checkpoint."""
    from test_train_cli import SPEC, _app

    limited = SPEC.replace("[qp]\n", "[qp]\nparticipation = 0.0002\nmin_adv = 100000000.0\n")
    assert limited != SPEC
    spec = tmp_path / "limited.toml"
    spec.write_text(limited)
    out = tmp_path / "run"
    result = CliRunner().invoke(_app(), ["train", str(spec), "--out", str(out), "--no-progress"],
                                catch_exceptions=False)  # fmt: skip
    assert result.exit_code == 0, result.output
    (run_dir,) = out.iterdir()
    results = json.loads((run_dir / "results.json").read_text())
    assert results["spec"]["qp"]["participation"] == 0.0002
    from mpo.learn.checkpoint import load_checkpoint

    ck = load_checkpoint(run_dir / "dmpo.pt")
    assert ck.qp_config["participation"] == 0.0002 and ck.qp_config["min_adv"] == 1e8


def test_baseline_deciders_respect_the_box():
    from mpo.learn.baselines import equal_weight_decider

    n = 4
    w_prev = torch.tensor([0.55, 0.25, 0.15, 0.05], dtype=D)
    lower = (w_prev - 0.05).clamp(min=0)[None, None]
    upper = torch.minimum(w_prev + 0.05, torch.full((n,), 0.6, dtype=D))[None, None]
    decide = equal_weight_decider(n, 0.6, 0.3, box=lambda k, wp: (lower, upper))
    w, _, _ = decide(0, w_prev)
    assert float((w - w_prev).abs().max()) <= 0.05 + 1e-9 and abs(float(w.sum()) - 1) < 1e-9
    # the Euclidean projection of 1/4 onto box and budget: w = clip(1/4 + l, lower, upper)
    # with sum 1, i.e. l = -0.05: [0.5, 0.2, 0.2, 0.1] (turnover 0.2, inside the limit)
    np.testing.assert_allclose(w.numpy(), [0.50, 0.20, 0.20, 0.10], atol=1e-7)

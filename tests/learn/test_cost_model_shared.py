"""One cost model: the training loss charges what cvxportfolio's simulator charges (issue 13).

A fixed weight path (long-only, fully invested, changing every period) runs through
``mpo.backtest.run_backtests`` (cvxportfolio's ``MarketSimulator`` with mpo's cost
terms: half spread and 1.5-power impact at the realised sigma and volume) and through
the training loss (``net_returns`` on the dataset's cost inputs, at the simulator's
portfolio value and pre-trade weights): the per-period net returns agree to 1e-10.
"""

from __future__ import annotations

import _helpers  # noqa: F401  (one torch thread)
import cvxportfolio as cvx
import numpy as np
import pandas as pd
import pytest
import torch

from mpo.backtest import run_backtests
from mpo.config import parse_spec
from mpo.learn.config import parse_train_spec
from mpo.learn.dataset import FeatureSpec, Outcomes, compute_features, make_dataset
from mpo.learn.losses import TrainingCosts, net_returns
from mpo.policies import UserPolicy

COSTS = {"half_spread": 5e-4, "impact": 1.0}
FEATURES = FeatureSpec(window=5, horizon=1, features=("returns", "volatility"))


def _weights(market, dates: pd.DatetimeIndex, seed: int = 0) -> pd.DataFrame:
    """Long-only, fully invested target weights, a new draw every period (cash 0)."""
    rng = np.random.default_rng(seed)
    w = rng.dirichlet(np.full(market.n_assets, 2.0), size=len(dates))
    frame = pd.DataFrame(w, index=dates, columns=market.tickers)
    frame[market.cash_key] = 0.0
    return frame


@pytest.fixture(scope="module", params=["realized", "estimates"])
def simulated(request, market):
    """The backtest of the fixed path and the dataset of a training spec with its costs."""
    costs = {**COSTS, "simulator": request.param}
    # the user policy shares the costs of the run's specs (here: Hold's)
    hold = parse_spec({"name": "hold", "kind": "hold", "costs": costs})
    cal = market.calendar
    start, end = cal[60], cal[120]
    target = _weights(market, cal[(cal >= start) & (cal <= end)])
    user = UserPolicy("fixed", policy=cvx.FixedWeights(target))
    run = run_backtests([hold, user], market, start=start, end=end, progress=False)
    res = run.results["fixed"]
    assert res.spec.costs == hold.costs
    train_spec = parse_train_spec({"costs": costs})
    ds = make_dataset(market, FEATURES, train_spec.cost_model().estimates)
    return request.param, market, res, ds, TrainingCosts.from_spec(train_spec)


def test_training_loss_charges_what_the_simulator_charges(simulated):
    mode, market, res, ds, costs = simulated
    dates = res.returns.index
    assert len(dates) > 50
    pos = ds.dates.get_indexer(dates)
    assert (pos >= 0).all()
    t64 = lambda x: torch.tensor(np.asarray(x, dtype=float))  # noqa: E731
    w_plus = res.weights.to_numpy()
    np.testing.assert_allclose(w_plus[:, -1], 0.0, atol=1e-12)  # fully invested
    w = t64(w_plus[:, :-1])
    w_prev = w - t64(res.trades.to_numpy()[:, :-1])  # pre-trade weights (cash: the rest)
    value = t64(res.value.loc[dates])
    p = torch.as_tensor(pos)
    out = Outcomes(
        ds.returns[p][:, None], ds.cash[p][:, None], ds.sigma[p][:, None], ds.volume[p][:, None]
    )
    got = net_returns(w[:, None], w_prev, out, costs, value=value).numpy()
    simulated_net = res.returns.to_numpy()
    # the costs are material: a loss without them would be far off
    gross = (w * out.returns[:, 0]).sum(-1).numpy()
    assert np.abs(gross - simulated_net).min() > 1e-6, mode
    assert res.costs["impact"].sum() > 0 and res.costs["spread"].sum() > 0
    np.testing.assert_allclose(got, simulated_net, rtol=0, atol=1e-10, err_msg=mode)
    # the same per-term dollar costs, term by term
    z = w - w_prev
    for term in costs.model.active():
        c = term.training_cost(z, sigma=out.sigma[:, 0], volume=out.volume[:, 0], value=value)
        np.testing.assert_allclose(
            (c * value).numpy(), res.costs[term.name].to_numpy(), rtol=1e-10, err_msg=term.name
        )


def test_dataset_cost_inputs_are_the_simulators(simulated):
    """Row t of the dataset's sigma/volume is CostEstimates.simulator_* at t, with the data
    cvxportfolio serves at t."""
    _, market, res, ds, costs = simulated
    est = costs.model.estimates
    served = market.to_cvxportfolio()
    for t in res.returns.index[::7]:
        past_r, now_r, past_v, now_v = served.serve(t)[:4]
        sigma = est.simulator_sigma(t, past_r, now_r)
        volume = est.simulator_volume(t, past_v, now_v, past_r.columns[:-1])
        k = ds.dates.get_loc(t)
        np.testing.assert_allclose(ds.sigma[k].numpy(), sigma, rtol=1e-12, atol=0)
        np.testing.assert_allclose(ds.volume[k].numpy(), volume, rtol=1e-12, atol=0)


def test_realised_sigma_scores_the_outcome_but_never_reaches_a_feature(market):
    """The realised sigma of period t includes r_t; no feature row <= t does."""
    ds = make_dataset(market, FEATURES)
    t = ds.dates[150]
    bumped = market.returns.copy()
    bumped.loc[t] = bumped.loc[t] + 0.05
    other = type(market)(
        returns=bumped, cash_return=market.cash_return, volumes=market.volumes, name="bumped"
    )
    a, b = compute_features(market, FEATURES), compute_features(other, FEATURES)
    upto = a.dates <= t
    np.testing.assert_array_equal(a.values[upto], b.values[upto])
    ds_b = make_dataset(other, FEATURES)
    k = ds.dates.get_loc(t)
    assert torch.equal(ds.sigma[:k], ds_b.sigma[:k])
    assert bool((ds.sigma[k] != ds_b.sigma[k]).all())  # the loss sees the period itself

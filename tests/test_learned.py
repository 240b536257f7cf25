"""Learned views in cvxportfolio: DMPO-QP and DMPO-MPO policies from a checkpoint."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch
from spec_helpers import spec_dict

from mpo.backtest import run_backtests
from mpo.config import parse_spec
from mpo.errors import CheckpointError, DataError, SpecError
from mpo.forecast.learned import LearnedCovariance, LearnedReturnsForecast, LearnedViews
from mpo.learn.checkpoint import Checkpoint, save_checkpoint
from mpo.learn.dataset import FeatureSpec, compute_features, window_at
from mpo.learn.encoders import EncoderConfig
from mpo.learn.qp import solve_qp
from mpo.learn.qp.spec import min_turnover
from mpo.learn.train import build_dmpo_model

FEATURES = FeatureSpec(window=10, horizon=2, features=("returns", "volatility"))
QP = {
    "risk_aversion": 1.0,
    "gamma": 1e-3,
    "eps": 1e-6,
    "w_max": 0.4,
    "delta": 0.3,
    "learned_delta": False,
    "backend": "fast",
}
START = "2017-06-01"


def _encoder(n: int) -> EncoderConfig:
    return EncoderConfig(
        kind="lstm", n_assets=n, n_features=2, window=10, horizon=2, hidden=8,
        factor="lowrank_diag", rank=2, mu_scale=5e-3,
    )  # fmt: skip


def _write(path, tickers, state=None, seed=0):
    model = build_dmpo_model(_encoder(len(tickers)), QP, seed)
    ckpt = Checkpoint(
        kind="dmpo",
        state_dict=state if state is not None else model.state_dict(),
        encoder_config=_encoder(len(tickers)).to_dict(),
        feature_config=FEATURES.to_dict(),
        qp_config=dict(QP),
        tickers=list(tickers),
        train_window=["2017-01-03", "2017-05-31"],
        fingerprint="test",
        seed=seed,
    )
    return save_checkpoint(ckpt, path)


@pytest.fixture(scope="module")
def checkpoint(market, tmp_path_factory):
    return _write(tmp_path_factory.mktemp("ckpt") / "dmpo.pt", market.tickers)


def _spec(kind, checkpoint, **kw):
    sections = {"learned": {"checkpoint": str(checkpoint)}, "objective": {"planning_horizon": 2}}
    sections.update(kw)
    return parse_spec(spec_dict(kind, **sections))


def test_window_at_equals_the_training_panel(market):
    panel = compute_features(market, FEATURES)
    for t in (market.calendar[40], market.calendar[200], market.calendar[-2]):
        pos = panel.dates.get_loc(t)
        expected = panel.values[pos - FEATURES.window + 1 : pos + 1]
        past = market.returns.loc[market.calendar < t]
        got = window_at(t, past, market.dollar_volumes.loc[past.index], FEATURES)
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)


def test_window_at_on_a_long_history_equals_the_full_panel(sp_prices):
    """window_at keeps only the recent past (EWM weights beyond 40 spans are ~1e-35): on 3000
    periods it still equals the panel computed on the whole history."""
    from spec_helpers import make_market

    long = make_market(sp_prices.loc["2010-01-01":, ["AAPL", "KO", "XOM", "JPM"]], cash=1e-4)
    spec = FeatureSpec(window=20, horizon=1, features=("returns", "volatility", "momentum",
                                                       "volume"))  # fmt: skip
    panel = compute_features(long, spec)
    for t in (long.calendar[1000], long.calendar[-2]):
        pos = panel.dates.get_loc(t)
        past = long.returns.loc[long.calendar < t]
        got = window_at(t, past, long.dollar_volumes.loc[past.index], spec)
        expected = panel.values[pos - spec.window + 1 : pos + 1]
        np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)


def test_dmpo_qp_decisions_equal_the_qp_layer_and_are_feasible(market, checkpoint):
    spec = _spec("dmpo_qp", checkpoint)
    run = run_backtests([spec], market, start=START, progress=False)
    r = run.results["dmpo_qp"]
    tickers = market.tickers
    views = LearnedViews(checkpoint)
    qp = views.model.qp_spec
    checked = 0
    for t in r.weights.index[::7]:
        w_plus = r.weights.loc[t, tickers].to_numpy()
        w_prev = w_plus - r.trades.loc[t, tickers].to_numpy()
        past = market.returns.loc[market.calendar < t]
        X = window_at(t, past, market.dollar_volumes.loc[past.index], FEATURES)
        with torch.no_grad():
            v = views.model.views(torch.as_tensor(X)[None])
        wp = torch.as_tensor(w_prev)[None]
        delta = torch.maximum(torch.tensor([QP["delta"]]), min_turnover(wp, QP["w_max"]) + 1e-12)
        w = solve_qp(qp, v.mu, v.L, wp, delta, d=v.d)[0, 0].numpy()
        np.testing.assert_allclose(w_plus, w, atol=1e-6)
        assert abs(w_plus.sum() - 1) <= 1e-8 and w_plus.min() >= -1e-8
        assert w_plus.max() <= QP["w_max"] + 1e-8
        assert np.abs(w_plus - w_prev).sum() <= float(delta[0]) + 1e-8
        checked += 1
    assert checked >= 10
    assert r.turnover.sum() > 0 and r.costs["spread"].sum() > 0  # it trades and pays for it


def test_learned_outputs_are_aligned_by_ticker_name(market, checkpoint):
    views = LearnedViews(checkpoint)
    t = market.calendar[100]
    past = market.returns_with_cash().loc[market.calendar < t]
    vols = market.dollar_volumes.loc[past.index]
    shuffled = past[[*market.tickers[::-1], market.cash_key]]
    mu = LearnedReturnsForecast(views).values_in_time(t, past, vols, mpo_step=1)
    mu_shuffled = LearnedReturnsForecast(views).values_in_time(
        t, shuffled, vols[market.tickers[::-1]], mpo_step=1
    )
    pd.testing.assert_series_equal(mu, mu_shuffled)
    assert list(mu.index) == market.tickers
    sigma = LearnedCovariance(views).values_in_time(t, shuffled, vols)
    assert list(sigma.index) == list(sigma.columns) == market.tickers
    assert np.linalg.eigvalsh(sigma.to_numpy()).min() > 0


def test_dmpo_mpo_runs_in_cvxportfolio_with_the_real_costs(market, checkpoint):
    spec = _spec("dmpo_mpo", checkpoint)
    run = run_backtests([spec], market, start=START, progress=False)
    r = run.results["dmpo_mpo"]
    assert r.weights[market.tickers].min().min() >= -1e-6
    assert r.turnover.sum() > 0
    assert "sharpe_vs_hold" in run.table().columns


@pytest.mark.parametrize("kind", ["dmpo_qp", "dmpo_mpo"])
def test_learned_policies_never_see_the_future(market, checkpoint, kind):
    spec = _spec(kind, checkpoint)
    cut = market.calendar[250]
    rng = np.random.default_rng(0)
    future = market.calendar >= cut
    returns = market.returns.copy()
    returns.loc[future] = rng.normal(0, 0.03, size=(future.sum(), returns.shape[1]))
    volumes = market.volumes.copy()
    volumes.loc[future] *= 5.0
    perturbed = replace(market, returns=returns, volumes=volumes)
    a = run_backtests([spec], market, start=START, progress=False).results[kind].weights
    b = run_backtests([spec], perturbed, start=START, progress=False).results[kind].weights
    before = a.index <= cut
    pd.testing.assert_frame_equal(a.loc[before], b.loc[before], check_exact=True)
    assert not np.allclose(a.loc[~before].to_numpy(), b.loc[~before].to_numpy())


def test_bad_learned_inputs(market, checkpoint, tmp_path):
    with pytest.raises(SpecError, match=r"needs \[learned\] checkpoint"):
        parse_spec(spec_dict("dmpo_qp"))
    missing = _spec("dmpo_qp", tmp_path / "nope.pt")
    with pytest.raises(CheckpointError, match="does not exist"):
        run_backtests([missing], market, start=START, progress=False)
    other = _write(tmp_path / "other.pt", [*market.tickers[:-1], "ZZZ"])
    with pytest.raises(CheckpointError, match=r"only in the checkpoint \['ZZZ'\]"):
        run_backtests([_spec("dmpo_qp", other)], market, start=START, progress=False)
    long = _spec("dmpo_mpo", checkpoint, objective={"planning_horizon": 3})
    with pytest.raises(SpecError, match="plans 3 steps but the encoder .* predicts 2"):
        run_backtests([long], market, start=START, progress=False)
    state = build_dmpo_model(_encoder(len(market.tickers)), QP, 0).state_dict()
    key = next(k for k in state if "mu" in k and k.endswith("bias"))
    state[key] = state[key].clone()
    state[key][3] = float("nan")
    broken = _write(tmp_path / "nan.pt", market.tickers, state=state)
    with pytest.raises(DataError, match=f"non-finite mu_hat for ticker '{market.tickers[3]}'"):
        run_backtests([_spec("dmpo_mpo", broken)], market, start=START, progress=False)


def test_dmpo_mpo_multipliers_are_tuned_like_mpo(market, checkpoint, tmp_path):
    import optuna

    from mpo.errors import TuningError
    from mpo.tuning import tune

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    spec = _spec("dmpo_mpo", checkpoint, tuning={"trials": 2, "prune": False})
    res = tune(
        spec,
        market,
        train=("2017-04-13", "2017-08-31"),
        test=("2017-12-14", "2018-06-21"),
        storage=str(tmp_path / "s.journal"),
        progress=False,
    )
    assert (res.trials["state"] == "COMPLETE").sum() == 2
    assert list(res.table().index) == ["hold", "equal_weight", "dmpo_mpo-untuned", "dmpo_mpo-tuned"]
    with pytest.raises(TuningError, match="tunes delta.*also names"):
        tune(_spec("dmpo_qp", checkpoint), market, storage=str(tmp_path / "s.journal"))


def test_cli_backtest_of_a_learned_spec(market, checkpoint, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from mpo.cli import app

    path = tmp_path / "dmpo_qp.toml"
    path.write_text(
        f"""
name = "dmpo_qp"
kind = "dmpo_qp"
[data]
source = "sp20"
tickers = {market.tickers!r}
adv = 1e8
start = "2017-01-01"
end = "2017-12-29"
[backtest]
start = "2017-10-02"
[learned]
checkpoint = {str(checkpoint)!r}
"""
    )
    result = CliRunner().invoke(
        app, ["backtest", str(path), "--no-progress", "--no-report", "--out", str(tmp_path)]
    )
    assert result.exit_code == 0, result.output
    assert "\ndmpo_qp " in result.output


def test_the_encoder_runs_once_per_period_for_every_mpo_step(market, checkpoint, monkeypatch):
    """H=2 MPO asks for mu_hat twice and Sigma_hat twice per period: one encoder call."""
    model = LearnedViews(checkpoint).model  # the instance every LearnedViews of it shares
    calls = []
    original = model.views
    monkeypatch.setattr(model, "views", lambda X: calls.append(1) or original(X))
    run = run_backtests([_spec("dmpo_mpo", checkpoint)], market, start="2018-03-01",
                        include_hold=False, progress=False)  # fmt: skip
    assert len(calls) == len(run.results["dmpo_mpo"].returns)


def test_dmpo_qp_turnover_limit_is_tuned(market, checkpoint, tmp_path):
    import optuna

    from mpo.errors import TuningError
    from mpo.tuning import tune

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    windows = {"train": ("2017-04-13", "2017-08-31"), "test": ("2017-12-14", "2018-06-21")}
    with pytest.raises(TuningError, match=r"tunes delta.*tuning.params.delta"):
        tune(_spec("dmpo_qp", checkpoint), market, storage=str(tmp_path / "a.journal"), **windows)
    spec = _spec(
        "dmpo_qp",
        checkpoint,
        tuning={"trials": 2, "prune": False,
                "params": {"delta": {"low": 0.05, "high": 1.0, "log": True}}},
    )  # fmt: skip
    res = tune(spec, market, storage=str(tmp_path / "b.journal"), progress=False, **windows)
    assert res.tuned_spec.learned.delta == res.best_params["delta"]
    # the tuned limit binds in the backtest: every decision's turnover is within it
    r = res.test.results["dmpo_qp-tuned"]
    w_prev = r.weights[market.tickers] - r.trades[market.tickers]
    traded = (r.weights[market.tickers] - w_prev).abs().sum(axis=1)
    assert (traded <= res.best_params["delta"] + 1e-8).all()
    with pytest.raises(SpecError, match="not tunable for kind='dmpo_mpo'"):
        _spec("dmpo_mpo", checkpoint, tuning={"params": {"delta": {"low": 0.1, "high": 1}}})


def test_dmpo_mpo_passes_a_low_rank_sigma_as_a_factor_model(market, checkpoint, monkeypatch):
    """L_hat as cvxportfolio factor exposures gives the dense Sigma_hat's decisions."""
    import cvxportfolio as cvx

    import mpo.forecast.learned as learned

    spec = _spec("dmpo_mpo", checkpoint)
    window = dict(start=START, end="2017-06-15", progress=False, include_hold=False)
    views = LearnedViews(checkpoint)
    assert isinstance(learned.learned_risk(views), learned.LearnedFactorRisk)
    factor = run_backtests([spec], market, **window).results["dmpo_mpo"]
    monkeypatch.setattr(
        learned, "learned_risk", lambda v: cvx.FullCovariance(Sigma=LearnedCovariance(v))
    )
    dense = run_backtests([spec], market, **window).results["dmpo_mpo"]
    np.testing.assert_allclose(factor.weights.to_numpy(), dense.weights.to_numpy(), atol=1e-6)
    # and the factor model's quadratic form is Sigma_hat's
    t = market.calendar[market.calendar.get_loc(pd.Timestamp(START))]
    past = market.returns_with_cash().loc[market.calendar < t]
    vols = market.volumes.loc[market.volumes.index < t]
    out = views.at(t, past, vols)
    F, d = out["F"].to_numpy(), out["d"].to_numpy()
    raw = out["views"]  # the encoder's own L_hat, d_hat: Sigma_hat = L L' + diag(d) + eps I
    L, d_hat = raw.L[0].numpy(), raw.d[0].numpy()
    sigma = L @ L.T + np.diag(d_hat) + views.eps * np.eye(len(d_hat))
    np.testing.assert_allclose(F.T @ F + np.diag(d), sigma, atol=1e-14)
    np.testing.assert_allclose(views.covariance_at(t, past, vols).to_numpy(), sigma, atol=1e-14)


# ---------------------------------------------------------------- other universes (issue 17)
def _write_kind(path, tickers, kind, qp=None):
    """A checkpoint of encoder ``kind`` trained (here: initialised) on ``tickers``."""
    qp = dict(QP if qp is None else qp)
    enc = replace(_encoder(len(tickers)), kind=kind)
    model = build_dmpo_model(enc, qp, 0)
    ckpt = Checkpoint(
        kind="dmpo", state_dict=model.state_dict(), encoder_config=enc.to_dict(),
        feature_config=FEATURES.to_dict(), qp_config=qp, tickers=list(tickers),
        train_window=["2017-01-03", "2017-05-31"], fingerprint="test", seed=0,
    )  # fmt: skip
    return save_checkpoint(ckpt, path)


@pytest.fixture(scope="module")
def moved_universe(market):
    """Checkpoint tickers: the market's without its first ticker, plus one it lacks."""
    return [*market.tickers[1:], "ZZZ"]


def test_a_cross_asset_checkpoint_applies_to_a_changed_universe(market, moved_universe, tmp_path):
    path = _write_kind(tmp_path / "cross.pt", moved_universe, "cross_asset")
    views = LearnedViews(path)
    views.check_universe(list(market.tickers))
    assert views.tickers == list(market.tickers)
    assert views.model.encoder_config.n_assets == views.model.qp_spec.n == len(market.tickers)
    # the views are the trained weights applied to the new universe's window
    t = market.calendar[150]
    past = market.returns_with_cash().loc[market.calendar < t]
    vols = market.dollar_volumes.loc[past.index]
    mu = LearnedReturnsForecast(views).values_in_time(t, past, vols, mpo_step=1)
    enc = build_dmpo_model(replace(_encoder(len(moved_universe)), kind="cross_asset"), QP, 0)
    X = window_at(t, past.iloc[:, :-1], vols, FEATURES)
    with torch.no_grad():
        expected = enc.views(torch.as_tensor(X)[None]).mu[0, 1].numpy()
    assert list(mu.index) == list(market.tickers)
    np.testing.assert_allclose(mu.to_numpy(), expected, rtol=1e-12, atol=1e-15)
    views.check_universe(moved_universe[::-1])  # back to the checkpoint's own tickers
    assert views.tickers == moved_universe and views.model.qp_spec.n == len(moved_universe)


@pytest.mark.parametrize("kind", ["dmpo_mpo", "dmpo_qp"])
def test_learned_policies_run_a_cross_asset_checkpoint_on_a_changed_universe(
    market, moved_universe, tmp_path, kind
):
    path = _write_kind(tmp_path / "cross.pt", moved_universe, "cross_asset")
    run = run_backtests([_spec(kind, path)], market, start=START, end="2017-07-14",
                        include_hold=False, progress=False)  # fmt: skip
    w = run.results[kind].weights[market.tickers]
    assert len(w) > 20 and w.min().min() >= -1e-6 and run.results[kind].turnover.sum() > 0
    if kind == "dmpo_qp":
        assert w.max().max() <= QP["w_max"] + 1e-8
        np.testing.assert_allclose(w.sum(axis=1), 1.0, atol=1e-8)


@pytest.mark.parametrize("encoder", ["lstm", "transformer"])
def test_other_encoders_keep_the_same_universe_rule(market, moved_universe, tmp_path, encoder):
    path = _write_kind(tmp_path / f"{encoder}.pt", moved_universe, encoder)
    views = LearnedViews(path)
    match = (
        rf"trained on another universe: only in the checkpoint \['ZZZ'\], only in the data "
        rf"\['{market.tickers[0]}'\].*kind = 'cross_asset'"
    )
    with pytest.raises(CheckpointError, match=match):
        views.check_universe(list(market.tickers))
    views.check_universe(moved_universe[::-1])  # its own tickers, in any order
    assert views.tickers == moved_universe


def test_a_cross_asset_checkpoint_needs_a_feasible_universe(market, moved_universe, tmp_path):
    path = _write_kind(tmp_path / "cross.pt", moved_universe, "cross_asset")  # w_max 0.4
    views = LearnedViews(path)
    with pytest.raises(CheckpointError, match=r"2 ticker\(s\).*w_max=0.4.*at least 3 tickers"):
        views.check_universe(list(market.tickers[:2]))
    views.check_universe(list(market.tickers[:3]))
    assert views.model.qp_spec.n == 3 and views.tickers == list(market.tickers[:3])

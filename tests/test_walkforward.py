"""Walk-forward research: schedule, purge, stitched runs, look-ahead, statistics, errors.

The Dask engine against a real scheduler (and kill -9 of the driver) is in
tests/test_walkforward_dask.py; these tests call the pure tasks in-process.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from spec_helpers import TIGHT, spec_dict
from typer.testing import CliRunner

from mpo.backtest import initial_holdings, make_simulator
from mpo.cli import app
from mpo.config import parse_spec
from mpo.data.market import MarketData
from mpo.data.synthetic import make_synthetic
from mpo.errors import ResearchError
from mpo.metrics import bootstrap_sharpe_test, holm, periods_per_year, sharpe_ratio
from mpo.policies import build_policy
from mpo.research import make_folds, parse_duration, plan, resolve_purge
from mpo.research.cli import universes_for
from mpo.research.schedule import EMBARGO
from mpo.research.statistics import aggregate
from mpo.research.stitch import stitched_backtest
from mpo.research.tasks import FitTask, StitchTask, fold_spec, run_fit, run_stitch

runner = CliRunner()

TRAIN_TOML = """
name = "tiny"
[features]
window = 5
[split]
val = 0.25
[encoder]
hidden = 4
rank = 1
mu_scale = 0.01
[qp]
horizon = 2
delta = 0.3
w_max = 0.6
[costs]
half_spread = 0.0005
[train]
epochs = 1
batch_size = 32
max_batches = 2
patience = 5
[baselines]
two_stage_epochs = 1
direct_epochs = 1
lw_lookback = 40
"""


@pytest.fixture(scope="module")
def market() -> MarketData:
    return make_synthetic(n_assets=4, n_periods=420, seed=3)


def tuned_spo(**extra):
    return parse_spec(
        spec_dict(
            "spo",
            forecast={"kind": "rolling_mean", "lookback": 30},
            risk={"kind": "full", "lookback": 30},
            tuning={"trials": 2, "params": {"gamma_risk": {"low": 0.1, "high": 50, "log": True}}},
            **extra,
        )
    )


# ---------------------------------------------------------------- schedule
def test_test_windows_tile_the_span_and_training_windows_end_purge_before(market):
    cal = market.calendar
    folds = make_folds(cal, train="100d", test="60d", purge=7, history=40)
    assert len(folds) >= 3
    pos = lambda t: int(cal.get_loc(t))  # noqa: E731
    for a, b in zip(folds, folds[1:], strict=False):
        assert pos(b.test_start) == pos(a.test_end) + 1  # no gap, no overlap
    for f in folds:
        assert pos(f.test_start) - pos(f.train_end) - 1 == 7  # exactly the purge
        assert f.train_end < f.test_start
        assert f.test_periods == pos(f.test_end) - pos(f.test_start) + 1
    assert pos(folds[-1].test_end) == len(cal) - 2  # the last tradable date
    # rolling: every training window is 100 periods back from its test start
    assert all(pos(f.test_start) - pos(f.train_start) == 100 for f in folds)
    anchored = make_folds(cal, train="100d", test="60d", purge=7, history=40, anchored=True)
    assert {f.train_start for f in anchored} == {cal[40]}
    assert [f.test_start for f in anchored] == [f.test_start for f in folds]


def test_calendar_steps_do_not_drift():
    cal = pd.bdate_range("1995-01-02", "2004-12-31")
    folds = make_folds(cal, train="2y", test="1y", start="1995-01-02", purge=5)
    # each test window starts on the first trading day on or after Jan 2 of its year
    assert [f.test_start.year for f in folds] == list(range(1997, 2005))
    assert all(f.test_start.month == 1 and f.test_start.day <= 4 for f in folds)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"train": "10y"}, r"first test window .* after the last test date"),
        ({"test": "0d"}, "at least one period"),
        ({"train": "4x"}, "cannot read --train"),
        ({"start": "1990-01-01"}, "before the data begin"),
        ({"start": "2010-01-05"}, r"needs? 40"),
    ],
)
def test_windows_that_do_not_fit_are_clear_errors(market, kwargs, match):
    args = {"train": "100d", "test": "60d", "purge": 5, "history": 40, **kwargs}
    with pytest.raises(ResearchError, match=match):
        make_folds(market.calendar, data_name="synthetic", **args)


def test_a_test_window_shorter_than_a_period_is_refused():
    monthly = pd.date_range("2000-01-31", periods=120, freq="ME")
    with pytest.raises(ResearchError, match="shorter than one period"):
        make_folds(monthly, train="2y", test="1w")


def test_purge_rules():
    assert resolve_purge("auto", {"dmpo": 3, "spo": 1}, {"spo": 500})[0] == 3 + EMBARGO
    assert resolve_purge(None, {}, {"hold": 10})[0] == EMBARGO
    assert resolve_purge("lookback", {"spo": 1}, {"spo": 528, "hold": 10}) == (
        528,
        "lookback: longest estimator lookback (spo)",
    )
    assert resolve_purge("12", {}, {"x": 1})[0] == 12
    with pytest.raises(ResearchError, match="auto, lookback or a number"):
        resolve_purge("soon", {}, {"x": 1})
    assert parse_duration("18m", "--train").unit == "months"


# ---------------------------------------------------------------- stitching
def test_the_stitched_run_is_one_simulation_across_fold_boundaries(market):
    """Two folds with different parameters equal a backtest of fold 0 continued by fold 1
    from fold 0's final holdings (cvxportfolio directly): value carries over, and the switch
    trade is charged like any other."""
    base = parse_spec(
        spec_dict(
            "spo",
            forecast={"kind": "rolling_mean", "lookback": 30},
            risk={"kind": "full", "lookback": 30},
        )
    )
    specs = [base, base.with_updates(objective={"gamma_risk": 0.05, "gamma_trade": 0.01})]
    cal = market.calendar
    t0, t1, t2 = cal[100], cal[200], cal[300]
    r = stitched_backtest("spo", specs, [t0, t1], market, t2)
    sim = make_simulator(base, market)
    h0 = initial_holdings(base, market.tickers, market.cash_key)
    a = sim.backtest(build_policy(specs[0], market.tickers), start_time=t0, end_time=t1, h=h0)
    b = sim.backtest(
        build_policy(specs[1], market.tickers), start_time=t1, end_time=t2, h=a.h.iloc[-1]
    )
    expected = pd.concat([a.returns, b.returns])
    assert r.returns.index.equals(expected.index)
    np.testing.assert_allclose(r.returns.to_numpy(), expected.to_numpy(), rtol=0, atol=1e-10)
    np.testing.assert_allclose(r.turnover.loc[t1], b.turnover.loc[t1], rtol=0, atol=1e-10)
    assert r.turnover.loc[t1] > 0.05  # the switch trade, not zero and not a rebuild from cash
    assert r.costs.loc[t1].sum() > 0
    # the value is continuous: v_{t+1} = v_t (1 + r_t) through the boundary
    v = r.value.loc[r.returns.index]
    np.testing.assert_allclose(
        v.iloc[1:].to_numpy(), (v * (1 + r.returns)).iloc[:-1].to_numpy(), rtol=1e-12
    )


# ---------------------------------------------------------------- look-ahead
def _perturbed(market: MarketData, after: pd.Timestamp, seed: int = 0) -> MarketData:
    rng = np.random.default_rng(seed)
    r = market.returns.copy()
    late = r.index > after
    r.loc[late] = r.loc[late] * rng.uniform(-3, 3, size=r.loc[late].shape) + 0.01
    return MarketData(returns=r, cash_return=market.cash_return, volumes=market.volumes,
                      name=market.name, adv=market.adv)  # fmt: skip


def _fits_and_weights(spec, market, folds, root, k):
    fp = market.fingerprint()
    storage = str(root / "studies.journal")
    fits = [run_fit(FitTask("main", spec, f, str(root), fp, storage, 2, 0), market) for f in folds]
    out = run_stitch(
        StitchTask("main", spec, tuple(folds), str(root), str(root / spec.name), fp), market, *fits
    )
    weights = pd.read_parquet(root / spec.name / "weights.parquet")
    return fits, weights, out


def _check_no_look_ahead(spec, market, tmp_path, train, test, history):
    folds = make_folds(market.calendar, train=train, test=test, purge=6, history=history)[:3]
    k = 1
    cut = folds[k].train_end
    fits_a, w_a, _ = _fits_and_weights(spec, market, folds, tmp_path / "a", k)
    fits_b, w_b, _ = _fits_and_weights(spec, _perturbed(market, cut), folds, tmp_path / "b", k)
    strip = lambda f: {k: v for k, v in f.items() if k not in ("identity", "checkpoint", "study")}  # noqa: E731
    for j in range(k + 1):  # folds fitted on data up to the cut: bit-identical fits
        assert strip(fits_a[j]) == strip(fits_b[j])
    # decisions up to the first date after the cut read only returns up to the cut
    cal = market.calendar
    last_same = cal[cal.get_loc(cut) + 1]
    pd.testing.assert_frame_equal(w_a.loc[:last_same], w_b.loc[:last_same], check_exact=True)
    assert not w_a.loc[folds[-1].test_start :].equals(w_b.loc[folds[-1].test_start :])
    return fits_a, fits_b


def test_tuned_folds_do_not_look_ahead(market, tmp_path):
    spec = tuned_spo()
    fits_a, fits_b = _check_no_look_ahead(spec, market, tmp_path, "80d", "60d", 40)
    assert all(f["mode"] == "tuned" and f["n_trials"] == 2 for f in fits_a)


def test_trained_folds_do_not_look_ahead(market, tmp_path):
    (tmp_path / "tiny.toml").write_text(TRAIN_TOML)
    spec = parse_spec(
        {
            "name": "dmpo_qp",
            "kind": "dmpo_qp",
            "learned": {"checkpoint": str(tmp_path / "none.pt"),
                        "train_spec": str(tmp_path / "tiny.toml"), "model": "dmpo"},
            "costs": {"half_spread": 0.0005, "impact": 1.0},
            "backtest": {"solver_options": TIGHT},
        }
    )  # fmt: skip
    fits_a, fits_b = _check_no_look_ahead(spec, market, tmp_path, "150d", "40d", 40)
    assert all(f["mode"] == "trained" for f in fits_a)
    import torch

    from mpo.learn.checkpoint import load_checkpoint

    for j in range(2):
        a = load_checkpoint(fits_a[j]["checkpoint"]).state_dict
        b = load_checkpoint(fits_b[j]["checkpoint"]).state_dict
        assert all(torch.equal(a[n], b[n]) for n in a)
    # each fold's model is trained only on its own window
    ck = load_checkpoint(fits_a[1]["checkpoint"])
    assert ck.extra["splits"]["val"]["end"] <= str(make_folds(
        market.calendar, train="150d", test="40d", purge=6, history=40)[1].train_end.date())  # fmt: skip


def test_fold_spec_takes_the_fitted_parameters():
    spec = tuned_spo()
    fitted = fold_spec(spec, {"mode": "tuned", "params": {"gamma_risk": 3.5}})
    assert fitted.objective.gamma_risk == 3.5 and spec.objective.gamma_risk == 5.0


# ---------------------------------------------------------------- statistics
def test_paired_test_and_holm():
    rng = np.random.default_rng(0)
    x = rng.normal(0.0005, 0.01, size=(1500, 2))
    same = bootstrap_sharpe_test(np.column_stack([x[:, 0], x[:, 0]]), 252)
    assert same["estimate"] == 0 and same["p"] == 1.0
    better = np.column_stack([x[:, 0] + 0.002, x[:, 0]])
    t = bootstrap_sharpe_test(better, 252)
    assert t["estimate"] > 0 and t["ci_low"] > 0 and t["p"] < 0.01
    assert holm({"a": 0.01, "b": 0.04, "c": 0.03, "d": np.nan}) == pytest.approx(
        {"a": 0.03, "b": 0.06, "c": 0.06, "d": np.nan}, nan_ok=True
    )


def test_pooled_difference_over_universes(market):
    """The aggregate's mean difference is the mean of per-universe differences, its win rate
    the share of universes where the policy is higher."""
    from mpo.backtest import PolicyResult

    idx = market.calendar[:400]
    rng = np.random.default_rng(1)

    def result(name, r):
        s = pd.Series(r, index=idx)
        zero = pd.Series(0.0, index=idx)
        return PolicyResult(name, None, s, s, zero, (1 + s).cumprod(), pd.DataFrame(),
                            pd.DataFrame(), pd.DataFrame(index=idx), zero, 0.0)  # fmt: skip

    per = {}
    for u in range(4):
        base = rng.normal(0.0003, 0.01, 400)
        per[f"u{u}"] = {
            "hold": result("hold", base),
            "equal_weight": result("equal_weight", base + 0.0001),
            "x": result("x", base + (0.002 if u < 3 else -0.002)),
        }
    agg = aggregate(per)["policies"]["x"]
    ppy = periods_per_year(idx)
    sr = lambda r: sharpe_ratio(r.returns.to_numpy(), ppy)  # noqa: E731
    diffs = [sr(per[u]["x"]) - sr(per[u]["equal_weight"]) for u in per]
    assert agg["mean_diff_vs_equal_weight"] == pytest.approx(np.mean(diffs), rel=1e-9)
    assert agg["win_rate_vs_equal_weight"] == 0.75
    assert agg["mean_diff_vs_equal_weight_ci_low"] < agg["mean_diff_vs_equal_weight"]
    assert agg["n_universes"] == 4


# ---------------------------------------------------------------- plan and CLI
def test_plan_adds_references_and_counts_tasks(market, tmp_path):
    p = plan([tuned_spo()], {"main": market}, tmp_path, train="80d", test="60d", trials=2)
    assert [s.name for s in p.specs] == ["hold", "equal_weight", "spo"]
    assert len(p.fits) == len(p.folds) and len(p.stitches) == 3
    assert p.purge == 1 + EMBARGO
    assert "folds" in p.describe() and "trials in all" in p.describe()


def test_universes(market):
    drawn = universes_for(market, source="synthetic", k=3, size=2, seed=0, files=None)
    assert len(drawn) == 3 and all(m.n_assets == 2 for m in drawn.values())
    with pytest.raises(ResearchError, match="larger than the 4 tickers"):
        universes_for(market, source="synthetic", k=2, size=9, seed=0, files=None)
    with pytest.raises(ResearchError, match="needs --universe-size"):
        universes_for(market, source="sp20", k=2, size=None, seed=0, files=None)
    seeded = universes_for(market, source="synthetic", k=2, size=None, seed=5, files=None,
                           loader=lambda s: make_synthetic(n_assets=3, n_periods=200, seed=s))  # fmt: skip
    assert list(seeded) == ["s00", "s01"]
    assert seeded["s00"].fingerprint() != seeded["s01"].fingerprint()


def test_cli_dry_run_prints_the_schedule_and_runs_nothing(tmp_path):
    spec = tmp_path / "spo.toml"
    spec.write_text(_toml(tuned_spo()))
    out = tmp_path / "run"
    res = runner.invoke(app, ["walkforward", str(spec), "--data", "synthetic", "--train", "1y",
                              "--test", "1y", "--dry-run", "--out", str(out)])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "folds, purge 6 periods" in res.output and "train_start" in res.output
    assert not out.exists()


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["--train", "30y"], "first test window"),
        (["--test", "0d"], "at least one period"),
        (["--universes", "2", "--universe-size", "50"], "larger than the 20 tickers"),
        (["--purge", "later"], "auto, lookback or a number"),
        (["--start", "2011-13-01"], "--start"),
        (["--workers", "0"], "--workers must be >= 1"),
    ],
)
def test_cli_bad_input_is_one_clear_line(tmp_path, args, match):
    spec = tmp_path / "spo.toml"
    spec.write_text(_toml(tuned_spo()))
    res = runner.invoke(app, ["walkforward", str(spec), "--data", "synthetic", "--train", "1y",
                              "--test", "1y", "--out", str(tmp_path / "run"), *args])  # fmt: skip
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output
    assert pytest.importorskip("re").search(match, res.output), res.output


def _toml(spec) -> str:
    """A spec as TOML text (the few value types specs hold)."""

    def value(v):
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str):
            return json.dumps(v)
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        return repr(v)

    lines, tables = [], []

    def walk(prefix, d):
        scalars = {k: v for k, v in d.items() if not isinstance(v, dict) and v is not None}
        if prefix:
            tables.append(f"[{prefix}]")
        (lines if not prefix else tables).extend(f"{k} = {value(v)}" for k, v in scalars.items())
        for k, v in d.items():
            if isinstance(v, dict):
                walk(f"{prefix}.{k}" if prefix else k, v)

    walk("", spec.model_dump(exclude_none=True))
    return "\n".join(lines + tables) + "\n"


def test_a_solver_failure_is_retried_once_with_the_fallback_solver(market, tmp_path, monkeypatch):
    """A stitched run whose primary solver fails at some date is simulated again with
    cvxportfolio's fallback solver (used only where the primary fails), and says so."""
    import mpo.research.stitch as stitch
    from mpo.errors import SolverError

    calls = []
    real = stitch.stitched_backtest

    def flaky(name, specs, *args, **kwargs):
        calls.append([s.backtest.fallback_solver for s in specs])
        if len(calls) == 1:
            raise SolverError(f"policy {name!r} at 2011-02-01: the solver failed")
        return real(name, specs, *args, **kwargs)

    monkeypatch.setattr(stitch, "stitched_backtest", flaky)
    spec = tuned_spo()
    folds = make_folds(market.calendar, train="80d", test="60d", purge=6, history=40)[:1]
    task = StitchTask("main", spec, tuple(folds), str(tmp_path), str(tmp_path / "spo"), "fp")
    out = run_stitch(task, market)
    assert calls == [[None], [["SCS"]]]
    assert out["fallback"] == {
        "solver": "SCS",
        "after": "policy 'spo' at 2011-02-01: the solver failed",
    }
    assert json.loads((tmp_path / "tasks" / "main" / "spo" / "stitched.json").read_text())[
        "fallback"
    ]


def test_the_dsr_variance_is_within_folds():
    """Selection dispersion is measured among trials of one window, then averaged: the
    market's year-to-year differences between folds do not inflate the DSR threshold."""
    from mpo.research.statistics import trial_variance

    assert trial_variance([[1.0, 2.0], [10.0, 12.0], [5.0]]) == pytest.approx(1.25)
    assert trial_variance([[0.3], []]) == 0.0

"""Bring your own model: file forecasts, a file factor model and file sigma/volume estimates.

The headline check (issue 13): one experiment run through ``mpo backtest`` with a
TOML spec, and once as hand-written cvxportfolio (``MultiPeriodOptimization`` +
``MarketSimulator`` fed the same frames), gives the same weights and portfolio
values to 1e-8 on every period. And the timing convention, pinned: a forecast
file holding the realised returns themselves is perfect foresight (absurd
Sharpe); the same file one period late is ordinary.
"""

from __future__ import annotations

from pathlib import Path

import cvxportfolio as cvx
import numpy as np
import pandas as pd
import pytest
from spec_helpers import TIGHT
from typer.testing import CliRunner

from mpo.backtest import run_backtests
from mpo.cli import app
from mpo.config import load_spec
from mpo.errors import DataError, SpecError

runner = CliRunner()
START, END = 120, 160  # backtest window, as positions on the market fixture's calendar


def _write_market(market, root: Path) -> Path:
    data = root / "data"
    data.mkdir()
    market.returns.to_csv(data / "returns.csv")
    market.dollar_volumes.to_csv(data / "volumes.csv")
    market.cash_return.rename("cash").to_frame().to_csv(data / "cash.csv")
    return data


def _model_files(market, root: Path) -> dict[str, pd.DataFrame]:
    """A forecast, a 2-factor model and sigma/volume estimates, every row known at its date."""
    r = market.returns
    past = r.shift(1)  # row t: information up to t - 1
    forecast = past.rolling(40, min_periods=1).mean().fillna(0.0) + 2e-4
    tickers = list(r.columns)
    rng = np.random.default_rng(3)
    loadings = rng.normal(size=(2, len(tickers)))
    F = pd.concat(
        {
            t: pd.DataFrame(loadings * (1 + 0.01 * i), index=["mkt", "style"], columns=tickers)
            for i, t in enumerate(r.index)
        },
        names=["date", "factor"],
    )
    SF = pd.DataFrame(
        [[1e-4, 2e-5], [2e-5, 5e-5]], index=["mkt", "style"], columns=["mkt", "style"]
    )
    SF.index.name = "factor"
    d = (past.rolling(60, min_periods=2).var().bfill() * 0.5).clip(lower=1e-6)
    sigma = past.rolling(20, min_periods=2).std().bfill()
    volume = market.dollar_volumes.shift(1).rolling(10, min_periods=1).mean().bfill()
    frames = {"forecast": forecast, "F": F, "SF": SF, "d": d, "sigma": sigma, "volume": volume}
    for name, frame in frames.items():
        frame.to_parquet(root / f"{name}.parquet")
    return frames


SPEC = """
name = "byo"
kind = "mpo"

[forecast]
kind = "file"
path = "forecast.parquet"

[risk]
kind = "factor_file"
exposures = "F.parquet"
factor_covariance = "SF.parquet"
idiosyncratic = "d.parquet"

[costs]
half_spread = {half_spread}
impact = 1.0
sigma = "sigma.parquet"
volume = "volume.parquet"

[objective]
gamma_risk = 5.0
gamma_trade = 1.0
planning_horizon = 2

[constraints]
long_only = true
leverage = 1.0
max_weight = 0.3

[backtest]
start = "{start}"
end = "{end}"
solver_options = {{ tol_gap_abs = 1e-10, tol_gap_rel = 1e-10, tol_feas = 1e-10 }}
"""


@pytest.fixture(scope="module")
def experiment(market, tmp_path_factory):
    root = tmp_path_factory.mktemp("byo")
    data = _write_market(market, root)
    frames = _model_files(market, root)
    cal = market.calendar
    specs = {}
    for a in (0.0, 0.0005):
        specs[a] = root / f"byo-{a:g}.toml"
        specs[a].write_text(
            SPEC.format(start=cal[START].date(), end=cal[END].date(), half_spread=a)
        )
    return root, data, frames, specs


def _handwritten(market, frames, a: float):
    """The same experiment written directly against cvxportfolio."""
    impact = dict(b=1.0, sigma=frames["sigma"], exponent=1.5)
    objective = cvx.ReturnsForecast(r_hat=frames["forecast"]) - 5.0 * cvx.FactorModelCovariance(
        F=frames["F"], d=frames["d"], Sigma_F=frames["SF"]
    )
    if a:  # mpo records spread and impact as two terms; the model is one TransactionCost
        objective = objective - 1.0 * cvx.TransactionCost(a=a, b=None)
    objective = objective - 1.0 * cvx.TransactionCost(a=None, volume_hat=frames["volume"], **impact)
    policy = cvx.MultiPeriodOptimization(
        objective,
        [cvx.LongOnly(applies_to_cash=False), cvx.MaxWeights(0.3), cvx.LeverageLimit(1.0)],
        planning_horizon=2,
        solver="CLARABEL",
        **TIGHT,
    )
    returns = market.returns.copy()
    returns["cash"] = market.cash_return
    data = cvx.UserProvidedMarketData(
        returns=returns,
        volumes=market.dollar_volumes,
        cash_key="cash",
        min_history=pd.Timedelta(0),
    )
    # the simulator charges the realised volume and the given sigma (cvxportfolio's convention)
    sim = cvx.MarketSimulator(
        market_data=data, costs=[cvx.TransactionCost(a=a if a else None, **impact)]
    )
    n = market.n_assets
    h0 = pd.Series([1e6 / n] * n + [0.0], index=returns.columns)
    cal = market.calendar
    return sim.backtest(policy, start_time=cal[START], end_time=cal[END], h=h0)


@pytest.mark.parametrize(
    "half_spread, atol",
    [
        # impact with the user's sigma/volume estimates: a well-posed program, exact agreement
        (0.0, 1e-8),
        # spread + impact: |z| and |z|^1.5 kink together at z = 0 and Clarabel resolves the
        # optimum only to ~2e-7 (measured: a 1e-14 relative change of the hand-written
        # problem's own forecast moves its solution by 2e-7); agreement at that precision
        (0.0005, 2e-5),
    ],
)
def test_mpo_backtest_reproduces_handwritten_cvxportfolio(
    market, experiment, tmp_path, half_spread, atol
):
    root, data, frames, specs = experiment
    out = tmp_path / "runs"
    result = runner.invoke(
        app,
        [
            "backtest",
            str(specs[half_spread]),
            "--data",
            f"files:{data}",
            "--out",
            str(out),
            "--no-report",
            "--no-progress",
            "--backtest-start",
            str(market.calendar[START].date()),
            "--backtest-end",
            str(market.calendar[END].date()),
        ],
    )
    assert result.exit_code == 0, result.output
    (run_dir,) = [p for p in out.iterdir() if p.is_dir()]
    weights = pd.read_parquet(run_dir / "byo" / "weights.parquet")
    values = pd.read_parquet(run_dir / "byo" / "returns.parquet")["value"]
    ref = _handwritten(market, frames, half_spread)
    assert len(weights) == END - START
    np.testing.assert_allclose(
        weights.to_numpy(), ref.w_plus.loc[weights.index].to_numpy(), rtol=0, atol=atol
    )
    np.testing.assert_allclose(
        values.to_numpy(), ref.v.loc[values.index].to_numpy(), rtol=atol, atol=0
    )
    assert weights.iloc[:, :-1].diff().abs().sum().sum() > 0.05, "the policy should trade"


def _foresight_spec(tmp_path: Path, frame: pd.DataFrame, name: str):
    path = tmp_path / f"{name}.parquet"
    frame.to_parquet(path)
    spec = tmp_path / f"{name}.toml"
    spec.write_text(
        f'name = "{name}"\nkind = "spo"\n[forecast]\nkind = "file"\npath = "{path.name}"\n'
        "[risk]\nlookback = 60\n[objective]\ngamma_risk = 1.0\ngamma_trade = 0.1\n"
        "[costs]\nhalf_spread = 0.0001\nimpact = 0.0\n"
    )
    return load_spec(spec)


def test_timing_convention_perfect_foresight_vs_one_period_late(market, tmp_path):
    """Row t = forecast made at t of the return from t to t + 1 (cvxportfolio's convention)."""
    r = market.returns
    oracle = _foresight_spec(tmp_path, r, "oracle")
    late = _foresight_spec(tmp_path, r.shift(1).fillna(0.0), "late")
    cal = market.calendar
    run = run_backtests([oracle, late], market, start=cal[100], end=cal[300], progress=False)
    sharpe = run.table()["sharpe"]
    assert sharpe["oracle"] > 10, sharpe  # knowing tomorrow's return: absurd
    assert abs(sharpe["late"]) < 4, sharpe  # yesterday's return as a forecast: ordinary


def test_bad_forecast_files_name_date_and_ticker(market, tmp_path, make_spec):
    r = market.returns
    cal = market.calendar
    window = dict(start=cal[100], end=cal[120], progress=False)
    cases = [
        (r.drop(index=cal[110]), str(cal[110].date())),
        (r.drop(columns=["KO"]), "KO"),
        (r.mask((r.index == cal[105])[:, None] & (r.columns == "JPM")[None, :]), "JPM"),
    ]
    for i, (frame, needle) in enumerate(cases):
        path = tmp_path / f"bad{i}.parquet"
        frame.to_parquet(path)
        spec = make_spec("spo", name=f"bad{i}", forecast={"kind": "file", "path": str(path)})
        with pytest.raises(DataError, match=needle):
            run_backtests([spec], market, **window)


def test_bad_risk_files(market, tmp_path, make_spec):
    r = market.returns
    cal = market.calendar
    window = dict(start=cal[100], end=cal[110], progress=False)
    tickers = list(r.columns)
    # a covariance that is not PSD at one date
    cov = r.iloc[:60].cov().to_numpy()
    blocks = {}
    for t in cal[95:115]:
        m = cov.copy()
        if t == cal[104]:
            m[0, 0] = -1e-3
        blocks[t] = pd.DataFrame(m, index=tickers, columns=tickers)
    frame = pd.concat(blocks, names=["date", "ticker"])
    frame.to_parquet(tmp_path / "cov.parquet")
    spec = make_spec("spo", risk={"kind": "file", "path": str(tmp_path / "cov.parquet")})
    with pytest.raises(DataError, match=str(cal[104].date())):
        run_backtests([spec], market, **window)
    # a factor model whose exposures lack a ticker
    F = pd.concat(
        {
            t: pd.DataFrame(np.ones((2, len(tickers) - 1)), index=["a", "b"], columns=tickers[1:])
            for t in cal[95:115]
        },
        names=["date", "factor"],
    )
    SF = pd.DataFrame(
        np.eye(2) * 1e-4, index=pd.Index(["a", "b"], name="factor"), columns=["a", "b"]
    )
    d = pd.DataFrame(1e-4, index=cal[95:115], columns=tickers)
    for name, frame in (("F", F), ("SF", SF), ("d", d)):
        frame.to_parquet(tmp_path / f"{name}.parquet")
    spec = make_spec(
        "spo",
        risk={
            "kind": "factor_file",
            "exposures": str(tmp_path / "F.parquet"),
            "factor_covariance": str(tmp_path / "SF.parquet"),
            "idiosyncratic": str(tmp_path / "d.parquet"),
        },
    )
    with pytest.raises(DataError, match=tickers[0]):
        run_backtests([spec], market, **window)


def test_file_kind_without_a_path_is_a_spec_error(make_spec, market):
    spec = make_spec("spo", forecast={"kind": "file"})
    with pytest.raises(SpecError, match="needs path"):
        run_backtests([spec], market, start=market.calendar[100], progress=False)

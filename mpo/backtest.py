"""Run policies side by side in cvxportfolio's ``MarketSimulator``.

Every policy of a run faces the same market: the same data, the same cost
model (:class:`mpo.costs.CostModel`, charged by the simulator), the same
initial portfolio and the same dates. Hold is always included as the
reference.

Accounting (cvxportfolio's): at each period ``t`` the policy's trades ``u_t``
are executed, the costs are debited from cash, then every position (cash
included) earns its return ``r_t``. Hence, with ``v_t`` the value before
trading::

    gross_t - net_t = costs_t * (1 + r_cash_t) / v_t

which :func:`reconcile_costs` checks to 1e-10.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import cvxportfolio as cvx
import cvxpy as cp
import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from mpo.config import PolicySpec, parse_spec
from mpo.data.market import MarketData
from mpo.errors import DataError, InfeasibleError, SolverError, SpecError
from mpo.io import package_versions, write_json, write_parquet
from mpo.metrics import bootstrap_sharpe_ci, periods_per_year, summary
from mpo.policies import UserPolicy, build_policy, cost_model, kind_of, required_history
from mpo.policies.solving import SolverChainError

__all__ = [
    "BacktestRun",
    "PolicyResult",
    "hold_spec",
    "initial_holdings",
    "load_result",
    "make_simulator",
    "reconcile_costs",
    "run_backtests",
    "save_result",
    "simulate",
]

logger = logging.getLogger(__name__)


def hold_spec(like: PolicySpec | None = None) -> PolicySpec:
    """A Hold spec sharing ``like``'s data, backtest and cost sections."""
    base = {"name": "hold", "kind": "hold", "description": "Hold the initial portfolio."}
    if like is not None:
        dumped = like.model_dump()
        base.update({k: dumped[k] for k in ("data", "backtest", "costs")})
    return parse_spec(base, source="<built-in hold>")


@dataclass
class PolicyResult:
    """Series of one policy's backtest (dollar costs; weights are post-trade)."""

    name: str
    spec: PolicySpec
    returns: pd.Series
    gross_returns: pd.Series
    cash_returns: pd.Series
    value: pd.Series
    weights: pd.DataFrame
    trades: pd.DataFrame
    costs: pd.DataFrame
    turnover: pd.Series
    seconds_per_period: float
    metrics: dict = field(default_factory=dict)
    #: Solves that did not end accurately with the primary solver (:class:`SolveLog` counts).
    solves: dict = field(default_factory=dict)


@dataclass
class BacktestRun:
    """All policies of one run, on one market."""

    results: dict[str, PolicyResult]
    market: MarketData
    start: pd.Timestamp
    end: pd.Timestamp
    seed: int = 0
    #: Policies whose backtest failed (infeasible, solver failure, bankrupt): name -> reason.
    failures: dict[str, str] = field(default_factory=dict)
    #: A failed policy's record up to its last completed decision: name -> frame of
    #: pre-trade ``value`` and post-trade weights by decision date (``partial.parquet``).
    partials: dict[str, pd.DataFrame] = field(default_factory=dict)

    def table(self) -> pd.DataFrame:
        """One row of metrics per policy, Hold first."""
        return pd.DataFrame({name: r.metrics for name, r in self.results.items()}).T

    def last_decision(self) -> str | None:
        """Date of the last decision: the period before :attr:`end` (its return ends at end)."""
        idx = next((r.returns.index for r in self.results.values()), None)
        return None if idx is None or not len(idx) else str(idx[-1].date())

    def save(self, run_dir: str | Path) -> Path:
        """Write series as parquet and metrics/config/provenance as JSON (atomically)."""
        run_dir = Path(run_dir)
        for name, r in self.results.items():
            save_result(r, run_dir / name)
        for name, frame in self.partials.items():
            write_parquet(frame, run_dir / name / "partial.parquet")
        write_json(
            {
                "metrics": self.table().to_dict(orient="index"),
                "specs": {n: r.spec.model_dump() for n, r in self.results.items()},
                "data": self.market.describe(),
                "window": {
                    "start": str(self.start.date()),
                    "end": str(self.end.date()),
                    "last_decision": self.last_decision(),
                    "convention": "decisions from start to the period before end; the row "
                    "dated t is the return from t to the next date, so prices from start to end",
                },
                "seed": self.seed,
                "failures": self.failures,
                "partial": {
                    n: {
                        "file": f"{n}/partial.parquet",
                        "periods": len(f),
                        "through": str(f.index[-1].date()) if len(f) else None,
                    }
                    for n, f in self.partials.items()
                },  # fmt: skip
                "solves": {n: r.solves for n, r in self.results.items()},
                "versions": package_versions(),
                "created": pd.Timestamp.now().isoformat(timespec="seconds"),
            },
            run_dir / "run.json",
        )
        logger.info("saved run to %s", run_dir)
        return run_dir


def save_result(r: PolicyResult, folder: str | Path) -> Path:
    """One policy's series as parquet files in ``folder`` (the layout of a run folder).

    ``returns.parquet`` (net, gross and cash returns, value, turnover),
    ``weights``, ``trades`` and ``costs`` (dollars per cost term); each
    written atomically. :func:`load_result` reads them back.
    """
    folder = Path(folder)
    write_parquet(
        pd.DataFrame(
            {
                "net_return": r.returns,
                "gross_return": r.gross_returns,
                "cash_return": r.cash_returns,
                "value": r.value.reindex(r.returns.index),
                "turnover": r.turnover.reindex(r.returns.index),
            }
        ),
        folder / "returns.parquet",
    )
    write_parquet(r.weights, folder / "weights.parquet")
    write_parquet(r.trades, folder / "trades.parquet")
    write_parquet(r.costs, folder / "costs.parquet")
    return folder


def load_result(folder: str | Path, spec: PolicySpec, name: str | None = None) -> PolicyResult:
    """The :class:`PolicyResult` :func:`save_result` wrote to ``folder`` (no metrics)."""
    folder = Path(folder)
    frame = pd.read_parquet(folder / "returns.parquet")
    return PolicyResult(
        name=name or spec.name,
        spec=spec,
        returns=frame["net_return"].rename(None),
        gross_returns=frame["gross_return"].rename(None),
        cash_returns=frame["cash_return"].rename(None),
        value=frame["value"].rename(None),
        weights=pd.read_parquet(folder / "weights.parquet"),
        trades=pd.read_parquet(folder / "trades.parquet"),
        costs=pd.read_parquet(folder / "costs.parquet"),
        turnover=frame["turnover"].rename(None),
        seconds_per_period=float("nan"),
    )


class _Progress(cvx.policies.Policy):
    """Transparent wrapper: advances a progress bar, remembers the date, calls ``on_period``.

    It also keeps each completed decision's pre-trade value and post-trade
    weights, the partial record saved when a later decision fails.
    """

    def __init__(self, policy, bar: tqdm | None = None, on_period=None):
        self.policy = policy
        self._bar = bar
        self._on_period = on_period
        self.last_t: pd.Timestamp | None = None
        self._record: list[tuple[pd.Timestamp, float, np.ndarray]] = []
        self._columns = None

    def values_in_time(self, t, current_portfolio_value, past_returns, **kwargs):
        self.last_t = t
        if self._bar is not None:
            self._bar.update(1)
        if self._on_period is not None:
            self._on_period(t, current_portfolio_value, past_returns)
        w = self.policy.current_value
        if isinstance(w, pd.Series):
            self._columns = w.index
            self._record.append((t, float(current_portfolio_value), w.to_numpy(copy=True)))
        return w

    def partial(self) -> pd.DataFrame:
        """Completed decisions so far: ``value`` (pre-trade) and post-trade weights."""
        if not self._record:
            return pd.DataFrame({"value": pd.Series(dtype=float)})
        index = pd.DatetimeIndex([t for t, _, _ in self._record], name="date")
        weights = pd.DataFrame(np.vstack([w for _, _, w in self._record]), index=index,
                               columns=[str(c) for c in self._columns])  # fmt: skip
        return pd.concat([pd.Series([v for _, v, _ in self._record], index=index,
                                    name="value"), weights], axis=1)  # fmt: skip


def _window(
    specs: list[PolicySpec], market: MarketData, start, end, history=None
) -> tuple[int, int]:
    """Index positions of the first and last backtest dates, checked against history."""
    cal = market.calendar
    history = history or {}
    needs = {s.name: history.get(s.name) or required_history(s) for s in specs}
    who = max(needs, key=needs.get)
    need = needs[who]
    market.require_history(need + 2, f"policy {who!r} ({need} periods of history plus 2 to trade)")
    first = need
    if start is not None:
        pos = int(cal.searchsorted(pd.Timestamp(start)))
        if pos < need:
            raise DataError(
                f"backtest start {pd.Timestamp(start).date()} leaves {pos} periods of history but "
                f"policy {who!r} needs {need}; the earliest possible start on data "
                f"{market.name!r} is {cal[need].date()}."
            )
        first = pos
    last = len(cal) - 1
    if end is not None:
        last = int(cal.searchsorted(pd.Timestamp(end), side="right")) - 1
    if last - first < 2:
        raise DataError(
            f"the backtest window {cal[min(first, len(cal) - 1)].date()} to "
            f"{cal[max(last, 0)].date()} has fewer than 3 periods on data {market.name!r} "
            f"({cal[0].date()} to {cal[-1].date()})."
        )
    return first, last


def _warn_in_sample(specs: list[PolicySpec], t0: pd.Timestamp) -> None:
    """Policies backtested on dates their model was trained or selected on."""
    for spec in specs:
        end = kind_of(spec).selection_end()
        if end is not None and t0 <= end:
            logger.warning(
                "policy %r: its checkpoint was trained and validated on decisions up to %s, but "
                "the backtest starts %s: these results are partly in sample. Train on data "
                "ending before the backtest (with a gap) for an honest comparison.",
                spec.name,
                end.date(),
                t0.date(),
            )


def _check_shared(specs: list[PolicySpec]) -> None:
    ref = specs[0]
    for s in specs[1:]:
        for section in ("costs", "backtest"):
            mine, theirs = getattr(s, section), getattr(ref, section)
            if section == "costs":  # a fixed fee's deadband etc. are each policy's own
                mine, theirs = mine.market(), theirs.market()
            if mine != theirs:
                raise SpecError(
                    f"policies {ref.name!r} and {s.name!r} differ in [{section}]: every policy "
                    f"of a run faces the same market, so [{section}] must be identical "
                    f"({theirs} vs {mine})."
                )
    names = [s.name for s in specs]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise SpecError(f"policy names must be unique in a run, got duplicates {dup}.")


def initial_holdings(spec: PolicySpec, tickers: list[str], cash_key: str) -> pd.Series:
    """Dollar holdings at the start of a backtest (``[backtest] initial``: equal or cash)."""
    v0 = spec.backtest.initial_value
    h = pd.Series(0.0, index=[*tickers, cash_key])
    if spec.backtest.initial == "equal":
        h.iloc[:-1] = v0 / len(tickers)
    else:
        h.iloc[-1] = v0
    return h


def _extract(name, spec, res, market: MarketData, seconds: float) -> PolicyResult:
    returns = res.returns
    idx = returns.index
    v = res.v.loc[idx]
    h_plus = res.h_plus.loc[idx]
    period_returns = market.returns_with_cash().loc[idx]
    gross = (h_plus * (1.0 + period_returns)).sum(axis=1) / v - 1.0
    names = cost_model(spec).names()  # every registered term: a column, charged or not
    costs = pd.DataFrame(res.costs, index=idx)
    for col in names:
        if col not in costs:
            costs[col] = 0.0
    costs = costs[names + [c for c in costs.columns if c not in names]].fillna(0.0)
    return PolicyResult(
        name=name,
        spec=spec,
        returns=returns,
        gross_returns=gross,
        cash_returns=period_returns[market.cash_key],
        value=res.v,
        weights=res.w_plus.loc[idx],
        trades=res.z.loc[idx],
        costs=costs,
        turnover=res.turnover.loc[idx],
        seconds_per_period=seconds,
    )


def make_simulator(spec: PolicySpec, market: MarketData) -> cvx.MarketSimulator:
    """cvxportfolio's simulator on ``market`` charging ``spec``'s cost model."""
    return cvx.MarketSimulator(
        market_data=market.to_cvxportfolio(), costs=cost_model(spec).simulator_costs()
    )


def _failing_date(calendar: pd.DatetimeIndex, last_t) -> pd.Timestamp:
    """The date whose decision failed: the one after the last completed decision."""
    if last_t is None:
        return calendar[0]
    pos = int(calendar.searchsorted(last_t, side="right"))
    return calendar[min(pos, len(calendar) - 1)]


def simulate(
    policy,
    *,
    spec: PolicySpec,
    market: MarketData,
    simulator: cvx.MarketSimulator,
    start: pd.Timestamp,
    end: pd.Timestamp,
    h0: pd.Series | None = None,
    name: str | None = None,
    progress: bool = False,
    on_period=None,
) -> PolicyResult:
    """One policy's backtest from ``start`` to ``end`` (the single loop every caller shares).

    ``run_backtests``, tuning trials and walk-forward folds all call this: the
    same initial portfolio rule, the same simulator, the same extraction of
    returns, weights, trades and dollar costs per cost term, and the same
    errors. ``on_period(t, value, past_returns)`` is called at every
    period (tuning prunes through it). Infeasible programs raise
    :class:`InfeasibleError`, solver failures :class:`mpo.errors.SolverError`;
    both name the policy and the date, and carry ``partial``: the completed
    decisions' values and weights (:meth:`_Progress.partial`).
    """
    name = name or spec.name
    h0 = initial_holdings(spec, market.tickers, market.cash_key) if h0 is None else h0
    cal = market.calendar
    n_periods = int(((cal >= start) & (cal < end)).sum())
    bar = tqdm(
        total=n_periods, desc=f"{name:>14}", disable=not progress, leave=False, unit="period"
    )
    wrapper = _Progress(policy, bar, on_period)

    def at() -> str:  # the date whose decision failed
        return str(_failing_date(cal[cal >= start], wrapper.last_t).date())

    tic = time.perf_counter()
    try:
        try:
            res = simulator.backtest(wrapper, start_time=start, end_time=end, h=h0)
        except (cvx.errors.ProgramInfeasible, cvx.errors.ProgramUnbounded) as exc:
            raise InfeasibleError(
                f"policy {name!r} at {at()}: {exc} Check [constraints] (e.g. min_weight * n "
                "<= leverage, max_weight * n >= 1 when fully invested)."
            ) from None
        except cvx.errors.DataError as exc:
            if "negative portfolio value" not in str(exc):
                raise
            raise InfeasibleError(
                f"policy {name!r} went bankrupt at {at()}: its portfolio value fell to zero or "
                "below (check leverage, shorting limits and the data for price spikes)."
            ) from None
        except (cvx.errors.PortfolioOptimizationError, cp.error.SolverError) as exc:
            if isinstance(exc, SolverChainError):  # its message already holds the advice
                raise SolverError(f"policy {name!r} at {at()}: {exc}") from None
            raise SolverError(
                f"policy {name!r} at {at()}: the solver failed ({type(exc).__name__}: "
                f"{exc}). Try another [backtest] solver or a [backtest] fallback_solver list, "
                "or loosen solver_options tolerances."
            ) from None
    except (InfeasibleError, SolverError) as exc:
        exc.partial = wrapper.partial()
        raise
    finally:
        bar.close()
    seconds = (time.perf_counter() - tic) / max(n_periods, 1)
    result = _extract(name, spec, res, market, seconds)
    log = getattr(policy, "solve_log", None)
    if log is not None:
        result.solves = log.counts()
        if log.events:
            c = result.solves
            logger.warning(
                "policy %r: %d of %d solves used a fallback solver and %d an inaccurate "
                "solution (first: %s); counted in run.json 'solves'.",
                name, c["fallback"], c["periods"], c["inaccurate"], ", ".join(c["dates"][:3]),
            )  # fmt: skip
    return result


def _as_entries(items) -> list[tuple[PolicySpec, UserPolicy | None]]:
    """Specs, :class:`UserPolicy` objects and bare cvxportfolio policies as (spec, user) pairs."""
    items = [
        UserPolicy(type(x).__name__, policy=x) if isinstance(x, cvx.policies.Policy) else x
        for x in items
    ]
    like = next((x for x in items if isinstance(x, PolicySpec)), None)
    like = like or next((x.spec for x in items if isinstance(x, UserPolicy) and x.spec), None)
    shared = {}
    if like is not None:
        dumped = like.model_dump()
        shared = {k: dumped[k] for k in ("data", "backtest", "costs")}
    out = []
    for x in items:
        if isinstance(x, PolicySpec):
            out.append((x, None))
        elif isinstance(x, UserPolicy):
            if x.spec is not None:
                spec = x.spec if x.spec.name == x.name else x.spec.with_updates(name=x.name)
            else:
                spec = parse_spec(
                    {"name": x.name, "kind": "custom", **shared}, source=f"<policy {x.name!r}>"
                )
            out.append((spec, x))
        else:
            raise SpecError(
                f"cannot backtest {x!r} ({type(x).__name__}): give PolicySpec objects (load_spec), "
                "mpo.policies.UserPolicy objects or cvxportfolio policies."
            )
    return out


def run_backtests(
    specs: list,
    market: MarketData,
    *,
    start=None,
    end=None,
    include_hold: bool = True,
    progress: bool = True,
    seed: int = 0,
    on_failure: str = "raise",
    on_result=None,
) -> BacktestRun:
    """Backtest every spec (and Hold) on ``market`` over the same window.

    Parameters
    ----------
    specs
        Policy specs (their ``[costs]`` and ``[backtest]`` sections must
        agree), and/or :class:`mpo.policies.UserPolicy` objects and bare
        cvxportfolio policies (``cvx.Policy``), which share the specs' costs,
        window and initial portfolio.
    market
        The data.
    start, end
        Backtest window; ``start`` defaults to the first date with enough
        history for every policy, ``end`` to the last date of the data.
    include_hold
        Add the Hold reference if no spec is a hold policy.
    progress
        Show a tqdm bar per policy.
    seed
        Seed of the bootstrap confidence intervals.
    on_failure
        ``"raise"``: a policy that fails (infeasible, solver failure,
        bankrupt) raises its error; ``"record"``: its reason goes to
        :attr:`BacktestRun.failures`, its record up to the failure to
        :attr:`BacktestRun.partials`, and the other policies run on.
    on_result
        Called with each :class:`PolicyResult` as soon as its backtest ends
        (the CLI saves it at once, so a later failure or kill loses nothing).
    """
    if on_failure not in ("raise", "record"):
        raise SpecError(f"on_failure must be 'raise' or 'record', got {on_failure!r}.")
    if not specs:
        raise SpecError("no policy to backtest: give at least one spec.")
    entries = _as_entries(list(specs))
    if include_hold and not any(kind_of(s).is_reference for s, _ in entries):
        entries.insert(0, (hold_spec(entries[0][0]), None))
    specs = [s for s, _ in entries]
    _check_shared(specs)
    history = {s.name: u.required_history(s) for s, u in entries if u is not None}
    first, last = _window(specs, market, start, end, history)
    cal = market.calendar
    t0, t1 = cal[first], cal[last]
    _warn_in_sample([s for s, u in entries if u is None], t0)
    simulator = make_simulator(specs[0], market)
    h0 = initial_holdings(specs[0], market.tickers, market.cash_key)
    backtest_calendar = cal[first:last]
    results: dict[str, PolicyResult] = {}
    failures: dict[str, str] = {}
    partials: dict[str, pd.DataFrame] = {}
    for spec, user in entries:
        if user is None:
            policy = build_policy(spec, market.tickers, backtest_calendar, data_name=market.name)
        else:
            policy = user.build(spec, market.tickers, backtest_calendar)
        try:
            results[spec.name] = simulate(
                policy,
                spec=spec,
                market=market,
                simulator=simulator,
                start=t0,
                end=t1,
                h0=h0,
                progress=progress,
            )
        except (InfeasibleError, SolverError) as exc:
            if on_failure == "raise":
                raise
            failures[spec.name] = str(exc)
            partials[spec.name] = getattr(exc, "partial", None)
            logger.error("%s", exc)
            continue
        if on_result is not None:
            on_result(results[spec.name])
        ms = 1e3 * results[spec.name].seconds_per_period
        logger.info("%s: %.1f ms per period", spec.name, ms)
    if not results:
        raise InfeasibleError("every policy failed: " + "; ".join(failures.values()))
    run = BacktestRun(
        results=results, market=market, start=t0, end=t1, seed=seed, failures=failures,
        partials={k: v for k, v in partials.items() if v is not None},
    )  # fmt: skip
    _add_metrics(run)
    return run


def result_metrics(r: PolicyResult, seed: int = 0) -> dict:
    """The metrics row of one result: :func:`mpo.metrics.summary` and the Sharpe CI."""
    ppy = periods_per_year(r.returns.index)
    m = summary(r.returns, r.cash_returns, r.turnover, r.costs, r.value, ppy)
    m["sharpe_ci_low"], m["sharpe_ci_high"] = bootstrap_sharpe_ci(_excess(r), ppy, seed=seed)
    return m


def _add_metrics(run: BacktestRun) -> None:
    for r in run.results.values():
        m = result_metrics(r, run.seed)
        m["ms_per_period"] = 1e3 * r.seconds_per_period
        m["fallback_solves"] = r.solves.get("fallback", 0)
        m["inaccurate_solves"] = r.solves.get("inaccurate", 0)
        r.metrics = m
    ref = next((r for r in run.results.values() if kind_of(r.spec).is_reference), None)
    if ref is None:
        return
    for r in run.results.values():
        if r is ref:
            continue
        ppy = periods_per_year(r.returns.index)
        r.metrics["sharpe_vs_hold"] = r.metrics["sharpe"] - ref.metrics["sharpe"]
        low, high = bootstrap_sharpe_ci(
            np.column_stack([_excess(r), _excess(ref)]), ppy, seed=run.seed
        )
        r.metrics["sharpe_vs_hold_ci_low"], r.metrics["sharpe_vs_hold_ci_high"] = low, high


def _excess(r: PolicyResult) -> np.ndarray:
    return (r.returns - r.cash_returns).to_numpy()


def reconcile_costs(result: PolicyResult) -> pd.Series:
    """Per-period ``(gross - net) - costs * (1 + r_cash) / v``; zero up to rounding."""
    v = result.value.reindex(result.returns.index)
    charged = result.costs.sum(axis=1) * (1.0 + result.cash_returns) / v
    return (result.gross_returns - result.returns) - charged

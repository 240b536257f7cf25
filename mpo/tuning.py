"""Optuna tuning of a policy's multipliers on a training window, judged out of sample.

``tune`` searches ``gamma_risk``, ``gamma_trade`` (and optionally
``gamma_hold`` and the planning horizon) with a seeded TPE sampler. Each trial
backtests the policy on the **training window only**, in cvxportfolio's
simulator with the real cost model, and scores it by its Sharpe ratio net of
costs (or the return at a volatility cap, or the information ratio against
Hold). The best trial is then backtested once on the **test window**, beside
Hold, equal weight and the untuned spec.

Honesty rules, all checked:

* the training and test windows are separated by a purge gap at least as long
  as the policy's longest lookback (forecaster, covariance, cost estimators),
  so no test-window decision is based on data that the selection saw;
* tuning workers receive the market data **truncated at the end of the
  training window**: the test window's data cannot reach the objective;
* the winner's training Sharpe is deflated for the number of trials (Deflated
  Sharpe Ratio, Bailey & Lopez de Prado 2014) and its test Sharpe, and its
  difference to Hold's, come with stationary-bootstrap confidence intervals;
* pruning compares trials only on the training sub-periods already simulated.

Studies live in an Optuna storage: a local journal file by default (no server,
safe for several processes), or any SQLAlchemy URL (e.g. PostgreSQL for
workers on many machines). A study interrupted by Ctrl-C or ``kill -9``
resumes with the same ``study_name``: finished trials are kept, a trial whose
worker died is marked failed and its parameters are queued again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import multiprocessing as mp
import os
import re
import socket
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import cvxportfolio as cvx
import cvxpy as cp
import numpy as np
import optuna
import pandas as pd
from optuna.trial import TrialState
from tqdm.auto import tqdm

from mpo.backtest import BacktestRun, _initial_holdings, hold_spec, run_backtests
from mpo.config import TUNABLE, PolicySpec, parse_spec
from mpo.data.market import MarketData
from mpo.errors import ConvergenceError, InfeasibleError, MpoError, SpecError, TuningError
from mpo.io import atomic_path, package_versions, write_json
from mpo.metrics import (
    deflated_sharpe_ratio,
    periods_per_year,
    return_moments,
    sharpe_ratio,
    summary,
)
from mpo.policies import build_policy, cost_model, required_history

__all__ = [
    "TrialFailure",
    "TuningResult",
    "Windows",
    "open_storage",
    "parse_purge",
    "resolve_windows",
    "tune",
]

logger = logging.getLogger(__name__)

#: Volatility overshoot penalty of the ``return_at_risk`` objective (return per unit of vol).
RISK_CAP_PENALTY = 10.0
#: Excess-return volatility (annual) below which an objective is undefined (solver noise).
MIN_ANNUAL_VOL = 1e-6
#: Shortest training window, in periods.
MIN_TRAIN_PERIODS = 20
_FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


class TrialFailure(MpoError):
    """A trial could not be evaluated (solver failure, infeasible, undefined objective).

    Recorded by Optuna as a failed trial with the reason in the user attribute
    ``fail_reason``; the study goes on.
    """


# --------------------------------------------------------------------- windows
@dataclass(frozen=True)
class Windows:
    """Resolved training and test windows (inclusive), on the data's calendar."""

    train_start: pd.Timestamp
    train_end: pd.Timestamp
    test_start: pd.Timestamp
    test_end: pd.Timestamp
    purge: int
    gap: int
    lookback: int

    def describe(self) -> dict:
        return {
            "train": [str(self.train_start.date()), str(self.train_end.date())],
            "test": [str(self.test_start.date()), str(self.test_end.date())],
            "purge_periods": self.purge,
            "gap_periods": self.gap,
            "lookback_periods": self.lookback,
        }


def parse_purge(value: int | str | None) -> int | None:
    """``600``, ``"600"`` or ``"600d"`` (periods, i.e. trading days) -> 600."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise TuningError(
            f"purge must be a number of periods such as 600 or '600d', got {value!r}."
        )
    if isinstance(value, int | np.integer):
        if value < 0:
            raise TuningError(f"purge must be >= 0 periods, got {value}.")
        return int(value)
    m = re.fullmatch(r"\s*(\d+)\s*d?\s*", str(value))
    if not m:
        raise TuningError(
            f"cannot read purge {value!r}: give a number of periods (trading days), e.g. 600 or "
            "'600d'."
        )
    return int(m.group(1))


def _lookback(spec: PolicySpec) -> int:
    """Longest lookback of the spec over the tuned range (the horizon may be tuned)."""
    need = required_history(spec)
    p = spec.tuning.params.get("planning_horizon")
    if p is not None:
        need = max(
            need, required_history(spec.with_updates(objective={"planning_horizon": int(p.high)}))
        )
    return need


def _date(value, what: str) -> pd.Timestamp:
    try:
        return pd.Timestamp(value)
    except (ValueError, TypeError):
        raise TuningError(f"cannot read {what} date {value!r}; use YYYY-MM-DD.") from None


def resolve_windows(
    spec: PolicySpec,
    market: MarketData,
    *,
    train: tuple[str | None, str | None] | None = None,
    test: tuple[str | None, str | None] | None = None,
    purge: int | str | None = None,
) -> Windows:
    """Resolve and check the training and test windows on ``market``'s calendar.

    Precedence: arguments, then the spec's ``[tuning]``, then (test window
    only) the spec's ``[backtest]`` window. A missing training end is placed
    ``purge`` periods before the test start, a missing training start at the
    first date with enough history. Raises :class:`TuningError` when a window
    is empty, the windows overlap or are in the wrong order, the gap between
    them is shorter than the purge, or the purge is shorter than the policy's
    longest lookback.
    """
    t = spec.tuning
    cal = market.calendar
    lookback = _lookback(spec)
    purge_n = parse_purge(purge if purge is not None else t.purge)
    if purge_n is None:
        purge_n = lookback
    if purge_n < lookback:
        raise TuningError(
            f"purge of {purge_n} periods is shorter than the longest lookback of policy "
            f"{spec.name!r} ({lookback} periods: forecaster, covariance and cost estimators); "
            f"test-window decisions would use data the tuning saw. Use --purge {lookback} or more."
        )
    train = train or (None, None)
    test = test or (None, None)
    te_s = test[0] or t.test_start or spec.backtest.start
    te_e = test[1] or t.test_end or (spec.backtest.end if not test[0] else None)
    if te_s is None:
        raise TuningError(
            f"no test window for policy {spec.name!r}: give --test START END, or test_start in "
            "[tuning], or start in [backtest]."
        )
    span = f"data {market.name!r} covers {cal[0].date()} to {cal[-1].date()}"
    ts = int(cal.searchsorted(_date(te_s, "test start")))
    te = (
        int(cal.searchsorted(_date(te_e, "test end"), side="right")) - 1
        if te_e is not None
        else len(cal) - 1
    )
    if ts >= len(cal) or te - ts < 2:
        raise TuningError(
            f"the test window {te_s} to {te_e or 'the end of the data'} holds fewer than 3 "
            f"periods; {span}."
        )
    tr_s = train[0] or t.train_start
    tr_e = train[1] or t.train_end
    if tr_e is not None:
        tre = int(cal.searchsorted(_date(tr_e, "train end"), side="right")) - 1
    else:
        tre = ts - purge_n - 1
    trs = int(cal.searchsorted(_date(tr_s, "train start"))) if tr_s is not None else lookback
    if trs > te:
        raise TuningError(
            f"the training window ({tr_s}) starts after the test window ends ({cal[te].date()}): "
            "the training window must come first."
        )
    if tre >= ts:
        raise TuningError(
            f"the training window (ending {cal[max(tre, 0)].date()}) overlaps the test window "
            f"(starting {cal[ts].date()}); they must be disjoint and separated by a purge of at "
            f"least {purge_n} periods."
        )
    if tre - trs + 1 < MIN_TRAIN_PERIODS:
        where = f"{cal[trs].date()}" if trs < len(cal) else str(tr_s)
        raise TuningError(
            f"the training window from {where} to {cal[max(tre, 0)].date()} holds "
            f"{max(tre - trs + 1, 0)} periods; at least {MIN_TRAIN_PERIODS} are needed (policy "
            f"{spec.name!r} needs {lookback} periods of history before it, a purge of {purge_n} "
            f"periods must separate it from the test start {cal[ts].date()}; {span})."
        )
    if trs < lookback:
        raise TuningError(
            f"the training window starts at {cal[trs].date()} with {trs} periods of history, but "
            f"policy {spec.name!r} needs {lookback}; the earliest training start on {span} is "
            f"{cal[lookback].date()}."
        )
    gap = ts - tre - 1
    if gap < purge_n:
        latest_end = ts - purge_n - 1
        hint = (
            f"end the training window on or before {cal[latest_end].date()}"
            if latest_end >= 0
            else "move the test window later"
        )
        if tre + purge_n + 1 < len(cal):
            hint += f", or start the test window on or after {cal[tre + purge_n + 1].date()}"
        raise TuningError(
            f"the training window ends {cal[tre].date()} and the test window starts "
            f"{cal[ts].date()}: {gap} periods apart, but the purge is {purge_n} periods; {hint}."
        )
    return Windows(cal[trs], cal[tre], cal[ts], cal[te], purge_n, gap, lookback)


# --------------------------------------------------------------------- storage
def open_storage(storage: str | Path, *, heartbeat: bool = True) -> optuna.storages.BaseStorage:
    """An Optuna storage from a journal file path or an SQLAlchemy URL.

    * a path (any string without ``://``), or ``journal:PATH``: a journal file,
      created if missing; safe for several processes on one machine (or a
      shared file system with working locks);
    * ``sqlite:///file.db``: one worker at a time;
    * ``postgresql://user:pw@host/db`` (or any SQLAlchemy URL): many workers,
      many machines; with a heartbeat, so trials of dead workers are failed and
      retried.
    """
    s = str(storage)
    if "://" not in s:
        path = Path(s.removeprefix("journal:")).expanduser()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            backend = optuna.storages.journal.JournalFileBackend(
                str(path), lock_obj=optuna.storages.journal.JournalFileOpenLock(str(path))
            )
        except OSError as exc:
            raise TuningError(
                f"cannot open the journal storage {str(path)!r}: {exc}. Give a writable path with "
                "--storage."
            ) from None
        return optuna.storages.JournalStorage(backend)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            kwargs: dict = {}
            if heartbeat and not s.startswith("sqlite"):
                kwargs = {
                    "heartbeat_interval": 30,
                    "grace_period": 120,
                    "heartbeat_stale_trial_callback": (
                        optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=2)
                    ),
                }
            return optuna.storages.RDBStorage(
                s, engine_kwargs={"pool_pre_ping": True}, skip_table_creation=False, **kwargs
            )
    except ImportError as exc:
        raise TuningError(
            f"storage URL {_redact(s)!r} needs a database driver that is not installed ({exc}); "
            "for PostgreSQL: pip install 'psycopg[binary]'."
        ) from None
    except Exception as exc:  # sqlalchemy errors: unreachable host, bad credentials, bad URL
        raise TuningError(
            f"cannot reach storage {_redact(s)!r}: {type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}. Check that the server is running "
            "and the URL (host, port, user, password, database) is right; for one machine, omit "
            "--storage to use a local journal file."
        ) from None


def _redact(url: str) -> str:
    return re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", url)


# ---------------------------------------------------------------- the objective
def _objective_value(kind: str, returns, cash, hold, ppy: float, risk_cap: float) -> float:
    excess = returns - cash
    if np.std(excess) * np.sqrt(ppy) < MIN_ANNUAL_VOL:  # all in cash: solver noise, no Sharpe
        return float("nan")
    if kind == "sharpe":
        value = sharpe_ratio(excess, ppy)
    elif kind == "information_ratio":
        value = sharpe_ratio(returns - hold, ppy)
    else:  # return_at_risk
        vol = float(np.std(returns, ddof=1) * np.sqrt(ppy))
        ann = float(np.mean(excess) * ppy)
        value = ann - RISK_CAP_PENALTY * max(0.0, vol - risk_cap)
    return value


@dataclass
class _Job:
    """Everything a worker process needs (picklable)."""

    spec: PolicySpec
    market: MarketData  # truncated at the end of the training window
    windows: Windows
    objective: str
    risk_cap: float
    storage: str
    study_name: str
    n_trials: int
    seed: int
    prune: bool
    sub_periods: int


class _Watch(cvx.policies.Policy):
    """Wraps a policy: records the portfolio value each period and prunes at sub-period ends."""

    def __init__(self, policy, on_value):
        self.policy = policy
        self._on_value = on_value

    def values_in_time(self, t, current_portfolio_value, past_returns, **kwargs):
        self._on_value(t, current_portfolio_value, past_returns)
        return self.policy.current_value


class _TrialRunner:
    """Backtests trial parameters on the training window (one per worker process)."""

    def __init__(self, job: _Job):
        self.job = job
        m = job.market
        if m.calendar[-1] > job.windows.train_end:
            raise TuningError("internal: tuning data must end with the training window.")
        self.cal = m.calendar[m.calendar >= job.windows.train_start]
        self.simulator = cvx.MarketSimulator(
            market_data=m.to_cvxportfolio(), costs=cost_model(job.spec).simulator_costs()
        )
        self.h0 = _initial_holdings(job.spec, m.tickers, m.cash_key)
        self.ppy = periods_per_year(self.cal[:-1])  # the dates of the returns
        self.cash = m.cash_return
        self._hold: pd.Series | None = None
        n = len(self.cal) - 1
        k = job.sub_periods if job.prune else 1
        self.checkpoints = sorted({max(2, round(n * i / k)) for i in range(1, k)})
        self.worker = f"{socket.gethostname()}:{os.getpid()}"

    def spec_for(self, params: dict) -> PolicySpec:
        return _with_params(self.job.spec, params)

    def hold_returns(self) -> pd.Series:
        if self._hold is None:
            res = self._simulate(build_policy(hold_spec(self.job.spec), self.job.market.tickers))
            self._hold = res.returns
        return self._hold

    def _simulate(self, policy):
        try:
            return self.simulator.backtest(
                policy, start_time=self.cal[0], end_time=self.cal[-1], h=self.h0
            )
        except (cvx.errors.ProgramInfeasible, cvx.errors.ProgramUnbounded) as exc:
            raise TrialFailure(f"infeasible or unbounded: {exc}") from None
        except (cvx.errors.PortfolioOptimizationError, cp.error.SolverError) as exc:
            raise TrialFailure(f"solver failure: {type(exc).__name__}: {exc}") from None
        except (InfeasibleError, ConvergenceError, np.linalg.LinAlgError) as exc:
            raise TrialFailure(f"{type(exc).__name__}: {exc}") from None

    def suggest(self, trial: optuna.Trial) -> dict:
        params = {}
        for name, p in self.job.spec.tuning.params.items():
            if name == "planning_horizon":
                params[name] = trial.suggest_int(name, int(p.low), int(p.high), log=p.log)
            else:
                params[name] = trial.suggest_float(name, p.low, p.high, log=p.log)
        return params

    def evaluate(self, params: dict, trial: optuna.Trial | None = None) -> tuple[float, dict]:
        """Objective value and train-window metrics of ``params`` (prunes through ``trial``)."""
        job = self.job
        try:
            spec = self.spec_for(params)
        except SpecError as exc:
            raise TrialFailure(str(exc)) from None
        hold = self.hold_returns() if job.objective == "information_ratio" else None
        values: list[float] = []
        cash_seen: list[float] = []

        def on_value(t, value, past_returns):
            values.append(float(value))
            if len(values) > 1:
                cash_seen.append(float(past_returns.iloc[-1][self.job.market.cash_key]))
            step = len(values) - 1  # periods completed
            if trial is not None and step in self.checkpoints:
                r = np.asarray(values[1:]) / np.asarray(values[:-1]) - 1.0
                h = hold.iloc[:step].to_numpy() if hold is not None else None
                v = _objective_value(
                    job.objective, r, np.asarray(cash_seen), h, self.ppy, job.risk_cap
                )
                if np.isfinite(v):
                    trial.report(v, step)
                    if trial.should_prune():
                        raise optuna.TrialPruned(f"pruned after {step} periods at {v:.4f}")

        policy = build_policy(spec, job.market.tickers, self.cal[:-1])
        res = self._simulate(_Watch(policy, on_value))
        r = res.returns
        cash = self.cash.reindex(r.index).to_numpy()
        h = hold.reindex(r.index).to_numpy() if hold is not None else None
        value = _objective_value(job.objective, r.to_numpy(), cash, h, self.ppy, job.risk_cap)
        if not np.isfinite(value):
            raise TrialFailure(
                f"the {job.objective} objective is undefined (returns without variance: did the "
                "policy stay in cash?)"
            )
        m = summary(
            r,
            self.cash.reindex(r.index),
            res.turnover.reindex(r.index),
            pd.DataFrame(res.costs, index=r.index).fillna(0.0),
            res.v,
            self.ppy,
        )
        attrs = {
            "annual_return": m["annual_return"],
            "annual_volatility": m["annual_volatility"],
            "sharpe": m["sharpe"],
            "max_drawdown": m["max_drawdown"],
            "annual_turnover": m["annual_turnover"],
            "moments": return_moments(r.to_numpy() - cash),
        }
        for name, cost in (("SpreadCost", "spread_cost"), ("ImpactCost", "impact_cost")):
            if f"{name}_cost" in m:
                attrs[cost] = m[f"{name}_cost"]
        return float(value), attrs

    def __call__(self, trial: optuna.Trial) -> float:
        trial.set_user_attr("worker", self.worker)
        tic = time.perf_counter()
        params = self.suggest(trial)
        try:
            value, attrs = self.evaluate(params, trial)
        except TrialFailure as exc:
            trial.set_user_attr("fail_reason", str(exc))
            logger.warning("trial %d failed: %s", trial.number, exc)
            raise
        for k, v in attrs.items():
            trial.set_user_attr(k, v)
        trial.set_user_attr("seconds", time.perf_counter() - tic)
        return value


# ------------------------------------------------------------------ the study
def _sampler(job: _Job, worker: int, n_existing: int) -> optuna.samplers.BaseSampler:
    # A fresh seed per (run seed, worker, study size): a resumed or parallel worker does not
    # replay the random start-up points of another.
    seed = int.from_bytes(
        hashlib.sha256(f"{job.seed}:{worker}:{n_existing}".encode()).digest()[:4], "little"
    )
    kwargs = {}
    if job.objective == "return_at_risk":
        cap = job.risk_cap
        kwargs["constraints_func"] = lambda t: [
            t.user_attrs.get("annual_volatility", math.inf) - cap
        ]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(
            seed=seed, n_startup_trials=min(10, max(job.n_trials // 3, 1)), **kwargs
        )


def _pruner(job: _Job) -> optuna.pruners.BasePruner:
    if not job.prune:
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(n_startup_trials=8, n_warmup_steps=0)


class _Stop:
    """Stops a worker once the study has ``n`` finished trials (or ``n`` failures)."""

    def __init__(self, n: int):
        self.n = n

    def __call__(self, study: optuna.Study, trial) -> None:
        trials = study.get_trials(deepcopy=False, states=(*_FINISHED, TrialState.FAIL))
        done = sum(t.state in _FINISHED for t in trials)
        failed = len(trials) - done
        if done >= self.n or failed >= max(self.n, 5):
            study.stop()


def _work(job: _Job, worker: int) -> None:
    """Body of one worker (a separate process when ``workers > 1``)."""
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = open_storage(job.storage)
    n_existing = len(optuna.load_study(study_name=job.study_name, storage=storage).trials)
    study = optuna.load_study(
        study_name=job.study_name,
        storage=storage,
        sampler=_sampler(job, worker, n_existing),
        pruner=_pruner(job),
    )
    if _count(study)[0] >= job.n_trials:
        return
    study.optimize(_TrialRunner(job), catch=(TrialFailure,), callbacks=[_Stop(job.n_trials)])


def _count(study: optuna.Study) -> tuple[int, int]:
    trials = study.get_trials(deepcopy=False)
    return sum(t.state in _FINISHED for t in trials), sum(
        t.state == TrialState.FAIL for t in trials
    )


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a killed child not yet reaped is a zombie: dead
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def recover_stale_trials(study: optuna.Study, storage) -> list[int]:
    """Fail the running trials of dead workers on this host and queue their parameters again.

    A worker killed with ``kill -9`` leaves its trial RUNNING forever in a
    journal file. Trials of live workers, and of other hosts (whose liveness
    we cannot see; RDB storages fail those by heartbeat), are left alone.
    Returns the numbers of the recovered trials.
    """
    host = socket.gethostname()
    study_id = storage.get_study_id_from_name(study.study_name)
    recovered = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = t.user_attrs.get("worker", "")
        w_host, _, pid = worker.rpartition(":")
        if w_host != host or not pid.isdigit() or _pid_alive(int(pid)):
            continue
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, t.number)
        storage.set_trial_user_attr(trial_id, "fail_reason", f"worker {worker} died")
        storage.set_trial_state_values(trial_id, TrialState.FAIL)
        if t.params:
            study.enqueue_trial(t.params, user_attrs={"retry_of": t.number})
        recovered.append(t.number)
        logger.warning(
            "trial %d of study %r was left running by dead worker %s: marked failed, its "
            "parameters are queued again",
            t.number,
            study.study_name,
            worker,
        )
    return recovered


def _study_config(job: _Job) -> dict:
    spec = job.spec.model_dump()
    spec.pop("tuning")
    spec.pop("description", None)
    return {
        "spec": spec,
        "search_space": {k: v.model_dump() for k, v in job.spec.tuning.params.items()},
        "objective": job.objective,
        "risk_cap": job.risk_cap if job.objective == "return_at_risk" else None,
        "windows": job.windows.describe(),
        "train_data_fingerprint": job.market.fingerprint(),
        "prune": job.prune,
        "sub_periods": job.sub_periods,
    }


def _check_config(study: optuna.Study, config: dict) -> None:
    old = study.user_attrs.get("mpo_config")
    if old is None:
        study.set_user_attr("mpo_config", json.loads(json.dumps(config, default=str)))
        return
    new = json.loads(json.dumps(config, default=str))
    diff = _leaf_diff(old, new)
    if diff:
        shown = "; ".join(diff[:8]) + (f"; and {len(diff) - 8} more" if len(diff) > 8 else "")
        raise TuningError(
            f"study {study.study_name!r} was created with a different configuration ({shown}). "
            "Resume it with the original settings, or start a new study with --study NAME."
        )


def _leaf_diff(old, new, prefix: str = "") -> list[str]:
    """``'a.b: study has X, now Y'`` for every differing leaf of two JSON-like dicts."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for k in sorted(set(old) | set(new), key=str):
            out += _leaf_diff(old.get(k), new.get(k), f"{prefix}{k}.")
        return out
    if old != new:
        return [f"{prefix.rstrip('.')}: study has {old!r}, now {new!r}"]
    return []


def _run_workers(job: _Job, workers: int, progress: bool, timeout: float | None) -> None:
    storage = open_storage(job.storage)
    study = optuna.load_study(study_name=job.study_name, storage=storage)
    done0, _ = _count(study)
    bar = tqdm(
        total=job.n_trials, initial=min(done0, job.n_trials), desc="trials", disable=not progress
    )
    try:
        if workers == 1 and timeout is None:
            n_existing = len(study.trials)
            study = optuna.load_study(
                study_name=job.study_name,
                storage=storage,
                sampler=_sampler(job, 0, n_existing),
                pruner=_pruner(job),
            )

            def tick(study, trial):
                bar.update(_count(study)[0] - bar.n)

            study.optimize(
                _TrialRunner(job), catch=(TrialFailure,), callbacks=[_Stop(job.n_trials), tick]
            )
            return
        ctx = mp.get_context("spawn")
        procs = [ctx.Process(target=_work, args=(job, i), daemon=True) for i in range(workers)]
        for p in procs:
            p.start()
        start = time.monotonic()
        try:
            while any(p.is_alive() for p in procs):
                time.sleep(0.5)
                bar.update(min(_count(study)[0], job.n_trials) - bar.n)
                if timeout is not None and time.monotonic() - start > timeout:
                    logger.warning("timeout of %.0f s reached; stopping the workers", timeout)
                    break
        finally:
            for p in procs:
                if p.is_alive():
                    p.terminate()
                p.join()
            recover_stale_trials(study, storage)
        codes = [p.exitcode for p in procs]
        if any(c not in (0, None, -15) for c in codes):
            logger.warning("worker exit codes: %s", codes)
    finally:
        bar.close()


# ------------------------------------------------------------------- results
@dataclass
class TuningResult:
    """A finished tuning run: the study, the winner and its out-of-sample test."""

    study_name: str
    storage: str
    windows: Windows
    objective: str
    best_params: dict
    best_value: float
    best_number: int
    train_metrics: dict
    deflated: dict
    trials: pd.DataFrame
    test: BacktestRun | None
    config: dict
    seed: int
    spec: PolicySpec
    tuned_spec: PolicySpec
    plots: dict = field(default_factory=dict)

    def table(self) -> pd.DataFrame:
        """The test-window metrics table (Hold first)."""
        if self.test is None:
            raise TuningError("this tuning run has no test-window backtest (evaluate=False).")
        return self.test.table()

    def summary(self) -> dict:
        return {
            "study": self.study_name,
            "storage": _redact(self.storage),
            "objective": self.objective,
            "windows": self.windows.describe(),
            "best_trial": self.best_number,
            "best_params": self.best_params,
            "best_train_value": self.best_value,
            "train_metrics": self.train_metrics,
            "deflated_sharpe": self.deflated,
            "n_finished": int(self.trials["state"].isin(["COMPLETE", "PRUNED"]).sum())
            if len(self.trials)
            else 0,
            "n_failed": int((self.trials["state"] == "FAIL").sum()) if len(self.trials) else 0,
            "test_metrics": self.table().to_dict(orient="index") if self.test else None,
            "config": self.config,
            "seed": self.seed,
            "versions": package_versions(),
            "created": pd.Timestamp.now().isoformat(timespec="seconds"),
        }

    def save(self, run_dir: str | Path, spec_path: str | Path | None = None) -> Path:
        """Write the trial history, summary, test backtest and plots to ``run_dir``.

        With ``spec_path``, also write ``<spec>.tuned.json`` next to the spec
        (as cvxportfolio keeps ``*_hyper_parameters.json``). Every file is
        written atomically.
        """
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        with atomic_path(run_dir / "trials.csv") as tmp:
            self.trials.to_csv(tmp, index=False)
        summary_ = self.summary()
        write_json(summary_, run_dir / "tuning.json")
        if self.test is not None:
            from mpo.report import write_report

            self.test.save(run_dir / "test")
            w = self.windows
            write_report(
                self.test,
                run_dir / "report.html",
                title=f"mpo tune {self.spec.name}: test window",
                notes=(
                    f"Tuned on {w.train_start.date()} to {w.train_end.date()} ({self.objective}, "
                    f"study {self.study_name!r}); purge {w.gap} periods; best parameters "
                    f"{self.best_params}; deflated Sharpe ratio of the selection "
                    f"{self.deflated['dsr']:.3f} over {self.deflated['n_trials']} trials."
                ),
            )
        self.plots = _plots(self, run_dir)
        if spec_path is not None:
            target = Path(spec_path).with_suffix(".tuned.json")
            try:
                write_json(
                    {
                        "spec": str(spec_path),
                        "params": self.best_params,
                        **{k: v for k, v in summary_.items() if k != "config"},
                        "run_dir": str(run_dir),
                    },
                    target,
                )
            except OSError as exc:
                logger.warning("could not write %s: %s", target, exc)
        return run_dir


def _trials_frame(study: optuna.Study) -> pd.DataFrame:
    rows = []
    for t in study.get_trials(deepcopy=False):
        row = {
            "number": t.number,
            "state": t.state.name,
            "value": t.value,
            **{f"param_{k}": v for k, v in t.params.items()},
            "datetime_start": t.datetime_start,
            "datetime_complete": t.datetime_complete,
        }
        for k, v in t.user_attrs.items():
            if k == "moments":
                row["sharpe_per_period"] = v.get("sharpe")
            elif not isinstance(v, dict | list):
                row[k] = v
        if t.intermediate_values:
            row["last_step"] = max(t.intermediate_values)
        rows.append(row)
    return pd.DataFrame(rows)


def _best(study: optuna.Study, objective: str, risk_cap: float):
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not done:
        fails = study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
        reason = next((t.user_attrs.get("fail_reason") for t in fails if t.user_attrs), None)
        raise TuningError(
            f"study {study.study_name!r} has no completed trial"
            + (f"; trials failed, e.g.: {reason}" if reason else "")
            + ". Check the spec's constraints and the data."
        )
    if objective == "return_at_risk":
        feasible = [t for t in done if t.user_attrs.get("annual_volatility", np.inf) <= risk_cap]
        if feasible:
            done = feasible
        else:
            logger.warning(
                "no trial met the volatility cap %.2f; taking the best penalised one", risk_cap
            )
    return max(done, key=lambda t: t.value)


def tune(
    spec: PolicySpec,
    market: MarketData,
    *,
    trials: int | None = None,
    train: tuple[str | None, str | None] | None = None,
    test: tuple[str | None, str | None] | None = None,
    purge: int | str | None = None,
    storage: str | Path | None = None,
    study_name: str | None = None,
    workers: int = 1,
    seed: int = 0,
    objective: str | None = None,
    evaluate: bool = True,
    progress: bool = True,
    timeout: float | None = None,
) -> TuningResult:
    """Tune ``spec``'s multipliers on the training window and test the winner.

    Parameters
    ----------
    spec
        An ``spo`` or ``mpo`` spec; its ``[tuning]`` section gives the search
        space and defaults.
    market
        The whole data set; workers only ever receive its part up to the end
        of the training window.
    trials
        Finished (completed or pruned) trials the study should have; a
        resumed study runs only the missing ones.
    train, test, purge
        Windows (inclusive dates) and purge gap in periods; see
        :func:`resolve_windows`.
    storage
        Journal file path or SQLAlchemy URL (:func:`open_storage`); default
        ``runs/studies.journal``.
    study_name
        Default ``<spec name>-<objective>``. An existing study of that name is
        resumed if its configuration matches, else :class:`TuningError`.
    workers
        Worker processes running trials in parallel on this machine (more
        machines: run ``mpo tune`` on each with the same PostgreSQL storage).
    seed
        Seeds the samplers and the bootstrap.
    evaluate
        Backtest the winner on the test window beside Hold, equal weight and
        the untuned spec.
    """
    if spec.kind not in ("spo", "mpo", "dmpo_mpo", "dmpo_qp"):
        raise TuningError(
            f"policy {spec.name!r} is kind {spec.kind!r}: only spo, mpo, dmpo_mpo (multipliers) "
            "and dmpo_qp (turnover limit) policies have parameters to tune."
        )
    if spec.kind == "dmpo_qp" and set(spec.tuning.params) != {"delta"}:
        raise TuningError(
            f"policy {spec.name!r} (dmpo_qp) executes the trained QP, which has no cvxportfolio "
            "multipliers; tune its inference turnover limit: [tuning.params.delta] low/high, "
            f"and no other parameter (got {sorted(spec.tuning.params)})."
        )
    if workers < 1:
        raise TuningError(f"workers must be >= 1, got {workers}.")
    n_trials = trials if trials is not None else spec.tuning.trials
    if n_trials < 1:
        raise TuningError(f"trials must be >= 1, got {n_trials}.")
    kind = objective or spec.tuning.objective
    if kind not in ("sharpe", "return_at_risk", "information_ratio"):
        raise TuningError(
            f"unknown objective {kind!r}; choose sharpe, return_at_risk or information_ratio."
        )
    windows = resolve_windows(spec, market, train=train, test=test, purge=purge)
    storage = str(storage) if storage is not None else str(Path("runs") / "studies.journal")
    if workers > 1 and storage.startswith("sqlite"):
        raise TuningError(
            f"SQLite storage {storage!r} supports one worker at a time (concurrent writers lock "
            "it); use the default journal file or a PostgreSQL URL with --workers > 1."
        )
    study_name = study_name or f"{spec.name}-{kind}"
    job = _Job(
        spec=spec,
        market=market.slice(end=windows.train_end),
        windows=windows,
        objective=kind,
        risk_cap=spec.tuning.risk_cap,
        storage=storage,
        study_name=study_name,
        n_trials=n_trials,
        seed=seed,
        prune=spec.tuning.prune,
        sub_periods=spec.tuning.sub_periods,
    )
    store = open_storage(storage)
    study = optuna.create_study(
        study_name=study_name, storage=store, direction="maximize", load_if_exists=True
    )
    config = _study_config(job)
    _check_config(study, config)
    recover_stale_trials(study, store)
    done, failed = _count(study)
    logger.info(
        "study %r: %d finished, %d failed trials; target %d", study_name, done, failed, n_trials
    )
    if done < n_trials:
        _run_workers(job, workers, progress, timeout)
    study = optuna.load_study(study_name=study_name, storage=store)
    best = _best(study, kind, job.risk_cap)
    frame = _trials_frame(study)
    sharpes = [
        t.user_attrs["moments"]["sharpe"]
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if "moments" in t.user_attrs
    ]
    # N counts every finished trial: pruned ones were tried (and rejected) too.
    deflated = deflated_sharpe_ratio(
        best.user_attrs["moments"], np.asarray(sharpes), n_trials=_count(study)[0]
    )
    tuned = _tuned_spec(spec, best.params)
    test_run = None
    if evaluate:
        test_run = _evaluate(spec, tuned, market, windows, progress, seed)
    train_metrics = {
        k: best.user_attrs[k]
        for k in ("annual_return", "annual_volatility", "sharpe", "annual_turnover")
        if k in best.user_attrs
    }
    return TuningResult(
        study_name=study_name,
        storage=storage,
        windows=windows,
        objective=kind,
        best_params=dict(best.params),
        best_value=float(best.value),
        best_number=best.number,
        train_metrics=train_metrics,
        deflated=deflated,
        trials=frame,
        test=test_run,
        config=config,
        seed=seed,
        spec=spec,
        tuned_spec=tuned,
    )


def _with_params(spec: PolicySpec, params: dict, **top) -> PolicySpec:
    """``spec`` with tuned ``params`` written into their sections (see ``TUNABLE``)."""
    sections: dict[str, dict] = {}
    for name, value in params.items():
        value = int(value) if name == "planning_horizon" else value
        sections.setdefault(TUNABLE[name], {})[name] = value
    return spec.with_updates(**sections, **top)


def _tuned_spec(spec: PolicySpec, params: dict) -> PolicySpec:
    return _with_params(spec, params, name=f"{spec.name}-tuned")


def _evaluate(spec, tuned, market, windows: Windows, progress: bool, seed: int) -> BacktestRun:
    dumped = spec.model_dump()
    shared = {k: dumped[k] for k in ("data", "backtest", "costs")}
    ew = parse_spec(
        {"name": "equal_weight", "kind": "equal_weight", **shared}, source="<built-in equal_weight>"
    )
    untuned = parse_spec({**dumped, "name": f"{spec.name}-untuned"}, source="<untuned spec>")
    return run_backtests(
        [hold_spec(spec), ew, untuned, tuned],
        market,
        start=windows.test_start,
        end=windows.test_end,
        progress=progress,
        seed=seed,
    )


# --------------------------------------------------------------------- plots
def _plots(result: TuningResult, run_dir: Path) -> dict:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    out: dict[str, str] = {}
    df = result.trials
    done = df[df["state"] == "COMPLETE"] if len(df) else df
    if done.empty:
        return out
    obj = result.objective

    def save(fig, name):
        path = run_dir / f"{name}.png"
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
        plt.close(fig)
        out[name] = str(path)

    # optimisation history
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.scatter(done["number"], done["value"], s=14, label="completed trial")
    best_so_far = done.sort_values("number")["value"].cummax()
    ax.step(
        done.sort_values("number")["number"],
        best_so_far,
        where="post",
        color="C3",
        label="best so far",
    )
    pruned = df[df["state"] == "PRUNED"]
    if len(pruned):
        ax.scatter(
            pruned["number"],
            np.full(len(pruned), done["value"].min()),
            marker="x",
            color="grey",
            s=14,
            label="pruned (position not a value)",
        )
    ax.set_xlabel("trial")
    ax.set_ylabel(f"train {obj}")
    ax.set_title("Optimisation history (training window)")
    ax.legend(fontsize=8)
    save(fig, "history")

    # slices: objective against each parameter (log axes where searched on a log scale)
    params = [c for c in done.columns if c.startswith("param_")]
    fig, axes = plt.subplots(1, len(params), figsize=(4 * len(params), 3.5), squeeze=False)
    for ax, col in zip(axes[0], params, strict=True):
        name = col.removeprefix("param_")
        ax.scatter(done[col], done["value"], c=done["number"], cmap="viridis", s=14)
        p = result.spec.tuning.params.get(name)
        if p is not None and p.log:
            ax.set_xscale("log")
        ax.set_xlabel(name)
        ax.set_ylabel(f"train {obj}")
    fig.suptitle("Slices (colour: trial number)")
    save(fig, "slices")

    # importances (fANOVA), when there are enough trials
    if len(done) >= 4 and len(params) >= 2:
        try:
            study = optuna.load_study(
                study_name=result.study_name, storage=open_storage(result.storage)
            )
            imp = optuna.importance.get_param_importances(study)
            fig, ax = plt.subplots(figsize=(5, 0.6 + 0.4 * len(imp)))
            names = list(imp)[::-1]
            ax.barh(names, [imp[n] for n in names])
            ax.set_xlabel("importance (fANOVA)")
            save(fig, "importances")
        except (RuntimeError, ValueError) as exc:  # e.g. too few distinct values
            logger.info("no importance plot: %s", exc)

    # risk/return cloud with the Pareto front
    if {"annual_volatility", "annual_return"} <= set(done.columns):
        vol = done["annual_volatility"].to_numpy()
        ret = done["annual_return"].to_numpy()
        order = np.argsort(vol)
        front, best_ret = [], -np.inf
        for i in order:
            if ret[i] > best_ret:
                front.append(i)
                best_ret = ret[i]
        fig, ax = plt.subplots(figsize=(6, 4.5))
        sc = ax.scatter(vol, ret, c=done["value"], cmap="viridis", s=16)
        fig.colorbar(sc, label=f"train {obj}")
        ax.plot(vol[front], ret[front], "-o", color="C3", ms=4, label="Pareto front")
        b = done[done["number"] == result.best_number]
        ax.scatter(
            b["annual_volatility"],
            b["annual_return"],
            marker="*",
            s=180,
            color="C1",
            edgecolor="k",
            label="selected",
            zorder=5,
        )
        ax.set_xlabel("annual volatility (train)")
        ax.set_ylabel("annual return (train)")
        ax.xaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))
        ax.yaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))
        ax.set_title("Trials on the training window")
        ax.legend(fontsize=8)
        save(fig, "risk_return")
    return out

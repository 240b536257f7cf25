"""One tuning trial: backtest suggested parameters on the training window and score them.

The backtest is :func:`mpo.backtest.simulate`, the loop every caller shares;
pruning happens through its ``on_period`` callback, at the ends of the
training window's sub-periods, on the periods already simulated.
"""

from __future__ import annotations

import logging
import os
import socket
import time

import numpy as np
import optuna
import pandas as pd
from optuna.trial import TrialState

from mpo.backtest import PolicyResult, hold_spec, initial_holdings, make_simulator, simulate
from mpo.config import PolicySpec
from mpo.errors import (
    ConvergenceError,
    InfeasibleError,
    MpoError,
    SolverError,
    SpecError,
    TuningError,
)
from mpo.metrics import periods_per_year, return_moments, summary
from mpo.policies import build_policy
from mpo.tuning.job import TuningJob, with_params
from mpo.tuning.objective import get_objective

__all__ = ["TrialFailure", "TrialRunner", "running_here"]

logger = logging.getLogger(__name__)

#: (study name, trial number) of the trials this process is evaluating right now; a trial
#: that the storage says this process runs but that is not here was abandoned (its
#: ``tune`` call failed, e.g. on a full disk) and is recovered like a dead worker's.
_RUNNING_HERE: set[tuple[str, int]] = set()


def running_here(study_name: str, number: int) -> bool:
    """Whether this process is evaluating trial ``number`` of ``study_name`` right now."""
    return (study_name, number) in _RUNNING_HERE


class TrialFailure(MpoError):
    """A trial could not be evaluated (solver failure, infeasible, undefined objective).

    Recorded by Optuna as a failed trial with the reason in the user attribute
    ``fail_reason``; the study goes on.
    """


class TrialRunner:
    """Backtests trial parameters on the training window (one per worker process).

    Parameters
    ----------
    job
        The study's settings; ``job.market`` must end with the training window.
    """

    def __init__(self, job: TuningJob) -> None:
        self.job = job
        m = job.market
        if m.calendar[-1] > job.windows.train_end:
            raise TuningError("internal: tuning data must end with the training window.")
        self.objective = get_objective(job.objective)
        self.cal = m.calendar[m.calendar >= job.windows.train_start]
        self.simulator = make_simulator(job.spec, m)
        self.h0 = initial_holdings(job.spec, m.tickers, m.cash_key)
        self.ppy = periods_per_year(self.cal[:-1])  # the dates of the returns
        self._hold: pd.Series | None = None
        n = len(self.cal) - 1
        k = job.sub_periods if job.prune else 1
        self.checkpoints = sorted({max(2, round(n * i / k)) for i in range(1, k)})
        self.worker = f"{socket.gethostname()}:{os.getpid()}"

    def spec_for(self, params: dict) -> PolicySpec:
        """The tuned spec with trial ``params``."""
        return with_params(self.job.spec, params)

    def hold_returns(self) -> pd.Series:
        """Hold's returns on the training window (simulated once)."""
        if self._hold is None:
            spec = hold_spec(self.job.spec)
            self._hold = self._simulate(build_policy(spec, self.job.market.tickers), spec).returns
        return self._hold

    def _simulate(self, policy, spec: PolicySpec, on_period=None) -> PolicyResult:
        try:
            return simulate(
                policy,
                spec=spec,
                market=self.job.market,
                simulator=self.simulator,
                start=self.cal[0],
                end=self.cal[-1],
                h0=self.h0,
                on_period=on_period,
            )
        except InfeasibleError as exc:
            raise TrialFailure(f"infeasible: {exc}") from None
        except SolverError as exc:
            raise TrialFailure(f"solver failure: {exc}") from None
        except (ConvergenceError, np.linalg.LinAlgError) as exc:
            raise TrialFailure(f"{type(exc).__name__}: {exc}") from None

    def suggest(self, trial: optuna.Trial) -> dict:
        """Parameters suggested by ``trial`` over the ``[tuning.params]`` search space."""
        params = {}
        for name, p in self.job.spec.tuning.params.items():
            if name == "planning_horizon":
                params[name] = trial.suggest_int(name, int(p.low), int(p.high), log=p.log)
            else:
                params[name] = trial.suggest_float(name, p.low, p.high, log=p.log)
        return params

    def _pruner(self, trial: optuna.Trial | None, hold: pd.Series | None):
        """The ``on_period`` callback: reports the objective at checkpoints, prunes."""
        if trial is None or not self.checkpoints:
            return None
        tuning, cash_key = self.job.spec.tuning, self.job.market.cash_key
        values: list[float] = []
        cash_seen: list[float] = []

        def on_period(t, value, past_returns) -> None:
            values.append(float(value))
            if len(values) > 1:
                cash_seen.append(float(past_returns.iloc[-1][cash_key]))
            step = len(values) - 1  # periods completed
            if step not in self.checkpoints:
                return
            r = np.asarray(values[1:]) / np.asarray(values[:-1]) - 1.0
            h = hold.iloc[:step].to_numpy() if hold is not None else None
            v = self.objective.value(r, np.asarray(cash_seen), h, self.ppy, tuning)
            if np.isfinite(v):
                trial.report(v, step)
                if trial.should_prune():
                    raise optuna.TrialPruned(f"pruned after {step} periods at {v:.4f}")

        return on_period

    def evaluate(self, params: dict, trial: optuna.Trial | None = None) -> tuple[float, dict]:
        """Objective value and training-window metrics of ``params`` (prunes through ``trial``).

        Returns
        -------
        value : float
            The objective's value.
        attrs : dict
            The trial's user attributes: annual return, volatility, Sharpe,
            drawdown, turnover, return moments (for the deflated Sharpe
            ratio) and ``<term>_cost`` for every cost term the simulator
            charged.

        Raises
        ------
        TrialFailure
            When the spec is invalid, the problem infeasible, the solver fails
            or the objective is undefined.
        """
        job = self.job
        try:
            spec = self.spec_for(params)
        except SpecError as exc:
            raise TrialFailure(str(exc)) from None
        hold = self.hold_returns() if self.objective.needs_hold else None
        policy = build_policy(spec, job.market.tickers, self.cal[:-1])
        res = self._simulate(policy, spec, self._pruner(trial, hold))
        r, cash = res.returns, res.cash_returns.reindex(res.returns.index)
        h = hold.reindex(r.index).to_numpy() if hold is not None else None
        value = self.objective.value(r.to_numpy(), cash.to_numpy(), h, self.ppy, job.spec.tuning)
        if not np.isfinite(value):
            raise TrialFailure(
                f"the {job.objective} objective is undefined (returns without variance: did the "
                "policy stay in cash?)"
            )
        m = summary(r, cash, res.turnover, res.costs, res.value, self.ppy)
        attrs = {
            "annual_return": m["annual_return"],
            "annual_volatility": m["annual_volatility"],
            "sharpe": m["sharpe"],
            "max_drawdown": m["max_drawdown"],
            "annual_turnover": m["annual_turnover"],
            "moments": return_moments(r.to_numpy() - cash.to_numpy()),
            **{f"{col}_cost": m[f"{col}_cost"] for col in res.costs.columns},
        }
        return float(value), attrs

    def _refuse_surplus(self, trial: optuna.Trial) -> None:
        """Fail ``trial`` unevaluated if earlier trials already fill the study's target.

        Several ``mpo tune`` commands (or workers) on one study each stop at the
        target, but trials they started at the same moment would overshoot it:
        a trial whose earlier-numbered finished or running trials already number
        ``n_trials`` is surplus, recorded as failed with that reason, and its
        worker stops.
        """
        ahead = sum(
            1
            for t in trial.study.get_trials(
                deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
            )
            if t.number < trial.number
        )
        if ahead >= self.job.n_trials:
            trial.set_user_attr("surplus", True)
            try:
                trial.study.stop()
            except RuntimeError:  # called outside Study.optimize (a direct call)
                pass
            raise TrialFailure(
                f"surplus: the study already has {ahead} finished or running trials for a target "
                f"of {self.job.n_trials}"
            )

    def __call__(self, trial: optuna.Trial) -> float:
        """Optuna's objective: suggest, evaluate, record the user attributes."""
        key = (trial.study.study_name, trial.number)
        _RUNNING_HERE.add(key)
        try:
            return self._run(trial)
        finally:
            _RUNNING_HERE.discard(key)

    def _run(self, trial: optuna.Trial) -> float:
        trial.set_user_attr("worker", self.worker)
        self._refuse_surplus(trial)
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

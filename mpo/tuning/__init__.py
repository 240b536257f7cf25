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

Modules (each one responsibility; the loop apart from its pictures):

* :mod:`~mpo.tuning.windows`: training/test windows and the purge;
* :mod:`~mpo.tuning.storage`: Optuna storages, dead-worker recovery, resume checks;
* :mod:`~mpo.tuning.objective`: the registry of tuning objectives (:data:`OBJECTIVES`);
* :mod:`~mpo.tuning.job`, :mod:`~mpo.tuning.trial`: what a worker receives, one trial
  (a :func:`mpo.backtest.simulate` run on the training window);
* :mod:`~mpo.tuning.workers`: samplers, pruners and worker processes;
* :mod:`~mpo.tuning.study`: :func:`tune` and :class:`TuningResult`;
* :mod:`~mpo.tuning.plots`: pictures drawn from a :class:`TuningResult`.
"""

from __future__ import annotations

from mpo.tuning.job import TuningJob
from mpo.tuning.objective import (
    MIN_ANNUAL_VOL,
    OBJECTIVES,
    RISK_CAP_PENALTY,
    TuningObjective,
    get_objective,
)
from mpo.tuning.storage import open_storage, recover_stale_trials
from mpo.tuning.study import TuningResult, tune
from mpo.tuning.trial import TrialFailure, TrialRunner
from mpo.tuning.windows import MIN_TRAIN_PERIODS, Windows, parse_purge, resolve_windows

__all__ = [
    "MIN_ANNUAL_VOL",
    "MIN_TRAIN_PERIODS",
    "OBJECTIVES",
    "RISK_CAP_PENALTY",
    "TrialFailure",
    "TrialRunner",
    "TuningJob",
    "TuningObjective",
    "TuningResult",
    "Windows",
    "get_objective",
    "open_storage",
    "parse_purge",
    "recover_stale_trials",
    "resolve_windows",
    "tune",
]

"""Tuning objectives: what a trial's training-window backtest is scored by.

Objectives live in the registry :data:`OBJECTIVES` (entry-point group
``mpo.tuning_objectives``). An objective is a :class:`TuningObjective`
subclass (or a plain function, see :func:`get_objective`) registered by name::

    from mpo.tuning import OBJECTIVES, TuningObjective

    @OBJECTIVES.register("mean_excess")
    class MeanExcess(TuningObjective):
        def score(self, returns, cash, hold, ppy, tuning):
            return float((returns - cash).mean() * ppy)

It knows whether it needs Hold's returns (``needs_hold``), which ``[tuning]``
settings it reads (recorded in the study's configuration), and whether it
constrains the sampler (``constrained``: Optuna's TPE ``constraints_func`` and
the best-trial selection, which prefers feasible trials).
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Mapping
from typing import ClassVar

import numpy as np

from mpo.config import TuningSpec
from mpo.errors import TuningError
from mpo.metrics import sharpe_ratio
from mpo.registry import Registry

__all__ = [
    "MIN_ANNUAL_VOL",
    "OBJECTIVES",
    "RISK_CAP_PENALTY",
    "InformationRatio",
    "ReturnAtRisk",
    "Sharpe",
    "TuningObjective",
    "get_objective",
]

#: Volatility overshoot penalty of the ``return_at_risk`` objective (return per unit of vol).
RISK_CAP_PENALTY = 10.0
#: Excess-return volatility (annual) below which an objective is undefined (solver noise).
MIN_ANNUAL_VOL = 1e-6


class TuningObjective:
    """Base class of tuning objectives (maximised).

    Subclasses implement :meth:`score`; the class attributes say what else
    the study must do for them.

    Attributes
    ----------
    name
        The registered name (set by the registry).
    needs_hold
        The objective compares with Hold: trials simulate Hold once per
        worker and pass its returns as ``hold``.
    constrained
        The objective has constraints (:meth:`constraints`): the sampler is
        told of them and the best trial is chosen among feasible ones.
    """

    name: ClassVar[str]
    needs_hold: ClassVar[bool] = False
    constrained: ClassVar[bool] = False

    def score(
        self,
        returns: np.ndarray,
        cash: np.ndarray,
        hold: np.ndarray | None,
        ppy: float,
        tuning: TuningSpec,
    ) -> float:
        """The objective's value (larger is better).

        Parameters
        ----------
        returns
            Net per-period returns of the policy.
        cash
            Per-period returns of cash, aligned with ``returns``.
        hold
            Hold's returns over the same periods when :attr:`needs_hold`,
            else ``None``.
        ppy
            Periods per year.
        tuning
            The spec's ``[tuning]`` section (e.g. ``risk_cap``).
        """
        raise NotImplementedError(f"{type(self).__name__} must implement score().")

    def value(self, returns, cash, hold, ppy: float, tuning: TuningSpec) -> float:
        """:meth:`score`, or NaN when the excess returns have no variance (policy in cash)."""
        returns = np.asarray(returns, dtype=float)
        cash = np.asarray(cash, dtype=float)
        hold = None if hold is None else np.asarray(hold, dtype=float)
        if np.std(returns - cash) * np.sqrt(ppy) < MIN_ANNUAL_VOL:  # solver noise, no value
            return float("nan")
        return float(self.score(returns, cash, hold, ppy, tuning))

    def constraints(self, attrs: Mapping, tuning: TuningSpec) -> list[float]:
        """Constraint values of a trial from its user attributes (feasible when all <= 0)."""
        return []

    def feasible(self, attrs: Mapping, tuning: TuningSpec) -> bool:
        """Whether a trial with user attributes ``attrs`` meets :meth:`constraints`."""
        return all(c <= 0 for c in self.constraints(attrs, tuning))

    def describe_constraints(self, tuning: TuningSpec) -> str:
        """The constraints in words, for log messages (``"the volatility cap 0.20"``)."""
        return "the constraints"

    def settings(self, tuning: TuningSpec) -> dict:
        """The ``[tuning]`` settings the objective reads, recorded in the study's configuration."""
        return {}


OBJECTIVES: Registry[type[TuningObjective] | TuningObjective | Callable] = Registry(
    "tuning objective", "mpo.tuning_objectives"
)


@OBJECTIVES.register("sharpe")
class Sharpe(TuningObjective):
    """Annualised Sharpe ratio of the excess returns, net of costs."""

    def score(self, returns, cash, hold, ppy, tuning) -> float:
        return sharpe_ratio(returns - cash, ppy)


@OBJECTIVES.register("return_at_risk")
class ReturnAtRisk(TuningObjective):
    """Annual excess return, penalised by ``RISK_CAP_PENALTY`` per unit of volatility over
    ``[tuning] risk_cap``; the cap is also a sampler constraint."""

    constrained = True

    def score(self, returns, cash, hold, ppy, tuning) -> float:
        vol = float(np.std(returns, ddof=1) * np.sqrt(ppy))
        ann = float(np.mean(returns - cash) * ppy)
        return ann - RISK_CAP_PENALTY * max(0.0, vol - tuning.risk_cap)

    def constraints(self, attrs, tuning) -> list[float]:
        return [attrs.get("annual_volatility", math.inf) - tuning.risk_cap]

    def describe_constraints(self, tuning) -> str:
        return f"the volatility cap {tuning.risk_cap:.2f}"

    def settings(self, tuning) -> dict:
        return {"risk_cap": tuning.risk_cap}


@OBJECTIVES.register("information_ratio")
class InformationRatio(TuningObjective):
    """Annualised information ratio against Hold (Sharpe ratio of ``returns - hold``)."""

    needs_hold = True

    def score(self, returns, cash, hold, ppy, tuning) -> float:
        return sharpe_ratio(returns - hold, ppy)


class _FunctionObjective(TuningObjective):
    """A plain function ``fn(returns, cash, hold, ppy, tuning) -> float`` as an objective."""

    def __init__(self, name: str, fn: Callable) -> None:
        self.name = name  # type: ignore[misc]
        self.fn = fn
        self.needs_hold = bool(getattr(fn, "needs_hold", False))  # type: ignore[misc]

    def score(self, returns, cash, hold, ppy, tuning) -> float:
        return self.fn(returns, cash, hold, ppy, tuning)


def get_objective(name: str) -> TuningObjective:
    """The objective registered as ``name``, ready to use.

    A registered :class:`TuningObjective` subclass is instantiated without
    arguments, an instance is used as is, and a plain function
    ``fn(returns, cash, hold, ppy, tuning)`` is wrapped (give it a
    ``needs_hold = True`` attribute to receive Hold's returns).

    Raises
    ------
    TuningError
        For an unknown name, listing the registered ones.
    """
    if name not in OBJECTIVES:
        names = OBJECTIVES.names()
        close = difflib.get_close_matches(str(name), names, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise TuningError(
            f"unknown objective {name!r}; registered: {', '.join(names)}.{hint} Add one with "
            f"@mpo.tuning.OBJECTIVES.register(NAME) or the entry-point group {OBJECTIVES.group!r}."
        )
    item = OBJECTIVES.get(name)
    if isinstance(item, type) and issubclass(item, TuningObjective):
        return item()
    if isinstance(item, TuningObjective):
        return item
    if callable(item):
        return _FunctionObjective(name, item)
    raise TuningError(
        f"tuning objective {name!r} is a {type(item).__name__}, not a TuningObjective subclass, "
        "instance or function; register one of those."
    )

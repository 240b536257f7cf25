"""Policy kinds: a kind is its spec validation and a builder returning a cvxportfolio policy.

Every ``kind = "..."`` of a policy spec names a :class:`PolicyKind` registered in
:data:`POLICY_KINDS` (built-ins in :mod:`mpo.policies.simple`,
:mod:`mpo.policies.optimization`, :mod:`mpo.policies.learned`; packages add
kinds through the entry-point group ``mpo.policies``). The CLI, tuning,
backtests and tests all go through :func:`build_policy`; no module compares
kind strings.
"""

from __future__ import annotations

import logging
from typing import ClassVar

import pandas as pd
from pydantic import BaseModel

from mpo.costs import CostModel
from mpo.registry import Registry

__all__ = [
    "POLICY_KINDS",
    "PolicyKind",
    "build_policy",
    "cost_model",
    "kind_of",
    "required_history",
]

logger = logging.getLogger(__name__)

#: Every policy kind, by name.
POLICY_KINDS: Registry[type[PolicyKind]] = Registry(
    "policy kind",
    "mpo.policies",
    bootstrap=(
        "mpo.policies.simple",
        "mpo.policies.optimization",
        "mpo.policies.learned",
        "mpo.policies.user",
    ),
)


class PolicyKind:
    """One kind of policy. Subclass, implement :meth:`build`, register by name.

    Parameters
    ----------
    spec
        The validated :class:`mpo.config.PolicySpec` of the policy.
    """

    #: Registered name (set by :meth:`Registry.register`).
    name: ClassVar[str] = ""
    #: Tunable parameters: name -> the spec section holding it.
    tunable: ClassVar[dict[str, str]] = {}
    #: Optional model of the spec's ``[params]`` table (plugin kinds' own settings).
    Params: ClassVar[type[BaseModel] | None] = None
    #: Whether this kind is the Hold reference of every run.
    is_reference: ClassVar[bool] = False
    #: Whether this kind executes a trained model (``[learned]``; walk-forward retrains it).
    learned: ClassVar[bool] = False

    def __init__(self, spec) -> None:
        self.spec = spec

    @classmethod
    def validate(cls, spec) -> None:
        """Raise ``ValueError`` (a message naming the field and the fix) for a bad spec."""

    def required_history(self) -> int:
        """Periods of data needed before the first decision."""
        return cost_model(self.spec).min_history

    def build(self, universe: list[str], trading_calendar: pd.DatetimeIndex | None):
        """The cvxportfolio policy for ``universe`` over ``trading_calendar``."""
        raise NotImplementedError

    def selection_end(self) -> pd.Timestamp | None:
        """Last date the policy's model was fitted or selected on (None: nothing fitted)."""
        return None

    @property
    def params(self):
        """The spec's ``[params]`` validated by :attr:`Params` (None without a model)."""
        if self.Params is None:
            return None
        return self.Params(**self.spec.params)


def kind_of(spec) -> PolicyKind:
    """The :class:`PolicyKind` instance of ``spec``."""
    return POLICY_KINDS.get(spec.kind)(spec)


def cost_model(spec) -> CostModel:
    """The cost model a spec describes (shared by simulator and optimiser)."""
    return CostModel.from_spec(spec.costs)


def required_history(spec) -> int:
    """Periods of data needed before the first decision of this spec."""
    return kind_of(spec).required_history()


def build_policy(
    spec,
    universe: list[str],
    trading_calendar: pd.DatetimeIndex | None = None,
):
    """Turn a spec into a cvxportfolio policy for the given universe.

    Parameters
    ----------
    spec
        Validated policy spec.
    universe
        Tickers (without cash).
    trading_calendar
        Backtest dates; equal weight rebalances on them and file-based
        forecasts and risk models are validated against them.
    """
    return kind_of(spec).build(list(universe), trading_calendar)

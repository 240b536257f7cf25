"""Bring your own cvxportfolio objects: a ready policy, or a spec with your forecast, risk, costs.

:class:`UserPolicy` is what :func:`mpo.backtest.run_backtests` accepts beside
specs, so existing cvxportfolio code runs in mpo's simulator setup, run
folders, tables and reports unchanged::

    run_backtests([
        load_spec("policies/spo.toml"),
        UserPolicy("mine", policy=cvx.SinglePeriodOptimization(...)),       # any cvx.Policy
        UserPolicy("spo-myviews", spec=spo, forecast=cvx.ReturnsForecast(r_hat=frame),
                   risk=cvx.FactorModelCovariance(F=F, d=d, Sigma_F=Sigma_F)),
    ], market)

A bare ``cvx.Policy`` in that list is wrapped as ``UserPolicy(<class name>, policy=...)``.
Every entry faces the same simulator, costs and initial portfolio as the specs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from mpo.errors import SpecError
from mpo.policies.base import POLICY_KINDS, PolicyKind, kind_of

__all__ = ["CustomKind", "UserPolicy"]


@POLICY_KINDS.register("custom")
class CustomKind(PolicyKind):
    """Marks the spec of a :class:`UserPolicy` (built in Python, not from TOML)."""

    def build(self, universe, trading_calendar):
        raise SpecError(
            f"policy {self.spec.name!r} is kind 'custom': it is built from Python objects; pass "
            "mpo.policies.UserPolicy(name, policy=...) to run_backtests instead of its spec."
        )


@dataclass
class UserPolicy:
    """A policy given as Python objects.

    Parameters
    ----------
    name
        Name in tables and run folders.
    policy
        A ready cvxportfolio policy (``cvx.Policy``): used as is.
    spec
        Or an optimisation spec (``spo``, ``mpo``, ``dmpo_mpo``) whose
        components are replaced by the objects below (the rest of the spec:
        objective multipliers, constraints, cost terms, solver, stays).
    forecast, risk
        cvxportfolio returns forecast (``cvx.ReturnsForecast`` or any object
        with ``values_in_time``) and risk term (``cvx.FullCovariance``,
        ``cvx.FactorModelCovariance``, ...).
    costs
        Extra cvxportfolio cost objects for the planner, multiplied by
        ``gamma_trade`` (e.g. your own cost estimate); the simulator charges
        the run's cost model.
    history
        Periods of data the policy needs before its first decision (default:
        the spec's, or the cost model's for a ready policy).
    """

    name: str
    policy: Any = None
    spec: Any = None
    forecast: Any = None
    risk: Any = None
    costs: Sequence[Any] = field(default_factory=tuple)
    history: int | None = None

    def __post_init__(self) -> None:
        if (self.policy is None) == (self.spec is None):
            raise SpecError(
                f"UserPolicy {self.name!r}: give either policy= (a cvxportfolio policy) or spec= "
                "(with forecast=/risk=/costs= objects), not both and not neither."
            )
        if self.policy is not None and (self.forecast or self.risk or self.costs):
            raise SpecError(
                f"UserPolicy {self.name!r}: forecast=, risk= and costs= replace parts of a spec; "
                "a ready policy= already has its own."
            )

    def kind(self, spec) -> PolicyKind | None:
        """The spec's kind with the objects swapped in (None for a ready policy)."""
        if self.spec is None:
            return None
        from mpo.policies.optimization import OptimizationKind

        cls = POLICY_KINDS.get(spec.kind)
        if not issubclass(cls, OptimizationKind):
            raise SpecError(
                f"UserPolicy {self.name!r}: forecast/risk/costs objects need an optimisation spec "
                f"(spo, mpo, dmpo_mpo), got kind {spec.kind!r}."
            )
        return cls(spec, forecast=self.forecast, risk=self.risk, extra_costs=self.costs)

    def required_history(self, spec) -> int:
        if self.history is not None:
            return int(self.history)
        kind = self.kind(spec)
        return (kind or kind_of(spec)).required_history()

    def build(self, spec, universe, trading_calendar):
        if self.policy is not None:
            return self.policy
        return self.kind(spec).build(list(universe), trading_calendar)

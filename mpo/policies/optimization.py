"""SPO and MPO (Boyd et al. 2017, eq. 4.3 / 5.1) from a spec's sections.

Optimisation policies maximise::

    r_hat' w+  -  gamma_risk * psi(w+)  -  gamma_trade * phi_trade(z)  -  gamma_hold * phi_hold(w+)

summed over the planning horizon for MPO, subject to the hard constraints.
``r_hat`` and ``psi`` come from the ``[forecast]`` and ``[risk]`` kinds
(:mod:`mpo.forecast.kinds`), the cost terms from the same
:class:`~mpo.costs.CostModel` the simulator charges. :class:`OptimizationKind`
is also the base of the learned DMPO-MPO kind, which swaps in learned views.
"""

from __future__ import annotations

import cvxportfolio as cvx

from mpo.forecast.kinds import FORECASTS, RISK_MODELS
from mpo.policies.base import POLICY_KINDS, PolicyKind, cost_model
from mpo.policies.limits import limits_of
from mpo.policies.solving import ChainedOptimization

__all__ = ["IGNORE_DPP_FROM", "MPOKind", "OptimizationKind", "SPOKind", "constraints_of"]

#: cvxpy's parametrised (DPP) compile is skipped from this many assets x planning steps:
#: measured with ``benchmarks/scale.py`` (factor risk, 15 periods): MPO H=3 at n=100 took
#: 0.46 s/period and 549 MB with DPP, 0.42 s and 255 MB without; at n=20, 0.13 s with DPP
#: and 0.23 s without (same memory). Dense MPO at 200+ assets exhausts memory with DPP.
IGNORE_DPP_FROM = 200

_MULTIPLIERS = {"gamma_trade", "gamma_hold"}


def constraints_of(spec, universe=None) -> list:
    """The hard constraints of ``[constraints]`` as cvxportfolio objects.

    With ``universe`` (the tickers), also the group, participation and
    liquidity limits (:func:`mpo.policies.limits.limits_of`).
    """
    c = spec.constraints
    out: list = []
    if c.long_only:
        out.append(cvx.LongOnly(applies_to_cash=False))
    if c.min_weight is not None:
        out.append(cvx.MinWeights(c.min_weight))
    if c.max_weight is not None:
        out.append(cvx.MaxWeights(c.max_weight))
    if c.leverage is not None:
        out.append(cvx.LeverageLimit(c.leverage))
    if c.turnover is not None:
        out.append(cvx.TurnoverLimit(c.turnover))
    if c.fully_invested:
        out.append(cvx.NoCash())
    if universe is not None:
        out.extend(limits_of(spec, universe))
    return out


def _deadband(spec) -> float:
    """The fixed fee's deadband in dollars (0 without a fixed fee)."""
    return sum(t.params.deadband for t in cost_model(spec).active() if t.name == "fixed")


class OptimizationKind(PolicyKind):
    """A cvxportfolio ``MultiPeriodOptimization`` from the spec (SPO is H = 1).

    Subclasses may override :meth:`forecaster` and :meth:`risk_model`; the
    objective, costs, constraints and solver settings stay the same.
    ``forecast``, ``risk`` and ``extra_costs`` take Python objects directly
    (a cvxportfolio ``ReturnsForecast`` or forecaster, a risk term, cost
    objects multiplied by ``gamma_trade``) in place of the spec's kinds.
    """

    tunable = {
        "gamma_risk": "objective",
        "gamma_trade": "objective",
        "gamma_hold": "objective",
    }

    def __init__(self, spec, *, forecast=None, risk=None, extra_costs=()) -> None:
        super().__init__(spec)
        self._forecast = forecast
        self._risk = risk
        self._extra_costs = tuple(extra_costs)

    # ------------------------------------------------------------ components
    def forecaster(self, universe, calendar=None):
        """The returns forecaster (a plain object or a cvxportfolio forecaster)."""
        if self._forecast is not None:
            return self._forecast
        f = self.spec.forecast
        return FORECASTS.get(f.kind).build(
            f, universe=universe, calendar=calendar, horizon=self.spec.objective.planning_horizon
        )

    def risk_model(self, universe, calendar=None):
        """The risk term (a cvxportfolio ``BaseRiskModel``)."""
        if self._risk is not None:
            return self._risk
        r = self.spec.risk
        return RISK_MODELS.get(r.kind).build(r, universe=universe, calendar=calendar)

    def required_history(self) -> int:
        spec = self.spec
        need = cost_model(spec).min_history
        h = spec.objective.planning_horizon
        if self._forecast is None:
            need = max(need, FORECASTS.get(spec.forecast.kind).history(spec.forecast) + h)
        if self._risk is None:
            need = max(need, RISK_MODELS.get(spec.risk.kind).history(spec.risk))
        return need

    # ------------------------------------------------------------------ build
    def objective(self, universe, calendar=None):
        o = self.spec.objective
        r_hat = self.forecaster(universe, calendar)
        returns = (
            r_hat if isinstance(r_hat, cvx.ReturnsForecast) else cvx.ReturnsForecast(r_hat=r_hat)
        )
        objective = returns - o.gamma_risk * self.risk_model(universe, calendar)
        for multiplier, term in cost_model(self.spec).planner_terms():
            objective = objective - getattr(o, multiplier) * term
        for term in self._extra_costs:
            objective = objective - o.gamma_trade * term
        return objective

    def build(self, universe, trading_calendar):
        spec = self.spec
        kwargs = {"solver": spec.backtest.solver, **spec.backtest.solver_options}
        if len(universe) * spec.objective.planning_horizon >= IGNORE_DPP_FROM:
            kwargs.setdefault("ignore_dpp", True)  # solver_options may choose either path
        return ChainedOptimization(
            self.objective(universe, trading_calendar),
            constraints_of(spec, universe),
            planning_horizon=spec.objective.planning_horizon,
            solver_chain=spec.backtest.fallback_solver or (),
            inaccurate=spec.backtest.inaccurate,
            policy_name=spec.name,
            deadband=_deadband(spec),
            **kwargs,
        )


@POLICY_KINDS.register("spo")
class SPOKind(OptimizationKind):
    """Single-period optimisation (planning horizon 1)."""

    @classmethod
    def validate(cls, spec) -> None:
        if spec.objective.planning_horizon != 1:
            raise ValueError(
                f"kind='spo' has planning_horizon 1, got {spec.objective.planning_horizon}; use "
                "kind='mpo' for a multi-period policy."
            )


@POLICY_KINDS.register("mpo")
class MPOKind(OptimizationKind):
    """Multi-period optimisation over ``planning_horizon`` steps (receding horizon)."""

    tunable = {**OptimizationKind.tunable, "planning_horizon": "objective"}

"""Learned policy kinds: DMPO views inside cvxportfolio's MPO, and the trained QP itself.

``dmpo_mpo`` puts a checkpoint's views (``mu_hat`` per planning step,
``Sigma_hat``) into the same MPO as the classic policies (costs, constraints
and solver unchanged); ``dmpo_qp`` executes the trained QP layer's own first
decision. Both read ``[learned] checkpoint`` (written by ``mpo train``).
"""

from __future__ import annotations

import pandas as pd

from mpo.policies.base import POLICY_KINDS, PolicyKind, cost_model
from mpo.policies.optimization import OptimizationKind

__all__ = ["DMPOMPOKind", "DMPOQPKind", "learned_views"]


def learned_views(spec):
    """The :class:`~mpo.forecast.learned.LearnedViews` of a learned spec."""
    from mpo.forecast.learned import LearnedViews

    return LearnedViews(spec.learned.checkpoint)


class _Learned:
    """Checks shared by the learned kinds."""

    learned = True

    @classmethod
    def _check_checkpoint(cls, spec) -> None:
        if not spec.learned.checkpoint:
            raise ValueError(
                f"kind={spec.kind!r} needs [learned] checkpoint = 'path/to/dmpo.pt' (written by "
                "`mpo train`)."
            )

    def views(self):
        if getattr(self, "_views", None) is None:
            self._views = learned_views(self.spec)
        return self._views

    def selection_end(self) -> pd.Timestamp | None:
        return self.views().selection_end


@POLICY_KINDS.register("dmpo_mpo")
class DMPOMPOKind(_Learned, OptimizationKind):
    """cvxportfolio MPO on a DMPO checkpoint's views (returns forecast and risk model)."""

    tunable = {**OptimizationKind.tunable, "planning_horizon": "objective"}

    @classmethod
    def validate(cls, spec) -> None:
        cls._check_checkpoint(spec)

    def forecaster(self, universe, calendar=None):
        from mpo.forecast.learned import LearnedReturnsForecast

        return LearnedReturnsForecast(self.views())

    def risk_model(self, universe, calendar=None):
        from mpo.forecast.learned import learned_risk

        return learned_risk(self.views())

    def required_history(self) -> int:
        return max(cost_model(self.spec).min_history, self.views().history())

    def build(self, universe, trading_calendar):
        views = self.views()
        views.check_horizon(self.spec.objective.planning_horizon, self.spec.name)
        views.check_universe(list(universe))
        return super().build(universe, trading_calendar)


@POLICY_KINDS.register("dmpo_qp")
class DMPOQPKind(_Learned, PolicyKind):
    """The trained QP layer's first-step decision (its hard turnover limit enforced)."""

    tunable = {"delta": "learned"}

    @classmethod
    def validate(cls, spec) -> None:
        c = spec.constraints
        if c.groups is not None:
            raise ValueError(
                "kind='dmpo_qp' decides with the trained QP layer (budget, long-only, cap, "
                "turnover limit, and the per-weight boxes of [constraints] participation and "
                "min_adv) and cannot enforce [constraints] groups (sums over a group are not "
                "boxes); use kind='dmpo_mpo' (the learned views in cvxportfolio's MPO, where "
                "group limits hold) or remove groups."
            )
        cls._check_checkpoint(spec)

    def required_history(self) -> int:
        return max(cost_model(self.spec).min_history, self.views().history())

    def build(self, universe, trading_calendar):
        from mpo.forecast.learned import DMPOQPPolicy
        from mpo.learn.limits import BoxLimits

        views = self.views()
        views.check_universe(list(universe))
        c = self.spec.constraints
        limits = BoxLimits(c.participation, c.min_adv)
        estimates = cost_model(self.spec).estimates if limits.active else None
        return DMPOQPPolicy(views, delta=self.spec.learned.delta, limits=limits,
                            estimates=estimates)  # fmt: skip

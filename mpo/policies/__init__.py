"""Policy kinds and the one builder from specs to cvxportfolio policies.

A policy is data (a :class:`mpo.config.PolicySpec`) until :func:`build_policy`
turns it into a cvxportfolio policy through its registered
:class:`PolicyKind`; the CLI, scripts, tuning, walk-forward and tests all go
through it.
"""

from mpo.policies.base import (
    POLICY_KINDS,
    PolicyKind,
    build_policy,
    cost_model,
    kind_of,
    required_history,
)
from mpo.policies.learned import learned_views
from mpo.policies.optimization import IGNORE_DPP_FROM, OptimizationKind, constraints_of
from mpo.policies.user import UserPolicy

__all__ = [
    "IGNORE_DPP_FROM",
    "POLICY_KINDS",
    "OptimizationKind",
    "PolicyKind",
    "build_policy",
    "constraints_of",
    "cost_model",
    "kind_of",
    "learned_views",
    "required_history",
    "UserPolicy",
]

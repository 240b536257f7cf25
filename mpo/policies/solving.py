"""A solver chain for cvxportfolio's optimisation policies, and a record of every solve.

cvxportfolio retries a failed solve once, with one fallback solver, and uses
an inaccurate solution (e.g. a solver stopped by ``max_iter``) without a
word. :class:`ChainedOptimization` is cvxportfolio's
``MultiPeriodOptimization`` with two changes in the solve step (and the
fixed fee's ``deadband``, :mod:`mpo.costs.fixed`, applied after it):

* ``[backtest] fallback_solver`` is a chain: when the primary solver raises
  or ends inaccurate, each fallback is tried in order (with default options)
  until one returns an accurate solution;
* every solve that did not end accurately with the primary solver is recorded
  in a :class:`SolveLog` (date, outcome, solver), which the backtest reports
  (``run.json`` ``solves``, the metrics ``fallback_solves`` and
  ``inaccurate_solves``) and warns about.

When every solver ends inaccurate, ``[backtest] inaccurate = "warn"`` uses
the solution of the first inaccurate solve (counted and logged with its
date); ``"error"`` stops the policy at that date.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import cvxportfolio as cvx
import cvxpy as cp

__all__ = ["ChainedOptimization", "SolveLog", "SolverChainError"]

logger = logging.getLogger(__name__)

#: Statuses whose solution is used as is.
ACCURATE = ("optimal",)
#: Statuses that mean "a solution, but not to tolerance" (user_limit: stopped by max_iter).
INACCURATE = ("optimal_inaccurate", "user_limit")


class SolverChainError(cp.SolverError):
    """No solver of the chain gave a usable solution; the message names each and the fix."""


@dataclass
class SolveLog:
    """Solves of one policy that did not end accurately with the primary solver."""

    #: (date, outcome, solver, status): outcome is "fallback" (a fallback solver gave an
    #: accurate solution) or "inaccurate" (no solver did; the first inaccurate solution, of
    #: status ``optimal_inaccurate`` or ``user_limit``, was used).
    events: list[tuple[str, str, str, str]] = field(default_factory=list)
    periods: int = 0

    def counts(self) -> dict:
        """Counts: ``periods``, ``fallback``, ``inaccurate``, ``fallback_solvers`` (solver ->
        count), ``inaccurate_statuses`` (status -> count) and the first 10 ``dates``."""
        solvers: dict[str, int] = {}
        statuses: dict[str, int] = {}
        for _, outcome, solver, status in self.events:
            if outcome == "fallback":
                solvers[solver] = solvers.get(solver, 0) + 1
            else:
                statuses[status] = statuses.get(status, 0) + 1
        return {
            "periods": self.periods,
            "fallback": sum(solvers.values()),
            "inaccurate": sum(statuses.values()),
            "fallback_solvers": solvers,
            "inaccurate_statuses": statuses,
            "dates": [f"{d} {o} ({s}: {st})" for d, o, s, st in self.events[:10]],
        }


class _ChainedProblem:
    """Stands in for the policy's ``cp.Problem``: ``solve`` runs the chain; all else delegates."""

    def __init__(self, problem: cp.Problem, owner: ChainedOptimization):
        self._problem = problem
        self._owner = owner

    def __getattr__(self, name):
        return getattr(self._problem, name)

    def _snapshot(self):
        return [(v, v.value) for v in self._problem.variables()], self._problem.status

    def _restore(self, snap) -> None:
        values, status = snap
        for v, value in values:
            v.value = value
        self._problem._status = status

    def solve(self, **kwargs):
        owner = self._owner
        primary = kwargs.get("solver")
        attempts = [(str(primary), kwargs)] + [
            (s, {"solver": s, "ignore_dpp": True}) for s in owner.solver_chain
        ]
        t = owner.current_time
        owner.solve_log.periods += 1
        errors: list[str] = []
        first_inaccurate = None  # (solver, status, snapshot)
        for i, (solver, kw) in enumerate(attempts):
            try:
                self._problem.solve(**kw)
            except cp.SolverError as exc:
                errors.append(f"{solver}: {exc}")
                continue
            status = self._problem.status
            if status in INACCURATE:
                errors.append(f"{solver}: status {status}")
                if first_inaccurate is None:  # kept unless a later solver does better; the
                    # last attempt's values need no copy (nothing runs after it)
                    last = i == len(attempts) - 1
                    first_inaccurate = (solver, status, None if last else self._snapshot())
                continue
            if status in ACCURATE and i > 0:
                owner.solve_log.events.append((t, "fallback", solver, status))
                logger.info(
                    "policy %s at %s: solved by fallback solver %s after %s",
                    owner.policy_name, t, solver, "; ".join(errors),
                )  # fmt: skip
            return None  # accurate, or infeasible/unbounded: cvxportfolio raises for those
        if first_inaccurate is None:
            raise SolverChainError(
                "every solver failed (" + "; ".join(errors) + "). Add or change "
                "[backtest] fallback_solver (a list is tried in order), or loosen solver_options."
            )
        solver, status, snap = first_inaccurate
        if owner.inaccurate == "error":
            raise SolverChainError(
                "no solver reached an accurate solution (" + "; ".join(errors) + "); "
                "[backtest] inaccurate = 'error'. Raise max_iter in solver_options, add a "
                "[backtest] fallback_solver, or set inaccurate = 'warn' to accept it."
            )
        if snap is not None:
            self._restore(snap)
        owner.solve_log.events.append((t, "inaccurate", solver, status))
        logger.info(
            "policy %s at %s: using an inaccurate solution of %s (%s); it is counted in the "
            "results' inaccurate_solves. Raise max_iter or tolerances in [backtest] "
            "solver_options, or add a fallback_solver.",
            owner.policy_name, t, solver, "; ".join(errors),
        )  # fmt: skip
        return None


class ChainedOptimization(cvx.MultiPeriodOptimization):
    """``cvx.MultiPeriodOptimization`` with a fallback-solver chain and a :class:`SolveLog`."""

    def __init__(
        self, *args, solver_chain=(), inaccurate: str = "warn", policy_name: str = "",
        deadband: float = 0.0, **kwargs,
    ):  # fmt: skip
        super().__init__(*args, fallback_solver=None, **kwargs)
        self.deadband = float(deadband)
        self.solver_chain = tuple(solver_chain)
        self.inaccurate = inaccurate
        self.policy_name = policy_name
        self.solve_log = SolveLog()
        self.current_time = None

    def _compile_to_cvxpy(self):
        super()._compile_to_cvxpy()
        self._problem = _ChainedProblem(self._problem, self)

    def values_in_time_recursive(self, t, **kwargs):
        self.current_time = str(t.date()) if hasattr(t, "date") else str(t)
        w_plus = super().values_in_time_recursive(t=t, **kwargs)
        if self.deadband > 0:  # the fixed fee's deadband: small trades are not made
            from mpo.costs.fixed import apply_deadband

            w_plus = apply_deadband(
                w_plus, kwargs["current_weights"], kwargs["current_portfolio_value"], self.deadband
            )
            self._current_value = w_plus
        return w_plus

"""Cost terms that name themselves, and the cost model that enumerates them.

A cost term is one class (:class:`CostTerm`) holding

* its **parameters** (a pydantic model, :attr:`CostTerm.Params`: the fields it
  reads from a spec's ``[costs]`` section, flat or as ``[costs.<name>]``),
* its **simulator term** (a cvxportfolio ``SimulatorCost`` the
  ``MarketSimulator`` charges; its dollar cost is recorded under the term's
  name, so ``costs.parquet`` and every table get a column per term),
* its **planner term** (the cvxportfolio cost in the policy objective,
  multiplied by ``gamma_trade`` or ``gamma_hold``: :attr:`CostTerm.multiplier`),
* its **training cost** (the same formula in torch, for the learned policies'
  loss), where it has one.

Terms are registered by name in :data:`COST_TERMS` (built-ins in
:mod:`mpo.costs.terms`; third-party packages through the entry-point group
``mpo.cost_terms``). Backtests, tuning, reports and training enumerate the
registry, so a new term appears everywhere from the one file that defines it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any, ClassVar

from cvxportfolio.costs import SimulatorCost

from mpo.costs.estimates import CostEstimates
from mpo.registry import Registry
from mpo.validation import StrictModel

__all__ = [
    "COST_TERMS",
    "CostModel",
    "CostTerm",
    "SimulatorOnlyCost",
    "TermParams",
    "named",
]

logger = logging.getLogger(__name__)

#: Every cost term, by name (the column name in ``costs.parquet``).
COST_TERMS: Registry[type[CostTerm]] = Registry(
    "cost term", "mpo.cost_terms", bootstrap=("mpo.costs.terms",)
)


class TermParams(StrictModel):
    """Base of a term's parameters: strict (unknown keys are errors), finite and frozen (the
    rules of every spec section, :class:`mpo.validation.StrictModel`)."""


class CostTerm:
    """One cost term. Subclass, set :attr:`Params`, implement the terms, register by name.

    Parameters
    ----------
    params
        The term's validated parameters.
    estimates
        The spec's sigma/volume estimates (shared by every term of a spec).
    """

    #: Registered name (set by :meth:`Registry.register`).
    name: ClassVar[str] = ""
    #: The objective multiplier of the planner term: ``"gamma_trade"`` or ``"gamma_hold"``.
    multiplier: ClassVar[str] = "gamma_trade"
    #: The term's parameters.
    Params: ClassVar[type[TermParams]] = TermParams

    def __init__(self, params: TermParams, estimates: CostEstimates) -> None:
        self.params = params
        self.estimates = estimates

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in self.params.model_dump().items())
        return f"{type(self).__name__}({fields})"

    @property
    def enabled(self) -> bool:
        """Whether the term charges anything (e.g. a zero spread is off)."""
        return True

    def min_history(self) -> int:
        """Periods of data the term's estimates need before the first decision."""
        return 0

    def simulator_term(self) -> Any:
        """A fresh cvxportfolio ``SimulatorCost`` charging this term (or None)."""
        raise NotImplementedError

    def planner_term(self) -> Any:
        """A fresh cvxportfolio cost for the policy objective (or None)."""
        raise NotImplementedError

    def training_cost(self, z, *, sigma, volume, value):  # pragma: no cover - interface
        """Cost of trades ``z`` ``(..., n)`` as a fraction of value, in torch.

        ``sigma`` and ``volume`` ``(..., n)`` are what the simulator charges
        (:class:`~mpo.costs.estimates.CostEstimates`), ``value`` ``(...)`` the
        portfolio value before trading. Terms without a training formula raise
        ``NotImplementedError``; the training spec then refuses them.
        """
        raise NotImplementedError(f"cost term {self.name!r} has no training formula")


class SimulatorOnlyCost(SimulatorCost):
    """Base of a simulator term computed in numpy: implement ``simulate(t, u, ...)`` only.

    cvxportfolio's ``SimulatorCost`` otherwise compiles a cvxpy expression at
    initialisation; a term whose charge is not convex (a fixed fee per trade)
    or simply easier in numpy skips that. ``simulate`` receives the keyword
    arguments of cvxportfolio's simulator (``u`` dollar trades with cash last,
    ``h_plus``, ``past_returns``, ``current_returns``, ``current_volumes``,
    ``current_portfolio_value``, ...) and returns dollars.
    """

    def initialize_estimator(self, universe, **kwargs):
        self.universe = universe


_NAMED: dict[tuple[type, str], type] = {}


def named(obj: Any, name: str) -> Any:
    """``obj`` re-classed so that cvxportfolio records its cost under ``name``.

    cvxportfolio's simulator keys realised costs by class name; a subclass
    named after the term makes every term's column its registered name, even
    when two terms share an implementation class.
    """
    key = (type(obj), name)
    cls = _NAMED.get(key)
    if cls is None:
        cls = type(name, (type(obj),), {"__module__": type(obj).__module__})
        _NAMED[key] = cls
    obj.__class__ = cls
    return obj


class CostModel:
    """The cost terms of one spec: what the simulator charges and the planner expects.

    Build it from a spec's ``[costs]`` section with :meth:`from_spec`, or from
    flat keyword parameters (``CostModel(half_spread=0.001, impact=0.5)``).
    """

    def __init__(self, terms: dict[str, TermParams] | None = None, estimates=None, **flat):
        from mpo.config import CostsSpec

        if terms is None:
            from pydantic import ValidationError

            from mpo.config import format_validation_error
            from mpo.errors import SpecError

            try:
                spec = CostsSpec(**flat)
            except ValidationError as exc:
                raise SpecError(format_validation_error(exc, "CostModel", "cost model")) from None
            terms = spec.terms()
            estimates = spec.estimates()
        elif flat:
            raise TypeError("give either terms= or flat parameters, not both")
        self.estimates = estimates if estimates is not None else CostEstimates()
        self._terms = [COST_TERMS.get(n)(p, self.estimates) for n, p in terms.items()]

    @classmethod
    def from_spec(cls, costs_spec) -> CostModel:
        """The model of a validated ``[costs]`` section (:class:`mpo.config.CostsSpec`)."""
        return cls(terms=costs_spec.terms(), estimates=costs_spec.estimates())

    def __repr__(self) -> str:
        return f"CostModel({', '.join(map(repr, self.active()))})"

    def __iter__(self) -> Iterator[CostTerm]:
        return iter(self._terms)

    def active(self) -> list[CostTerm]:
        """The enabled terms, in registry order."""
        return [t for t in self._terms if t.enabled]

    @property
    def min_history(self) -> int:
        """Periods of history before every estimate is meaningful."""
        return int(max([self.estimates.min_history, *(t.min_history() for t in self._terms)]))

    def names(self) -> list[str]:
        """Names of every term (enabled or not): the columns of ``costs.parquet``."""
        return [t.name for t in self._terms]

    def simulator_costs(self) -> list:
        """Cost objects for :class:`cvxportfolio.MarketSimulator`, each recorded by its name."""
        out = []
        for term in self.active():
            obj = term.simulator_term()
            if obj is not None:
                out.append(named(obj, term.name))
        return out

    def planner_terms(self) -> list[tuple[str, Any]]:
        """``(multiplier name, cvxportfolio cost)`` for the policy objective."""
        out = []
        for term in self.active():
            obj = term.planner_term()
            if obj is not None:
                out.append((term.multiplier, obj))
        return out

    def trading_terms(self) -> list:
        """The planner terms multiplied by ``gamma_trade``."""
        return [o for m, o in self.planner_terms() if m == "gamma_trade"]

    def holding_terms(self) -> list:
        """The planner terms multiplied by ``gamma_hold``."""
        return [o for m, o in self.planner_terms() if m == "gamma_hold"]

    def training_cost(self, z, *, sigma, volume, value):
        """Sum of the enabled terms' training costs (torch), as a fraction of value."""
        total = 0.0
        for term in self.active():
            total = total + term.training_cost(z, sigma=sigma, volume=volume, value=value)
        return total

    def check_trainable(self) -> None:
        """Raise :class:`~mpo.errors.SpecError` if an enabled term has no training formula."""
        import torch

        from mpo.errors import SpecError

        z = torch.zeros(1, 2, dtype=torch.float64)
        one = torch.ones(1, 2, dtype=torch.float64)
        for term in self.active():
            try:
                term.training_cost(z, sigma=one, volume=one, value=torch.ones(1, dtype=z.dtype))
            except NotImplementedError:
                raise SpecError(
                    f"cost term {term.name!r} has no training formula, so a learned policy "
                    "cannot be trained on it; disable it in the training spec's [costs]."
                ) from None

"""Policy kinds: a kind is its spec validation and a builder returning a cvxportfolio policy.

Every ``kind = "..."`` of a policy spec names a :class:`PolicyKind` registered in
:data:`POLICY_KINDS` (built-ins in :mod:`mpo.policies.simple`,
:mod:`mpo.policies.optimization`, :mod:`mpo.policies.learned`; packages add
kinds through the entry-point group ``mpo.policies``). The CLI, tuning,
backtests and tests all go through :func:`build_policy`; no module compares
kind strings.
"""

from __future__ import annotations

import functools
import logging
from typing import ClassVar

import pandas as pd
from pydantic import BaseModel

from mpo.costs import CostModel
from mpo.data.dates import frequency
from mpo.registry import Registry

__all__ = [
    "POLICY_KINDS",
    "PolicyKind",
    "build_policy",
    "cost_model",
    "kind_of",
    "lookback_note",
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
    *,
    data_name: str | None = None,
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
        forecasts and risk models are validated against them. When they are not
        daily, a warning (once per process and message) states what each
        lookback of the spec means in calendar time (:func:`lookback_note`).
    data_name
        Name of the data, for that warning.
    """
    kind = kind_of(spec)
    if trading_calendar is not None:
        note = lookback_note(spec, trading_calendar, data_name=data_name, kind=kind)
        if note:
            _warn_once(note)
    return kind.build(list(universe), trading_calendar)


#: Spec settings counted in periods of the data: (section, field).
_PERIOD_SETTINGS = (
    ("forecast", "lookback"),
    ("forecast", "halflife"),
    ("risk", "lookback"),
    ("costs", "sigma_span"),
    ("costs", "volume_span"),
)


def _settings_read(spec, kind: PolicyKind) -> list[tuple[str, float]]:
    """The period settings that ``kind``'s required history depends on, with their values.

    Found by asking the kind again with each setting made huge: what it reads
    changes its answer (no kind names compared). Learned kinds read their
    checkpoint's windows, not these sections: only the cost spans are tried.
    """
    base = kind.required_history()
    out = []
    for section, name in _PERIOD_SETTINGS:
        if kind.learned and section != "costs":
            continue
        value = getattr(getattr(spec, section), name)
        huge = type(value)(value + 10**6)
        try:
            other = type(kind)(spec.with_updates(**{section: {name: huge}})).required_history()
        except Exception:  # the spec does not take the probe: say nothing about the setting
            continue
        if other != base:
            out.append((f"[{section}] {name}", value))
    return out


def _years(periods: float, per_year: float) -> str:
    years = periods / per_year
    return f"{years:.1f} years" if years >= 1 else f"{12 * years:.1f} months"


def lookback_note(
    spec,
    calendar: pd.DatetimeIndex,
    *,
    data_name: str | None = None,
    kind: PolicyKind | None = None,
) -> str | None:
    """What the spec's lookbacks mean in calendar time on non-daily ``calendar`` (None if daily).

    Lookbacks, halflives and spans count periods of the data: on weekly data
    ``[forecast] lookback = 504`` spans about 9.7 years, not two. The note
    names the data's frequency, each period setting the policy reads with its
    calendar span, and the history the policy needs. A warning rather than an
    error: weekly or monthly data are legitimate and periods are a consistent
    unit (metrics annualise with the data's own periods per year); what must
    not happen is a lookback silently meaning five times what its author
    thought. The Hold reference reads no lookback and gets no note.
    """
    kind = kind or kind_of(spec)
    if len(calendar) < 3 or kind.is_reference:
        return None
    freq = frequency(pd.DatetimeIndex(calendar))
    if freq.is_daily:
        return None
    per_year = max(round(freq.periods_per_year), 1)
    spans = [
        f"{label} = {value:g} periods spans {_years(value, per_year)}"
        for label, value in _settings_read(spec, kind)
    ]
    need = kind.required_history()
    data = f"data {data_name!r}" if data_name else "the data"
    return (
        f"policy {spec.name!r}: {data} are {freq.label} ({per_year} periods per year, "
        f"{calendar[0].date()} to {calendar[-1].date()}): lookbacks count periods of the data, "
        f"not days: {'; '.join(spans) + '; ' if spans else ''}the policy needs {need} periods "
        f"({_years(need, per_year)}) of history before its first decision. Scale lookbacks, "
        f"halflives, spans and rebalance_every to the data (e.g. lookback = {2 * per_year} "
        f"for two years of {freq.label} data)."
    )


@functools.lru_cache(maxsize=256)
def _warn_once(message: str) -> None:
    """``logger.warning`` each distinct message once per process (tuning builds per trial)."""
    logger.warning(message)

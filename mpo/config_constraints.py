"""The ``[constraints]`` section of a policy spec (hard constraints of the optimisation policies).

Position and turnover limits map to cvxportfolio's constraints; the risk
manager's limits (groups, participation, liquidity) to
:mod:`mpo.policies.limits`. Example::

    [constraints]
    long_only = true
    max_weight = 0.25
    groups = "../data/sectors/sp20.csv"   # ticker,sector,...; relative to the spec file
    group_column = "sector"
    group_max = 0.35                       # net weight of every group
    participation = 0.05                   # |trade| <= 5% of the ADV estimate
    min_adv = 1e7                          # names below $10M ADV may only shrink

    [constraints.group_bounds.Energy]      # per-group overrides
    max = 0.15
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, model_validator

from mpo.validation import StrictModel

__all__ = ["ConstraintsSpec", "GroupBound"]


class GroupBound(StrictModel):
    """One group's own bounds (each overrides the section-wide default)."""

    max: Annotated[float, Field(ge=-1)] | None = None
    min: Annotated[float, Field(ge=-1)] | None = None
    gross_max: Annotated[float, Field(gt=0)] | None = None


class ConstraintsSpec(StrictModel):
    """Hard constraints of the optimisation policies."""

    long_only: bool = True
    min_weight: Annotated[float, Field(ge=-1, le=1)] | None = None
    max_weight: Annotated[float, Field(gt=0, le=1)] | None = None
    leverage: Annotated[float, Field(gt=0)] | None = 1.0
    turnover: Annotated[float, Field(gt=0)] | None = Field(
        default=None, description="cvxportfolio TurnoverLimit: sum|z| / 2 per period."
    )
    fully_invested: bool = False
    groups: str | None = Field(
        default=None,
        description="CSV of ticker,group (e.g. sectors) for the group limits; relative to the "
        "spec file.",
    )
    group_column: str | None = Field(
        default=None,
        description="Column of the group table to group by (e.g. sector); optional when the "
        "table has one column besides ticker.",
    )
    group_max: Annotated[float, Field(ge=-1)] | None = Field(
        default=None, description="Maximum net weight of every group."
    )
    group_min: Annotated[float, Field(ge=-1)] | None = Field(
        default=None, description="Minimum net weight of every group."
    )
    group_gross_max: Annotated[float, Field(gt=0)] | None = Field(
        default=None, description="Maximum gross weight (sum of |w|) of every group."
    )
    group_bounds: dict[str, GroupBound] = Field(
        default_factory=dict, description="Per-group max/min/gross_max overriding the above."
    )
    participation: Annotated[float, Field(gt=0, le=1)] | None = Field(
        default=None,
        description="Every trade at most this fraction of the planner's ADV estimate.",
    )
    min_adv: Annotated[float, Field(gt=0)] | None = Field(
        default=None,
        description="Liquidity screen: names whose ADV estimate ($) is below may only shrink.",
    )

    @model_validator(mode="after")
    def _bounds(self) -> ConstraintsSpec:
        if (
            self.min_weight is not None
            and self.max_weight is not None
            and self.min_weight > self.max_weight
        ):
            raise ValueError(
                f"min_weight must be <= max_weight, got min_weight={self.min_weight}, "
                f"max_weight={self.max_weight}."
            )
        grouped = (
            [
                f
                for f in ("group_max", "group_min", "group_gross_max")
                if getattr(self, f) is not None
            ]
            + (["group_bounds"] if self.group_bounds else [])
            + (["group_column"] if self.group_column else [])
        )
        if grouped and self.groups is None:
            raise ValueError(
                f"{', '.join(grouped)} need groups = 'FILE.csv' (a ticker,group table)."
            )
        bounds = [("all groups", self.group_min, self.group_max)] + [
            (name, b.min if b.min is not None else self.group_min,
             b.max if b.max is not None else self.group_max)
            for name, b in self.group_bounds.items()
        ]  # fmt: skip
        for name, low, high in bounds:
            if low is not None and high is not None and low > high:
                raise ValueError(f"group min must be <= max, got min={low}, max={high} for {name}.")
        return self

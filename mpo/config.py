"""Policy specifications: TOML files validated by pydantic models.

A spec is data until :func:`mpo.policies.build_policy` turns it into a
cvxportfolio policy. Unknown keys and out-of-range values are errors that name
the file and the field.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from mpo.errors import SpecError

__all__ = [
    "BacktestSpec",
    "ConstraintsSpec",
    "CostsSpec",
    "DataSpec",
    "ForecastSpec",
    "LearnedSpec",
    "ObjectiveSpec",
    "PolicySpec",
    "RiskSpec",
    "TUNABLE",
    "TuningParam",
    "TuningSpec",
    "load_spec",
]

PositiveInt = Annotated[int, Field(ge=1)]
NonNeg = Annotated[float, Field(ge=0)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataSpec(_Strict):
    """Default data for the spec (the CLI's ``--data`` etc. override it)."""

    source: str = "sp20"
    tickers: list[str] | None = None
    start: str | None = None
    end: str | None = None
    adv: Annotated[float, Field(gt=0)] | None = Field(
        default=None,
        description="Assumed average daily dollar volume per asset, for data without volumes.",
    )
    seed: int = 0


class BacktestSpec(_Strict):
    """Backtest window and accounting."""

    start: str | None = Field(default=None, description="First trading date of the backtest.")
    end: str | None = None
    initial_value: Annotated[float, Field(gt=0)] = 1e6
    initial: Literal["equal", "cash"] = "equal"
    solver: str = "CLARABEL"
    solver_options: dict[str, float | int | bool | str] = Field(
        default_factory=dict,
        description="Extra keyword arguments for cvxpy's solve (e.g. CLARABEL's tol_gap_rel).",
    )


class CostsSpec(_Strict):
    """Transaction and holding costs (see :class:`mpo.costs.CostModel`)."""

    half_spread: Annotated[float, Field(ge=0, le=0.1)] = 0.002
    impact: Annotated[float, Field(ge=0, le=100)] = 1.0
    sigma_span: Annotated[float, Field(ge=1)] = 10.0
    volume_span: Annotated[float, Field(ge=1)] = 10.0
    short_fee: Annotated[float, Field(ge=0, le=100)] = 0.0


class ForecastSpec(_Strict):
    """Returns forecaster."""

    kind: Literal["rolling_mean", "ewma_mean", "linear_regression"] = "rolling_mean"
    lookback: Annotated[int, Field(ge=2)] = 504
    halflife: Annotated[float, Field(ge=1)] = 126.0
    ridge: NonNeg = 1e-6


class RiskSpec(_Strict):
    """Risk model: rolling full covariance, or its PCA factor model."""

    kind: Literal["full", "factor"] = "full"
    lookback: Annotated[int, Field(ge=2)] = 504
    factors: PositiveInt = 5


class ObjectiveSpec(_Strict):
    """Trade-off multipliers and planning horizon."""

    gamma_risk: NonNeg = 5.0
    gamma_trade: NonNeg = 1.0
    gamma_hold: NonNeg = 1.0
    planning_horizon: Annotated[int, Field(ge=1, le=60)] = 1


class ConstraintsSpec(_Strict):
    """Hard constraints of the optimisation policies."""

    long_only: bool = True
    min_weight: Annotated[float, Field(ge=-1, le=1)] | None = None
    max_weight: Annotated[float, Field(gt=0, le=1)] | None = None
    leverage: Annotated[float, Field(gt=0)] | None = 1.0
    turnover: Annotated[float, Field(gt=0)] | None = Field(
        default=None, description="cvxportfolio TurnoverLimit: sum|z| / 2 per period."
    )
    fully_invested: bool = False

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
        return self


#: Parameters ``mpo tune`` can search, with the spec section each lives in.
TUNABLE = {
    "gamma_risk": "objective",
    "gamma_trade": "objective",
    "gamma_hold": "objective",
    "planning_horizon": "objective",
    "delta": "learned",  # dmpo_qp: the inference turnover limit
}


class TuningParam(_Strict):
    """Search range of one tunable parameter."""

    low: float
    high: float
    log: bool = True


def _default_params() -> dict[str, TuningParam]:
    # Ranges of Boyd et al. (2017), section 7 / cvxportfolio's examples.
    return {
        "gamma_risk": TuningParam(low=0.01, high=1000.0, log=True),
        "gamma_trade": TuningParam(low=1e-4, high=25.0, log=True),
    }


class TuningSpec(_Strict):
    """Defaults of ``mpo tune`` (the command line overrides them).

    Windows are inclusive date strings. Without them the test window is the
    spec's ``[backtest]`` window and the training window ends ``purge``
    periods before it and starts as early as the data allow.
    """

    objective: Literal["sharpe", "return_at_risk", "information_ratio"] = "sharpe"
    risk_cap: Annotated[float, Field(gt=0)] = Field(
        default=0.2, description="return_at_risk: cap on annualised volatility."
    )
    trials: PositiveInt = 30
    train_start: str | None = None
    train_end: str | None = None
    test_start: str | None = None
    test_end: str | None = None
    purge: Annotated[int, Field(ge=0)] | str | None = Field(
        default=None,
        description="Periods between train end and test start, e.g. 600 or '600d'; "
        "default (and minimum): the policy's longest lookback.",
    )
    prune: bool = True
    sub_periods: Annotated[int, Field(ge=1, le=50)] = 4
    params: dict[str, TuningParam] = Field(default_factory=_default_params)

    @model_validator(mode="after")
    def _check_params(self) -> TuningSpec:
        if not self.params:
            raise ValueError("tuning.params is empty: give at least one parameter to tune.")
        for name, p in self.params.items():
            if name not in TUNABLE:
                raise ValueError(
                    f"unknown tuning parameter {name!r}; tunable parameters are "
                    f"{', '.join(TUNABLE)}."
                )
            if not p.low < p.high:
                raise ValueError(
                    f"tuning.params.{name}: the range is empty or inverted (low={p.low:g} >= "
                    f"high={p.high:g}); give low < high."
                )
            if (name.startswith("gamma") or name == "delta") and p.low < 0:
                raise ValueError(
                    f"tuning.params.{name}: multipliers must be >= 0, got low={p.low:g}."
                )
            if p.log and p.low <= 0:
                raise ValueError(
                    f"tuning.params.{name}: a log-uniform range needs low > 0, got "
                    f"low={p.low:g}; set log = false or a positive low."
                )
            if name == "planning_horizon" and (
                p.low != int(p.low) or p.high != int(p.high) or p.low < 1 or p.high > 60
            ):
                raise ValueError(
                    f"tuning.params.planning_horizon: integer bounds in [1, 60] expected, got "
                    f"[{p.low:g}, {p.high:g}]."
                )
        return self


class LearnedSpec(_Strict):
    """Learned views (kinds ``dmpo_mpo`` and ``dmpo_qp``)."""

    checkpoint: str | None = Field(
        default=None,
        description="Path of a dmpo checkpoint written by `mpo train` (relative to the cwd).",
    )
    delta: Annotated[float, Field(gt=0, le=2)] | None = Field(
        default=None,
        description="dmpo_qp: inference turnover limit ||w - w_prev||_1 <= delta (default: the "
        "checkpoint's); tunable with [tuning.params.delta].",
    )


class PolicySpec(_Strict):
    """A complete policy specification."""

    name: str
    kind: Literal["hold", "equal_weight", "spo", "mpo", "dmpo_mpo", "dmpo_qp"]
    description: str = ""
    rebalance_every: PositiveInt = Field(
        default=21, description="equal_weight: periods between rebalances."
    )
    data: DataSpec = DataSpec()
    backtest: BacktestSpec = BacktestSpec()
    costs: CostsSpec = CostsSpec()
    forecast: ForecastSpec = ForecastSpec()
    risk: RiskSpec = RiskSpec()
    objective: ObjectiveSpec = ObjectiveSpec()
    constraints: ConstraintsSpec = ConstraintsSpec()
    tuning: TuningSpec = TuningSpec()
    learned: LearnedSpec = LearnedSpec()

    @model_validator(mode="after")
    def _horizon(self) -> PolicySpec:
        if self.kind.startswith("dmpo") and not self.learned.checkpoint:
            raise ValueError(
                f"kind={self.kind!r} needs [learned] checkpoint = 'path/to/dmpo.pt' (written by "
                "`mpo train`)."
            )
        if self.kind == "spo" and self.objective.planning_horizon != 1:
            raise ValueError(
                f"kind='spo' has planning_horizon 1, got {self.objective.planning_horizon}; use "
                "kind='mpo' for a multi-period policy."
            )
        if "delta" in self.tuning.params and self.kind != "dmpo_qp":
            raise ValueError(
                f"tuning.params.delta (the learned QP's turnover limit) needs kind='dmpo_qp', got "
                f"kind={self.kind!r}."
            )
        if self.learned.delta is not None and self.kind != "dmpo_qp":
            raise ValueError(f"learned.delta applies to kind='dmpo_qp' only, got {self.kind!r}.")
        if self.kind not in ("mpo", "dmpo_mpo") and "planning_horizon" in self.tuning.params:
            raise ValueError(
                f"tuning.params.planning_horizon needs kind='mpo', got kind={self.kind!r}."
            )
        return self

    def with_updates(self, **sections: dict) -> PolicySpec:
        """Copy with some fields of sections replaced (validated), e.g. ``objective={...}``."""
        data = self.model_dump()
        for section, values in sections.items():
            if isinstance(data.get(section), dict):
                data[section] = {**data[section], **values}
            else:
                data[section] = values
        return parse_spec(data, source=f"{self.name!r} with updates {sections}")


def format_validation_error(exc: ValidationError, source: str, what: str = "policy spec") -> str:
    """A pydantic error as one line per bad field, naming ``source`` (file) and each field."""
    lines = [f"invalid {what} {source}:"]
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        if err["type"] == "extra_forbidden":
            lines.append(f"  - unknown field {loc!r}; remove it or check its spelling.")
        else:
            given = err.get("input")
            lines.append(f"  - {loc}: {err['msg']} (got {given!r}).")
    return "\n".join(lines)


def read_toml(path: str | Path, what: str, hint: str) -> dict:
    """The TOML file at ``path`` as a dict; :class:`SpecError` if it is missing or invalid."""
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"{what} {str(path)!r} does not exist; {hint}.")
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(f"{what} {str(path)!r} is not valid TOML: {exc}.") from None


def parse_spec(data: dict, source: str = "<dict>") -> PolicySpec:
    """Validate a spec dictionary, raising :class:`SpecError` naming ``source`` and fields."""
    try:
        return PolicySpec.model_validate(data)
    except ValidationError as exc:
        raise SpecError(format_validation_error(exc, source)) from None


def load_spec(path: str | Path) -> PolicySpec:
    """Load and validate a TOML policy spec."""
    data = read_toml(path, "policy spec", "see the files in policies/")
    return parse_spec(data, source=repr(str(path)))

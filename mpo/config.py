"""Policy specifications: TOML files validated by pydantic models.

A spec is data until :func:`mpo.policies.build_policy` turns it into a
cvxportfolio policy. Unknown keys and out-of-range values are errors that name
the file and the field.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from mpo.config_constraints import ConstraintsSpec
from mpo.errors import SpecError
from mpo.validation import StrictModel, check_date, installed_solver

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
    "check_date",
    "load_spec",
]

PositiveInt = Annotated[int, Field(ge=1)]
NonNeg = Annotated[float, Field(ge=0)]


_Strict = StrictModel  # every spec section: unknown keys, inf/nan and true-as-1 refused


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
    max_jump: Annotated[float, Field(ge=0)] = Field(
        default=5.0,
        description="Price-sanity check: a one-period move by more than this factor that "
        "reverses is an error (0 disables).",
    )
    max_date_gap: Annotated[float, Field(ge=0)] = Field(
        default=10.0,
        description="Calendar check: a step between dates of more than this many median "
        "spacings (10 days for daily data) is an error (0 disables).",
    )

    _dates = field_validator("start", "end")(classmethod(lambda cls, v: check_date(v)))


class BacktestSpec(_Strict):
    """Backtest window and accounting."""

    start: str | None = Field(default=None, description="First trading date of the backtest.")
    end: str | None = None
    initial_value: Annotated[float, Field(gt=0)] = 1e6
    initial: Literal["equal", "cash"] = "equal"
    solver: str = "CLARABEL"
    fallback_solver: str | list[str] | None = Field(
        default=None,
        description="Solver, or list of solvers tried in order, when `solver` fails at a date "
        "or returns an inaccurate solution (e.g. stopped by max_iter).",
    )
    inaccurate: Literal["warn", "error"] = Field(
        default="warn",
        description="A solve that ends inaccurate after every fallback: 'warn' uses it, counts "
        "it in the results and warns naming the date; 'error' stops the policy at that date.",
    )
    solver_options: dict[str, float | int | bool | str] = Field(
        default_factory=dict,
        description="Extra keyword arguments for cvxpy's solve (e.g. CLARABEL's tol_gap_rel).",
    )

    _dates = field_validator("start", "end")(classmethod(lambda cls, v: check_date(v)))

    @field_validator("solver")
    @classmethod
    def _installed(cls, value: str) -> str:
        return installed_solver(value)

    @field_validator("fallback_solver")
    @classmethod
    def _chain(cls, value: str | list[str] | None) -> list[str] | None:
        if value is None:
            return None
        chain = [value] if isinstance(value, str) else list(value)
        if not chain:
            return None
        return [installed_solver(v) for v in chain]


class CostsSpec(_Strict):
    """Transaction and holding costs: the estimates every term shares, and each term's parameters.

    The terms are those registered in :data:`mpo.costs.COST_TERMS` (built-in:
    ``spread``, ``impact``, ``holding``). A term's parameters are given flat
    (``half_spread = 0.001``) or in its own table (``[costs.spread]``); every
    registered term is present after validation, with its defaults, and is
    reached as ``spec.costs.<term>`` (e.g. ``spec.costs.spread.half_spread``;
    flat access ``spec.costs.half_spread`` works too).
    """

    model_config = ConfigDict(extra="allow", frozen=True)

    sigma_span: Annotated[float, Field(ge=1)] = 10.0
    volume_span: Annotated[float, Field(ge=1)] = 10.0
    sigma: str | None = Field(
        default=None,
        description="File of the planner's per-period volatility estimates (dates x tickers).",
    )
    volume: str | None = Field(
        default=None,
        description="File of the planner's dollar-volume estimates (dates x tickers).",
    )
    simulator: Literal["realized", "estimates"] = Field(
        default="realized",
        description="What the simulator charges: the period's realised volume and volatility "
        "(default, as Boyd et al.), or the planner's estimates.",
    )

    @model_validator(mode="before")
    @classmethod
    def _route_terms(cls, data):
        from mpo.costs import COST_TERMS

        if not isinstance(data, dict):
            return data
        own = set(cls.model_fields)
        out = {k: v for k, v in data.items() if k in own}
        per_term: dict[str, dict] = {}
        flat: set[str] = set()
        owners = {}
        for name, term in COST_TERMS.items():
            for field, info in term.Params.model_fields.items():
                owners[field] = name
                if info.alias:
                    owners[info.alias] = name
        for key, value in data.items():
            if key in own:
                continue
            if isinstance(value, BaseModel):
                value = value.model_dump()
            if key in COST_TERMS and (isinstance(value, dict) or key not in owners):
                if not isinstance(value, dict):
                    raise ValueError(
                        f"costs.{key} is the cost term {key!r}: give its parameters as a table "
                        f"[costs.{key}], got {value!r}."
                    )
                per_term.setdefault(key, {}).update(value)
            elif key in owners:
                per_term.setdefault(owners[key], {})[key] = value
                flat.add(key)
            else:
                raise ValueError(
                    f"unknown field costs.{key!r}; cost terms are {', '.join(COST_TERMS.names())} "
                    f"(parameters: {', '.join(sorted(owners))}) and the shared fields are "
                    f"{', '.join(sorted(own))}."
                )
        for name, term in COST_TERMS.items():
            try:
                out[name] = term.Params(**per_term.get(name, {}))
            except ValidationError as exc:
                first = exc.errors()[0]
                loc = ".".join(str(p) for p in first["loc"])
                where = f"costs.{loc}" if loc in flat else f"costs.{name}.{loc}"
                raise ValueError(f"{where}: {first['msg']} (got {first.get('input')!r}).") from None
        return out

    def terms(self) -> dict:
        """Validated parameters of every registered cost term, by name (defaults filled)."""
        from mpo.costs import COST_TERMS

        extra = self.__pydantic_extra__ or {}
        out = {}
        for name, term in COST_TERMS.items():
            params = extra.get(name)
            out[name] = params if isinstance(params, BaseModel) else term.Params(**(params or {}))
        return out

    def market(self) -> dict:
        """This section without the policy-only term parameters: what every policy of a run
        must share (a fixed fee's ``deadband`` or ``amortize`` are each policy's choice)."""
        terms = self.terms()
        out = {k: v for k, v in self.model_dump().items() if k not in terms}
        for name, params in terms.items():
            fields = type(params).model_fields
            out[name] = {
                k: v
                for k, v in params.model_dump().items()
                if not (fields[k].json_schema_extra or {}).get("policy_only")
            }
        return out

    def estimates(self):
        """The :class:`~mpo.costs.estimates.CostEstimates` of this section (files read)."""
        from mpo.costs.estimates import CostEstimates

        sigma = volume = None
        if self.sigma is not None or self.volume is not None:
            from mpo.forecast.files import FileEstimate

            sigma = FileEstimate(self.sigma, what="sigma") if self.sigma else None
            volume = FileEstimate(self.volume, what="volume") if self.volume else None
        return CostEstimates(
            self.sigma_span, self.volume_span, sigma=sigma, volume=volume, simulator=self.simulator
        )

    def __getattr__(self, item: str):
        try:
            return super().__getattr__(item)
        except AttributeError:
            for params in self.terms().values():
                for field, info in type(params).model_fields.items():
                    if item in (field, info.alias):
                        return getattr(params, field)
            raise

    def describe(self) -> str:
        """One line naming every enabled term and its parameters, and the estimates."""
        from mpo.costs import CostModel

        model = CostModel.from_spec(self)
        terms = ", ".join(
            f"{t.name} (" + ", ".join(f"{k}={v:g}" for k, v in t.params.model_dump().items()) + ")"
            for t in model.active()
        )
        sigma = self.sigma or f"EWM span {self.sigma_span:g}"
        volume = self.volume or f"EWM span {self.volume_span:g}"
        return (
            f"{terms or 'none'}; planner sigma {sigma}, volume {volume}; the simulator charges "
            f"{'realised volume and volatility' if self.simulator == 'realized' else 'the planner estimates'}"
        )


class ForecastSpec(_Strict):
    """Returns forecaster: ``kind`` names an entry of :data:`mpo.forecast.kinds.FORECASTS`."""

    kind: str = Field(
        default="rolling_mean",
        description="rolling_mean | ewma_mean | linear_regression | file (or a plugin's kind).",
    )
    lookback: Annotated[int, Field(ge=2)] = 504
    halflife: Annotated[float, Field(ge=1)] = 126.0
    ridge: NonNeg = 1e-6
    path: str | None = Field(
        default=None,
        description="kind='file': forecasts (dates x tickers, or (date, tau) x tickers); "
        "relative to the spec file.",
    )

    @field_validator("kind")
    @classmethod
    def _known(cls, value: str) -> str:
        from mpo.forecast.kinds import FORECASTS

        FORECASTS.get(value)
        return value


class RiskSpec(_Strict):
    """Risk model: ``kind`` names an entry of :data:`mpo.forecast.kinds.RISK_MODELS`."""

    kind: str = Field(
        default="full", description="full | factor | file | factor_file (or a plugin's kind)."
    )
    lookback: Annotated[int, Field(ge=2)] = 504
    factors: PositiveInt = 5
    path: str | None = Field(
        default=None, description="kind='file': a covariance per date ((date, ticker) x tickers)."
    )
    exposures: str | None = Field(
        default=None, description="kind='factor_file': factor exposures ((date, factor) x tickers)."
    )
    factor_covariance: str | None = Field(
        default=None,
        description="kind='factor_file': factor covariance ((date, factor) x factors, or "
        "factors x factors).",
    )
    idiosyncratic: str | None = Field(
        default=None, description="kind='factor_file': idiosyncratic variances (dates x tickers)."
    )

    @field_validator("kind")
    @classmethod
    def _known(cls, value: str) -> str:
        from mpo.forecast.kinds import RISK_MODELS

        RISK_MODELS.get(value)
        return value


class ObjectiveSpec(_Strict):
    """Trade-off multipliers and planning horizon."""

    gamma_risk: NonNeg = 5.0
    gamma_trade: NonNeg = 1.0
    gamma_hold: NonNeg = 1.0
    planning_horizon: Annotated[int, Field(ge=1, le=60)] = 1


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

    _dates = field_validator("train_start", "train_end", "test_start", "test_end")(
        classmethod(lambda cls, v: check_date(v))
    )
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
    #: Training spec (relative to this spec) `mpo walkforward` retrains with per fold, and
    #: its model the checkpoint holds (default: the checkpoint's kind).
    train_spec: str | None = None
    model: Literal["dmpo", "two_stage", "direct"] | None = None


class PolicySpec(_Strict):
    """A complete policy specification.

    ``kind`` names a registered :class:`mpo.policies.PolicyKind` (built-in:
    ``hold``, ``equal_weight``, ``spo``, ``mpo``, ``dmpo_mpo``, ``dmpo_qp``);
    the kind validates the sections it reads. ``[params]`` holds a plugin
    kind's own settings (validated by the kind's ``Params`` model).
    """

    name: str
    kind: str
    description: str = ""
    rebalance_every: PositiveInt = Field(
        default=21, description="equal_weight: periods between rebalances."
    )
    params: dict[str, float | int | bool | str | list[float | int | str]] = Field(
        default_factory=dict, description="A plugin policy kind's own settings."
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

    @field_validator("name")
    @classmethod
    def _safe_name(cls, value: str) -> str:
        from mpo.io import check_name

        return check_name(value, "policy name")

    @field_validator("kind")
    @classmethod
    def _known_kind(cls, value: str) -> str:
        from mpo.policies import POLICY_KINDS

        POLICY_KINDS.get(value)
        return value

    @model_validator(mode="after")
    def _by_kind(self) -> PolicySpec:
        from mpo.policies import POLICY_KINDS

        kind = POLICY_KINDS.get(self.kind)
        kind.validate(self)
        if kind.Params is not None:
            try:
                kind.Params(**self.params)
            except ValidationError as exc:
                first = exc.errors()[0]
                loc = ".".join(str(p) for p in first["loc"])
                raise ValueError(f"params.{loc}: {first['msg']} (kind {self.kind!r}).") from None
        elif self.params:
            raise ValueError(
                f"kind={self.kind!r} takes no [params] table, got {sorted(self.params)}."
            )
        tunable = kind.tunable
        searched = {} if self.tuning.params == _default_params() else self.tuning.params
        for name in searched:
            if name not in tunable:
                raise ValueError(
                    f"tuning.params.{name} is not tunable for kind={self.kind!r}; it tunes "
                    f"{', '.join(tunable) or 'nothing'}."
                )
        if self.learned.delta is not None and "delta" not in tunable:
            raise ValueError(f"learned.delta applies to kind='dmpo_qp' only, got {self.kind!r}.")
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


#: Spec fields holding file paths that are read relative to the spec file.
SPEC_FILE_FIELDS = {
    "forecast": ("path",),
    "risk": ("path", "exposures", "factor_covariance", "idiosyncratic"),
    "costs": ("sigma", "volume"),
    "constraints": ("groups",),
    "learned": ("train_spec",),
}


def resolve_paths(data: dict, base: Path) -> dict:
    """``data`` with the relative file paths of :data:`SPEC_FILE_FIELDS` made absolute from ``base``."""
    out = dict(data)
    for section, fields in SPEC_FILE_FIELDS.items():
        sec = out.get(section)
        if not isinstance(sec, dict):
            continue
        sec = dict(sec)
        for field in fields:
            value = sec.get(field)
            if isinstance(value, str) and value and not Path(value).expanduser().is_absolute():
                sec[field] = str((base / Path(value).expanduser()).resolve())
        out[section] = sec
    return out


def load_spec(path: str | Path) -> PolicySpec:
    """Load and validate a TOML policy spec (file paths inside it are relative to it)."""
    data = read_toml(path, "policy spec", "see the files in policies/")
    data = resolve_paths(data, Path(path).resolve().parent)
    return parse_spec(data, source=repr(str(path)))

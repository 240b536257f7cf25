"""DMPO training specification: a TOML file validated by pydantic (see ``policies/dmpo.toml``).

Unknown keys and out-of-range values raise :class:`~mpo.errors.SpecError` naming the
file and the field, like :mod:`mpo.config`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import AfterValidator, Field, ValidationError, model_validator

from mpo.config import (
    CostsSpec,
    DataSpec,
    NonNeg,
    PositiveInt,
    _Strict,
    format_validation_error,
    read_toml,
    resolve_paths,
)
from mpo.data.synthetic import RegimeSwitching
from mpo.errors import SpecError
from mpo.learn.dataset import FEATURES, FeatureSpec
from mpo.learn.encoders import ENCODERS, EncoderConfig
from mpo.learn.options import QPOptions
from mpo.learn.qp.backend import QP_BACKENDS
from mpo.registry import one_of

if TYPE_CHECKING:
    from mpo.costs import CostModel

__all__ = [
    "BaselinesSection",
    "CostsSection",
    "DataSection",
    "EncoderSection",
    "FeaturesSection",
    "QPSection",
    "RegimesSection",
    "SplitSection",
    "TrainSection",
    "TrainSpec",
    "load_train_spec",
    "parse_train_spec",
]

Positive = Annotated[float, Field(gt=0)]
Fraction = Annotated[float, Field(gt=0, lt=1)]

Remedy = Literal["none", "l1_penalty", "larger_delta", "learned_delta", "curriculum"]


#: Factors of the synthetic market ``mpo train --data synthetic`` draws (market, 2 styles).
SYNTHETIC_FACTORS = 3
_REGIMES = RegimeSwitching()
Finite = Annotated[float, Field(allow_inf_nan=False)]


class RegimesSection(_Strict):
    """Planted regimes of the synthetic market (:class:`mpo.data.synthetic.RegimeSwitching`),
    one entry per regime in each list; an empty ``[data.regimes]`` table plants the default
    calm / stress pair. Their labels feed ``[train] regime_loss``."""

    stay: list[Annotated[float, Field(ge=0, lt=1)]] = Field(
        default=list(_REGIMES.stay),
        min_length=2,
        description="P(s_t = a | s_{t-1} = a) per regime (their number is the regimes').",
    )
    vol_scale: list[Annotated[float, Field(gt=0, allow_inf_nan=False)]] = Field(
        default=list(_REGIMES.vol_scale),
        description="Multiplier of every factor's shock volatility, per regime.",
    )
    factor_means: list[list[Finite]] = Field(
        default=[list(row) for row in _REGIMES.factor_means],
        description="Daily mean added to the factor returns, one row per regime (market "
        "factor first; missing entries are 0).",
    )

    @model_validator(mode="after")
    def _one_entry_per_regime(self) -> RegimesSection:
        long = [row for row in self.factor_means if len(row) > SYNTHETIC_FACTORS]
        if long:
            raise ValueError(
                f"factor_means rows have at most {SYNTHETIC_FACTORS} entries (the synthetic "
                f"market's factors: market, then two styles), got {long[0]!r}."
            )
        R = len(self.stay)
        if len(self.vol_scale) != R or len(self.factor_means) != R:
            raise ValueError(
                f"stay, vol_scale and factor_means need one entry per regime: got {R} stay, "
                f"{len(self.vol_scale)} vol_scale and {len(self.factor_means)} factor_means "
                f"(give all three with {R} entries)."
            )
        return self

    @property
    def n_regimes(self) -> int:
        return len(self.stay)

    def switching(self) -> RegimeSwitching:
        """The :class:`~mpo.data.synthetic.RegimeSwitching` of this section."""
        return RegimeSwitching(
            stay=tuple(self.stay),
            vol_scale=tuple(self.vol_scale),
            factor_means=tuple(tuple(row) for row in self.factor_means),
        )


class DataSection(DataSpec):
    """Default data as in policy specs (the CLI's ``--data`` overrides ``source``), plus the
    shape of the synthetic market and its optional planted regimes (``[data.regimes]``)."""

    n_assets: PositiveInt = 20
    n_periods: Annotated[int, Field(ge=100)] = 1500
    predictability: Annotated[float, Field(ge=0, lt=1)] = 0.0
    regimes: RegimesSection | None = Field(
        default=None,
        description="Planted regimes of the synthetic market (None: none, the market of "
        "before this option, bit-identical).",
    )


class FeaturesSection(_Strict):
    """See :class:`mpo.learn.dataset.FeatureSpec`."""

    window: PositiveInt = 20
    features: list[Literal[FEATURES]] = ["returns"]  # type: ignore[valid-type]
    vol_span: Annotated[float, Field(ge=1)] = 21.0
    momentum_lookback: PositiveInt = 21
    volume_span: Annotated[float, Field(ge=1)] = 10.0
    return_scale: Positive = 100.0
    # windows of the risk features (None: FeatureSpec's defaults 63, 63, 0.95, 21; None
    # rather than the number keeps the spec of runs made before these fields resumable)
    drawdown_window: PositiveInt | None = None
    var_window: PositiveInt | None = None
    var_level: Annotated[float, Field(gt=0, lt=1)] | None = None
    downside_window: PositiveInt | None = None


class SplitSection(_Strict):
    """Chronological split fractions and purge gap (default ``T + H - 1``)."""

    val: Fraction = 0.15
    test: Fraction = 0.15
    purge: Annotated[int, Field(ge=0)] | None = None

    @model_validator(mode="after")
    def _sum(self) -> SplitSection:
        if self.val + self.test >= 1:
            raise ValueError(f"val + test must be < 1, got {self.val} + {self.test}.")
        return self


EncoderKind = Annotated[str, AfterValidator(one_of(ENCODERS, "encoder"))]
BackendName = Annotated[str, AfterValidator(one_of(QP_BACKENDS, "QP backend"))]


class EncoderSection(_Strict):
    """See :class:`mpo.learn.encoders.EncoderConfig`; ``kind`` names an encoder registered
    in :data:`mpo.learn.encoders.ENCODERS`."""

    kind: EncoderKind = "lstm"
    hidden: PositiveInt = 32
    layers: PositiveInt = 1
    heads: PositiveInt = 2
    factor: Literal["full", "lowrank", "lowrank_diag"] = "lowrank_diag"
    rank: PositiveInt = 3
    dropout: Annotated[float, Field(ge=0, lt=1)] = 0.0
    mu_scale: Positive = 1e-3
    l_scale: Positive = 1e-2
    diag_scale: Positive = 1e-4
    # the optional heads of mpo.learn.heads (None: off; None rather than 0 / false keeps
    # the spec of runs made before these fields resumable)
    regimes: Annotated[int, Field(ge=0, le=16)] | None = Field(
        default=None, description="K: a regime head mixing K mu heads (0 or None: off)."
    )
    asset_risk: bool | None = Field(
        default=None, description="A per-asset volatility scaling of Sigma_hat."
    )


class QPSection(_Strict):
    """The DMPO QP (see :class:`mpo.learn.qp.QPSpec`); ``delta`` is the hard turnover limit,
    ``backend`` names a solver registered in :data:`mpo.learn.qp.QP_BACKENDS`."""

    horizon: Annotated[int, Field(ge=1, le=20)] = 1
    risk_aversion: Positive = 1.0
    gamma: NonNeg | None = Field(
        default=None,
        description="L1 trading weight in the QP; default: the L1 cost rate costs.half_spread.",
    )
    delta: Positive = 0.2
    w_max: Annotated[float, Field(gt=0, le=1)] | None = None
    eps: Positive = 1e-6
    backend: BackendName = "fast"
    participation: Positive | None = Field(
        default=None,
        description="Executed trades at most this fraction of the planner's ADV estimate "
        "(a box in the QP: training and the model's own evaluation; mpo.learn.limits).",
    )
    min_adv: Positive | None = Field(
        default=None,
        description="Names with a planner ADV estimate below this (dollars) may only shrink.",
    )
    warm_start: bool | None = Field(
        default=None,
        description="Warm-start each training window's QP from its previous active set "
        "(fast backend; best with [train] w_prev = 'fixed'). Speed only: measured slower "
        "than cold solves at the shipped learning rates (see benchmarks/qp_warm.py).",
    )


class CostsSection(CostsSpec):
    """The policy specs' ``[costs]`` (:class:`mpo.config.CostsSpec`) plus the portfolio value.

    The same cost terms, estimates and simulator mode a backtest charges
    (:class:`mpo.costs.CostModel`): training scores decisions with each term's training
    formula at the ``sigma`` and ``V`` the simulator charges
    (:class:`~mpo.costs.estimates.CostEstimates`). Training has no value path, so the
    impact term is charged at the portfolio value ``value``. ``kappa`` (older training
    specs) is the old name of ``half_spread``: the L1 cost per unit traded. Every enabled
    term must have a training formula (:meth:`mpo.costs.CostModel.check_trainable`). The
    defaults are a policy spec's (half spread 0.002, impact ``b = 1``): a training spec
    without ``[costs]`` trains on what a backtest without ``[costs]`` charges.
    """

    value: Positive = Field(
        default=1e6, description="Portfolio value (dollars) at which training charges impact."
    )

    @model_validator(mode="before")
    @classmethod
    def _kappa_is_half_spread(cls, data):
        if not isinstance(data, dict) or "kappa" not in data:
            return data
        if "half_spread" in data:
            raise ValueError(
                "costs.kappa is the old name of costs.half_spread; give one of them, got "
                f"kappa={data['kappa']!r} and half_spread={data['half_spread']!r}."
            )
        out = {k: v for k, v in data.items() if k != "kappa"}
        out["half_spread"] = data["kappa"]
        return out

    @model_validator(mode="after")
    def _trainable(self) -> CostsSection:
        from mpo.costs import CostModel

        CostModel(terms=self.terms()).check_trainable()  # SpecError (a ValueError)
        return self

    @property
    def l1_rate(self) -> float:
        """The L1 cost per unit traded (the half spread): the QP's default ``gamma``."""
        return float(self.spread.half_spread)


class TrainSection(_Strict):
    """Optimiser, loss, schedule, early stopping and starvation remedy."""

    loss: Literal["sharpe", "utility"] = "sharpe"
    utility_risk_aversion: NonNeg = 10.0
    steps: Literal["first", "plan"] = Field(
        default="first", description="Net return of the executed step only, or of the plan."
    )
    epochs: PositiveInt = 20
    batch_size: Annotated[int, Field(ge=2)] = 64
    lr: Positive = 3e-3
    weight_decay: NonNeg = 1e-4
    clip: Positive = 1.0
    schedule: Literal["cosine", "none"] = "cosine"
    patience: PositiveInt = 5
    seed: int = 0
    w_prev: Literal["equal", "random", "fixed"] = Field(
        default="random",
        description="Training w_prev: equal weight, a fresh EW/Dirichlet mix per batch "
        "('random'), or one such draw per window, the same every epoch ('fixed').",
    )
    w_prev_mix: Annotated[float, Field(ge=0, le=1)] = 0.5
    remedy: Remedy = "l1_penalty"
    l1_penalty: NonNeg = 1e-3
    delta_factor: Annotated[float, Field(ge=1)] = 3.0
    curriculum_epochs: PositiveInt = 5
    max_batches: PositiveInt | None = Field(
        default=None, description="Cap on batches per epoch (sampled without replacement)."
    )
    regime_loss: NonNeg | None = Field(
        default=None,
        description="Weight of the regime cross-entropy (needs [encoder] regimes and labels).",
    )


class BaselinesSection(_Strict):
    """The baselines trained on the same windows."""

    two_stage_epochs: PositiveInt = 10
    lw_lookback: Annotated[int, Field(ge=10)] = 252
    direct_epochs: PositiveInt = 10


class TrainSpec(_Strict):
    """A complete DMPO training run."""

    name: str = "dmpo"
    description: str = ""
    data: DataSection = DataSection()
    features: FeaturesSection = FeaturesSection()
    split: SplitSection = SplitSection()
    encoder: EncoderSection = EncoderSection()
    qp: QPSection = QPSection()
    costs: CostsSection = CostsSection()
    train: TrainSection = TrainSection()
    baselines: BaselinesSection = BaselinesSection()

    @model_validator(mode="after")
    def _regime_loss_needs_a_head(self) -> TrainSpec:
        if self.train.regime_loss and not self.encoder.regimes:
            raise ValueError(
                f"train.regime_loss = {self.train.regime_loss} needs a regime head: set "
                "encoder.regimes >= 1 (or drop regime_loss)."
            )
        planted = self.data.regimes
        if self.train.regime_loss and planted and self.encoder.regimes < planted.n_regimes:
            raise ValueError(
                f"encoder.regimes = {self.encoder.regimes} is fewer than the "
                f"{planted.n_regimes} planted regimes of data.regimes that train.regime_loss "
                f"teaches: set encoder.regimes >= {planted.n_regimes}."
            )
        return self

    def feature_spec(self) -> FeatureSpec:
        f = self.features
        return FeatureSpec(
            window=f.window,
            horizon=self.qp.horizon,
            features=tuple(f.features),
            vol_span=f.vol_span,
            momentum_lookback=f.momentum_lookback,
            volume_span=f.volume_span,
            return_scale=f.return_scale,
            **{
                k: getattr(f, k)
                for k in ("drawdown_window", "var_window", "var_level", "downside_window")
                if getattr(f, k) is not None
            },
        )

    def encoder_config(self, n_assets: int) -> EncoderConfig:
        e = self.encoder
        return EncoderConfig(
            kind=e.kind,
            n_assets=n_assets,
            n_features=len(self.features.features),
            window=self.features.window,
            horizon=self.qp.horizon,
            hidden=e.hidden,
            layers=e.layers,
            heads=e.heads,
            factor=e.factor,
            rank=min(e.rank, n_assets),
            dropout=e.dropout,
            mu_scale=e.mu_scale,
            l_scale=e.l_scale,
            diag_scale=e.diag_scale,
            regimes=e.regimes or 0,
            asset_risk=bool(e.asset_risk),
        )

    def cost_model(self) -> CostModel:
        """The :class:`mpo.costs.CostModel` of ``[costs]``: what training and the backtests
        of this ``[costs]`` section charge (every enabled term has a training formula)."""
        from mpo.costs import CostModel

        model = CostModel.from_spec(self.costs)
        model.check_trainable()
        return model

    @property
    def qp_gamma(self) -> float:
        """The QP's L1 trading weight: ``qp.gamma``, by default the L1 cost rate."""
        return self.costs.l1_rate if self.qp.gamma is None else self.qp.gamma

    @property
    def has_limits(self) -> bool:
        """Whether ``[qp]`` sets a participation limit or a liquidity screen (the dataset
        then carries the planner's ADV estimates)."""
        return self.qp.participation is not None or self.qp.min_adv is not None

    def qp_options(self) -> QPOptions:
        """The models' QP options (``gamma`` defaults to ``costs.half_spread``; the delta is
        learned under ``remedy = "learned_delta"``)."""
        q = self.qp
        return QPOptions(
            risk_aversion=q.risk_aversion,
            gamma=self.qp_gamma,
            eps=q.eps,
            w_max=q.w_max,
            delta=q.delta,
            learned_delta=self.train.remedy == "learned_delta",
            backend=q.backend,
            warm_start=bool(q.warm_start),
            participation=q.participation,
            min_adv=q.min_adv,
        )

    def with_updates(self, **sections: dict) -> TrainSpec:
        """Copy with fields of sections replaced (validated), e.g. ``train={"epochs": 3}``."""
        data = self.model_dump()
        for section, values in sections.items():
            data[section] = {**data[section], **values}
        return parse_train_spec(data, source=f"{self.name!r} with updates {sections}")


def parse_train_spec(data: dict, source: str = "<dict>") -> TrainSpec:
    """Validate a dict; :class:`SpecError` names ``source`` and each bad field."""
    try:
        return TrainSpec.model_validate(data)
    except ValidationError as exc:
        raise SpecError(format_validation_error(exc, source, "train spec")) from None


def load_train_spec(path: str | Path) -> TrainSpec:
    """Load and validate a TOML training spec (file paths inside it are relative to it)."""
    data = read_toml(path, "train spec", "see policies/dmpo.toml")
    data = resolve_paths(data, Path(path).resolve().parent)  # [costs] sigma / volume files
    return parse_train_spec(data, source=repr(str(path)))

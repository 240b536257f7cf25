"""Attribution of a trained encoder's views and decisions to its input features (``mpo explain``).

What is explained, for each checkpoint (``dmpo.pt`` and ``two_stage.pt`` of an ``mpo
train`` run folder, side by side) and each decision date ``t``:

* ``mu_hat``: the encoder's expected return of every asset for planning step ``step``
  (default 0, the step that is traded);
* ``weights``: the QP layer's decision ``w*`` of that step (DMPO: the learned views and
  the checkpoint's turnover rule; two-stage: its ``mu_hat`` with the Ledoit-Wolf risk of
  the ``lw_lookback`` returns before ``t``, held fixed), from equal weights ``w_prev =
  1/n`` (no portfolio is at hand; the training validation starts there too).

Each output (one asset's ``mu_hat`` or weight: the ``output`` column) is attributed to
every input of the window ``X`` of shape ``(T, n, F)``: ``lag`` (0 = the newest row,
the features of ``t`` itself, built from data before ``t``; ``T - 1`` the oldest),
``asset`` (whose feature it is) and ``feature``. Methods (:data:`METHODS`, captum):

* ``saliency``: the signed gradient ``d output / d X`` at ``X`` (``Saliency(abs=False)``);
* ``integrated_gradients``: ``(X - X0) * mean gradient on the straight path`` (Gauss-
  Legendre, ``n_steps`` points); the attributions of one output sum to ``f(X) - f(X0)``
  up to captum's convergence delta (recorded per output in the summary);
* ``gradient_shap``: captum's ``GradientShap`` (expected gradients with noise around the
  baseline, seeded), the algorithm of SHAP's ``GradientExplainer``;
* ``shap``: SHAP's own ``GradientExplainer`` (only if the optional ``shap`` package is
  installed).

Baseline ``X0`` (``baseline=``): ``"zeros"`` (default) is the zero window in feature
space. It is fixed, so attributions of different dates share one reference, and it is
"no news" for the centred features: scaled past returns, momentum (mean past return) and
the volume surprise (log volume minus its EWM mean) are zero on average by construction.
(Volatility's zero is "no risk", a point outside the data: read its attribution as the
effect of the current risk level against none.) ``"window_mean"`` (each asset's and
feature's mean over the window's lags) credits only the movement inside the window: a
level that persists over the whole window (a momentum regime) gets no attribution at
all, which hides the very signal a return model uses; it is offered for comparison.

No look-ahead: the window of ``t`` is :func:`mpo.learn.dataset.window_at` of the data
strictly before ``t`` (the same windows as training and backtests, tested equal to the
training panel), and the two-stage risk is estimated from the same past rows; data on or
after ``t`` are never read (tested by perturbing them).

:func:`explain` returns the attributions as data (:class:`Explanation`);
:mod:`mpo.learn.explain_cli` writes the CSV, heatmap PNG and JSON files of ``mpo explain``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from mpo.data.market import MarketData
from mpo.errors import CheckpointError, DataError, SpecError
from mpo.learn.checkpoint import Checkpoint, load_checkpoint
from mpo.learn.dataset import FeatureSpec, window_at
from mpo.learn.encoders import EncoderConfig, Views
from mpo.learn.losses import DTYPE
from mpo.learn.qp import min_turnover

__all__ = [
    "BASELINES",
    "EXPLAINED_KINDS",
    "METHODS",
    "TARGETS",
    "Explanation",
    "ExplainedModel",
    "explain",
    "feature_table",
    "find_checkpoints",
    "format_feature_table",
    "load_explained_model",
]

logger = logging.getLogger(__name__)

#: Checkpoint kinds whose encoders produce views, in the order they are shown.
EXPLAINED_KINDS = ("dmpo", "two_stage")
#: What is attributed.
TARGETS = ("mu_hat", "weights")
#: Attribution methods (``shap`` needs the optional ``shap`` package).
METHODS = ("saliency", "integrated_gradients", "gradient_shap", "shap")
#: Integrated-gradients baselines (see the module docstring).
BASELINES = ("zeros", "window_mean")
#: Columns of the long attribution frame.
COLUMNS = ("model", "target", "method", "date", "output", "feature", "asset", "lag", "attribution")


# ------------------------------------------------------------------ checkpoints
@dataclasses.dataclass(frozen=True, eq=False)
class ExplainedModel:
    """A loaded checkpoint ready to be explained.

    Attributes
    ----------
    name : str
        Its kind (``"dmpo"`` or ``"two_stage"``).
    path : Path
    ckpt : Checkpoint
    model : nn.Module
        :class:`~mpo.learn.model.DMPOModel` or :class:`~mpo.learn.baselines.TwoStageModel`,
        in eval mode.
    features : FeatureSpec
    lw_lookback : int
        Past returns of the two-stage Ledoit-Wolf risk model (as in training).
    """

    name: str
    path: Path
    ckpt: Checkpoint
    model: nn.Module
    features: FeatureSpec
    lw_lookback: int

    @property
    def tickers(self) -> list[str]:
        return list(self.ckpt.tickers)


def find_checkpoints(path: str | Path) -> dict[str, Path]:
    """``{kind: file}`` of a checkpoint file or of an ``mpo train`` run folder.

    Raises
    ------
    CheckpointError
        ``path`` does not exist, or is a folder without ``dmpo.pt`` / ``two_stage.pt``.
    """
    path = Path(path)
    if path.is_file():
        return {"": path}  # kind read from the file
    if not path.is_dir():
        raise CheckpointError(
            f"checkpoint {str(path)!r} does not exist; give a checkpoint file (dmpo.pt, "
            "two_stage.pt) or the run folder `mpo train` wrote them to."
        )
    found = {k: path / f"{k}.pt" for k in EXPLAINED_KINDS if (path / f"{k}.pt").is_file()}
    if not found:
        raise CheckpointError(
            f"run folder {str(path)!r} holds none of {[f'{k}.pt' for k in EXPLAINED_KINDS]}; "
            "train one with `mpo train policies/dmpo.toml --run-dir ...` or name the file."
        )
    return found


def load_explained_model(path: str | Path) -> ExplainedModel:
    """Load a ``dmpo`` or ``two_stage`` checkpoint into its model (eval mode).

    Raises
    ------
    CheckpointError
        Unreadable file, another kind (e.g. ``direct``), weights that do not fit.
    """
    from mpo.learn.baselines import TwoStageModel
    from mpo.learn.model import DMPOModel

    path = Path(path)
    ckpt = load_checkpoint(path)
    if ckpt.kind not in EXPLAINED_KINDS:
        raise CheckpointError(
            f"checkpoint {str(path)!r} holds a {ckpt.kind!r} model; mpo explain attributes the "
            f"views of {' and '.join(EXPLAINED_KINDS)} encoders."
        )
    try:
        enc = EncoderConfig.from_dict(ckpt.encoder_config)
        features = FeatureSpec.from_dict(ckpt.feature_config)
    except (TypeError, SpecError) as exc:
        raise CheckpointError(
            f"checkpoint {str(path)!r} has an invalid configuration: {exc}"
        ) from None
    qp = ckpt.qp_options()
    model = DMPOModel(enc, qp) if ckpt.kind == "dmpo" else TwoStageModel(enc, qp)
    try:
        model.load_state_dict(ckpt.state_dict)
    except RuntimeError as exc:
        raise CheckpointError(
            f"checkpoint {str(path)!r}: its weights do not fit its encoder configuration "
            f"({str(exc).splitlines()[0]})."
        ) from None
    model.eval()
    spec = (ckpt.extra or {}).get("spec") or {}
    lookback = int((spec.get("baselines") or {}).get("lw_lookback", 252))
    return ExplainedModel(ckpt.kind, path, ckpt, model, features, lookback)


def _load_models(checkpoint) -> list[ExplainedModel]:
    if isinstance(checkpoint, ExplainedModel):
        return [checkpoint]
    if isinstance(checkpoint, (list, tuple)):
        return [m if isinstance(m, ExplainedModel) else load_explained_model(m) for m in checkpoint]
    return [load_explained_model(p) for p in find_checkpoints(checkpoint).values()]


# ------------------------------------------------------------------- the data
def _aligned_market(market: MarketData, em: ExplainedModel) -> MarketData:
    """``market`` with the checkpoint's tickers in its order; :class:`CheckpointError` if the
    universes differ."""
    tickers, have = em.tickers, market.tickers
    if sorted(tickers) != sorted(have):
        only_ckpt = [t for t in tickers if t not in have]
        only_data = [t for t in have if t not in tickers]
        raise CheckpointError(
            f"checkpoint {str(em.path)!r} was trained on another universe: only in the "
            f"checkpoint {only_ckpt}, only in the data {only_data}. Explain it on the data it "
            "was trained on (--data) or train on this universe."
        )
    return market if have == tickers else market.select(tickers)


def _decision_dates(
    market: MarketData, dates: Sequence | None, features: FeatureSpec
) -> list[pd.Timestamp]:
    """Trading dates of the decisions; a date between trading dates is moved back to the
    last trading date before it. :class:`DataError` outside the usable range."""
    cal = market.calendar
    need = features.warmup + features.window  # rows of history window_at needs
    if len(cal) <= need:
        raise DataError(
            f"data {market.name!r} has {len(cal)} periods; a decision needs {need} periods of "
            f"history ({features.warmup} warm-up + window {features.window}) before it."
        )
    first, last = cal[need], cal[-1]
    out = []
    for value in [last] if not dates else dates:
        t = pd.Timestamp(value)
        if t < first or t > last:
            raise DataError(
                f"date {t.date()} is outside the decision dates of data {market.name!r}: "
                f"{first.date()} to {last.date()} (the first {need} periods are the warm-up "
                "and window of the first decision). Choose a --date in that range."
            )
        snapped = cal[cal.searchsorted(t, side="right") - 1]
        if snapped != t:
            logger.info("%s is not a trading date; explaining %s.", t.date(), snapped.date())
        out.append(snapped)
    return out


def _past(market: MarketData, t: pd.Timestamp) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Returns and dollar volumes strictly before ``t`` (what a policy at ``t`` may read)."""
    i = market.calendar.get_loc(t)
    return market.returns.iloc[:i], market.dollar_volumes.iloc[:i]


def _ledoit_wolf_factor(past_returns: pd.DataFrame, lookback: int, t) -> torch.Tensor:
    """The backtest's two-stage risk factor (:func:`mpo.forecast.learned.ledoit_wolf_factor`)."""
    from mpo.forecast.learned import ledoit_wolf_factor

    try:
        return torch.tensor(ledoit_wolf_factor(past_returns, lookback, t), dtype=DTYPE)
    except DataError as exc:
        raise DataError(f"{exc.args[0].rstrip('.')}; choose a later --date.") from None


# ------------------------------------------------------------ forward functions
def _turnover_limit(em: ExplainedModel, w_prev: torch.Tensor, delta: float | None):
    """The decision's turnover limit per sample: the checkpoint's rule (DMPO: its hard or
    learned limit) or ``delta``, raised only where ``w_prev`` leaves no feasible point."""
    model = em.model
    if em.name == "dmpo" and delta is None:
        return model.inference_delta(w_prev)
    need = min_turnover(w_prev, model.qp_spec.w_max) + 1e-12
    return torch.clamp(need, min=model.delta if delta is None else delta)


def _forward(
    em: ExplainedModel,
    target: str,
    step: int,
    L_lw: torch.Tensor | None,
    delta: float | None,
) -> Callable[[torch.Tensor], torch.Tensor]:
    """``f(X) -> (B, n)``: step ``step`` of ``mu_hat`` or of ``w*`` for windows ``X``."""
    model, n = em.model, len(em.tickers)

    def views(X: torch.Tensor) -> Views:
        if em.name == "dmpo":
            return model.views(X)
        mu = model.mu(X)
        return Views(mu, L_lw.expand(X.shape[0], n, n))

    if target == "mu_hat":
        return lambda X: views(X).mu[:, step]

    def weights(X: torch.Tensor) -> torch.Tensor:
        w_prev = torch.full((X.shape[0], n), 1.0 / n, dtype=DTYPE)
        w, _ = model.solve(views(X), w_prev, _turnover_limit(em, w_prev, delta))
        return w[:, step]

    return weights


def _starved(em: ExplainedModel, X: torch.Tensor, L_lw, delta: float | None) -> bool:
    """Whether the decision at ``X`` is pinned by its constraints (zero ``d w / d mu``)."""
    model, n = em.model, len(em.tickers)
    with torch.no_grad():
        w_prev = torch.full((1, n), 1.0 / n, dtype=DTYPE)
        v = model.views(X) if em.name == "dmpo" else Views(model.mu(X), L_lw[None])
        _, info = model.solve(v, w_prev, _turnover_limit(em, w_prev, delta))
    return bool(info.starved.any())


# ------------------------------------------------------------------ attribution
def _baseline(X: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "zeros":
        return torch.zeros_like(X)
    return X.mean(dim=1, keepdim=True).expand_as(X).contiguous()


@contextlib.contextmanager
def _owned_rngs(seed: int) -> Iterator[None]:
    """Seed torch's and numpy's global RNGs (captum's ``GradientShap`` draws from both) for
    the block, restoring the caller's states after: the draws are the seed's alone."""
    state = np.random.get_state()  # noqa: NPY002 (captum draws from the legacy global RNG)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            np.random.seed(seed)  # noqa: NPY002
            yield
    finally:
        np.random.set_state(state)  # noqa: NPY002


def _attribute(
    fn: Callable, X: torch.Tensor, method: str, baseline: str, n_steps: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Attributions ``(n_out, T, n, F)`` of each output of ``fn`` at ``X`` ``(1, T, n, F)``
    and the per-output convergence delta (NaN where the method has none)."""
    from captum.attr import GradientShap, IntegratedGradients, Saliency

    n_out = int(fn(X.detach()).shape[-1])
    Xs = X.expand(n_out, *X.shape[1:]).clone().requires_grad_(True)
    base = _baseline(Xs.detach(), baseline)
    targets = list(range(n_out))
    none = np.full(n_out, np.nan)
    if method == "saliency":
        attr = Saliency(fn).attribute(Xs, target=targets, abs=False)
        return attr.detach().numpy(), none
    if method == "integrated_gradients":
        attr, conv = IntegratedGradients(fn).attribute(
            Xs, baselines=base, target=targets, n_steps=n_steps, method="gausslegendre",
            return_convergence_delta=True,
        )  # fmt: skip
        return attr.detach().numpy(), conv.detach().numpy()
    if method == "gradient_shap":
        spread = float(X.detach().std().clamp(min=1e-12)) * 0.1
        with _owned_rngs(seed):
            attr = GradientShap(fn).attribute(
                Xs, baselines=base[:1], target=targets, n_samples=n_steps, stdevs=spread
            )
        return attr.detach().numpy(), none
    return _shap_attribute(fn, Xs.detach(), base[:1], n_steps, seed), none


def _shap_attribute(fn, Xs, base, n_steps: int, seed: int) -> np.ndarray:
    """SHAP's ``GradientExplainer`` (optional ``shap`` package) on the same outputs."""
    try:
        import shap
    except ImportError:
        raise SpecError(
            "method 'shap' needs the optional shap package (pip install shap); the captum "
            "method 'gradient_shap' computes the same expected gradients without it."
        ) from None

    class _Wrapped(nn.Module):
        def forward(self, X):
            return fn(X)

    with _owned_rngs(seed):
        explainer = shap.GradientExplainer(_Wrapped(), base)
        values = explainer.shap_values(Xs[:1], nsamples=n_steps, rseed=seed)
    arr = np.stack(values, 0)[:, 0] if isinstance(values, list) else np.moveaxis(values[0], -1, 0)
    return arr.astype(float)


def _long_rows(attr: np.ndarray, tickers: list[str], names: Sequence[str]) -> dict:
    """Columns ``output, feature, asset, lag, attribution`` of ``attr`` ``(n_out, T, n, F)``."""
    n_out, T, n, F = attr.shape
    o, k, a, f = np.meshgrid(
        np.arange(n_out), np.arange(T), np.arange(n), np.arange(F), indexing="ij"
    )
    tick, feat = np.asarray(tickers, dtype=object), np.asarray(names, dtype=object)
    return {
        "output": tick[o.ravel()],
        "feature": feat[f.ravel()],
        "asset": tick[a.ravel()],
        "lag": (T - 1 - k).ravel(),
        "attribution": attr.ravel(),
    }


@dataclasses.dataclass(frozen=True)
class Explanation:
    """Attributions of one or more checkpoints at one or more dates.

    Attributes
    ----------
    frame : pd.DataFrame
        Long format, columns :data:`COLUMNS`.
    checks : pd.DataFrame
        One row per ``(model, target, method, date, output)``: ``value`` (``f(X)``),
        ``baseline_value`` (``f(X0)``), ``total`` (sum of attributions), ``delta``
        (captum's convergence delta; NaN for methods without one) and ``starved``.
    settings : dict
        Baseline, step, delta, n_steps, seed, checkpoints (JSON-able).
    """

    frame: pd.DataFrame
    checks: pd.DataFrame
    settings: dict


def _check_options(methods, targets, baseline: str, step: int, n_steps: int) -> None:
    bad = [m for m in methods if m not in METHODS]
    if bad or not methods:
        raise SpecError(f"methods must be names from {METHODS}, got {list(methods)}.")
    bad = [t for t in targets if t not in TARGETS]
    if bad or not targets:
        raise SpecError(f"targets must be names from {TARGETS}, got {list(targets)}.")
    if baseline not in BASELINES:
        raise SpecError(f"baseline must be one of {BASELINES}, got {baseline=}.")
    if step < 0 or n_steps < 2:
        raise SpecError(f"step must be >= 0 and n_steps >= 2, got {step=}, {n_steps=}.")


def explain(
    checkpoint,
    market: MarketData,
    dates: Sequence | None = None,
    *,
    methods: Sequence[str] = ("saliency", "integrated_gradients"),
    targets: Sequence[str] = TARGETS,
    baseline: str = "zeros",
    step: int = 0,
    delta: float | None = None,
    n_steps: int = 32,
    seed: int = 0,
) -> Explanation:
    """Attribute ``mu_hat`` and ``w*`` of each checkpoint to its inputs at ``dates``.

    Parameters
    ----------
    checkpoint : path, ExplainedModel or list of them
        A checkpoint file, an ``mpo train`` run folder (its ``dmpo.pt`` and
        ``two_stage.pt``, side by side), or loaded models.
    market : MarketData
        Data of the checkpoints' universe (any column order); only rows before each
        date are read.
    dates : sequence or None
        Decision dates (default: the last date of ``market``).
    methods, targets, baseline
        Names from :data:`METHODS`, :data:`TARGETS`, :data:`BASELINES`.
    step : int
        Planning step explained (0: the traded one).
    delta : float or None
        Turnover limit of the decisions (``inf``: none); ``None`` the checkpoint's rule.
    n_steps : int
        Integration points (integrated gradients) / samples (gradient SHAP).
    seed : int
        Seed of the sampling methods (``gradient_shap``, ``shap``).

    Raises
    ------
    CheckpointError
        Bad checkpoint path or file, another universe.
    DataError
        A date outside the usable range of ``market``.
    SpecError
        Unknown method, target or baseline; a step beyond the horizon.
    """
    _check_options(methods, targets, baseline, step, n_steps)
    parts, checks = [], []
    models = _load_models(checkpoint)
    for em in models:
        if step >= em.features.horizon:
            raise SpecError(
                f"step {step} is beyond the horizon {em.features.horizon} of {str(em.path)!r}."
            )
        data = _aligned_market(market, em)
        for t in _decision_dates(data, dates, em.features):
            past_r, past_v = _past(data, t)
            X = torch.as_tensor(window_at(t, past_r, past_v, em.features), dtype=DTYPE)[None]
            L_lw = None if em.name == "dmpo" else _ledoit_wolf_factor(past_r, em.lw_lookback, t)
            starved = _starved(em, X, L_lw, delta) if "weights" in targets else False
            if starved:
                logger.warning(
                    "%s at %s: the turnover limit pins the decision (gradient starvation); "
                    "weight attributions are zero where it binds (try delta=inf).",
                    em.name, t.date(),
                )  # fmt: skip
            for target in targets:
                fn = _forward(em, target, step, L_lw, delta)
                with torch.no_grad():
                    fx = fn(X)[0].numpy()
                    f0 = fn(_baseline(X, baseline))[0].numpy()
                for method in methods:
                    attr, conv = _attribute(fn, X, method, baseline, n_steps, seed)
                    cols = _long_rows(attr, em.tickers, em.features.features)
                    head = {"model": em.name, "target": target, "method": method, "date": t}
                    parts.append(pd.DataFrame({**head, **cols}))
                    checks.append(pd.DataFrame({
                        **head, "output": em.tickers, "value": fx, "baseline_value": f0,
                        "total": attr.reshape(len(fx), -1).sum(1), "delta": conv,
                        "starved": starved and target == "weights",
                    }))  # fmt: skip
    frame = pd.concat(parts, ignore_index=True)[list(COLUMNS)]
    settings = {
        "baseline": baseline, "step": step, "n_steps": n_steps, "seed": seed,
        "delta": None if delta is None else (str(delta) if math.isinf(delta) else delta),
        "w_prev": "equal weight", "checkpoints": {m.name: str(m.path) for m in models},
    }  # fmt: skip
    return Explanation(frame, pd.concat(checks, ignore_index=True), settings)


# ------------------------------------------------------------------ summaries
def feature_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Total absolute attribution per feature (rows) and ``model/target/method`` (columns),
    as shares of each column's total."""
    abs_ = frame.assign(attribution=frame["attribution"].abs())
    keys = ["model", "target", "method"]
    tot = abs_.groupby([*keys, "feature"], sort=False)["attribution"].sum().unstack(keys)
    tot.columns = ["/".join(c) for c in tot.columns]
    return tot / tot.sum(axis=0)


def format_feature_table(frame: pd.DataFrame) -> str:
    """:func:`feature_table` as percentages, one row per ``model/target/method`` (``-``: all
    attributions zero, e.g. a decision pinned by its turnover limit)."""
    table = feature_table(frame).T
    table.columns.name = None
    return table.map(lambda v: "-" if v != v else f"{v:.0%}").to_string()

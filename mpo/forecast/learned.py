"""Learned views inside cvxportfolio: a trained DMPO encoder as returns forecast and risk.

:class:`LearnedViews` loads a checkpoint written by ``mpo train`` and, at each
decision time ``t``, runs the encoder once on the feature window built from
the data cvxportfolio hands the policy (``past_returns``, ``past_volumes``:
rows strictly before ``t``), giving ``mu_hat`` for every planning step and
``Sigma_hat = L L' (+ diag(d)) + eps I``. The result is shared by every MPO
step and by the forecast and risk objects through cvxportfolio's per-backtest
``cache``.

:class:`LearnedReturnsForecast` and :class:`LearnedCovariance` are plain data
objects (not ``Estimator`` subclasses), so cvxportfolio aligns their outputs to
the universe by ticker and checks them for NaN; we also check them ourselves:
outputs are indexed by ticker (never by position), the universe must be the
checkpoint's unless its encoder is universe-free (``cross_asset``; the rule is
:meth:`LearnedViews.check_universe`'s), and non-finite views raise a
:class:`~mpo.errors.DataError` naming the ticker and date.

:class:`DMPOQPPolicy` is the trained decision itself: the QP layer's first-step
weights ``w_1`` for the current weights and the learned views, with the hard
turnover limit of the checkpoint.
"""

from __future__ import annotations

import functools
import logging
import math
from pathlib import Path

import cvxportfolio as cvx
import cvxpy as cp
import numpy as np
import pandas as pd
import torch

from mpo.errors import CheckpointError, ConvergenceError, DataError, SpecError
from mpo.learn.encoders import Views

__all__ = ["DMPOQPPolicy", "LearnedCovariance", "LearnedReturnsForecast", "LearnedViews"]

logger = logging.getLogger(__name__)


@functools.lru_cache(maxsize=8)
def _load(path: str, mtime_ns: int):
    from mpo.learn.baselines import TwoStageModel
    from mpo.learn.checkpoint import load_checkpoint
    from mpo.learn.dataset import FeatureSpec
    from mpo.learn.encoders import EncoderConfig
    from mpo.learn.train import DMPOModel

    ckpt = load_checkpoint(path)
    if ckpt.kind not in ("dmpo", "two_stage"):
        raise CheckpointError(
            f"checkpoint {path!r} holds a {ckpt.kind!r} model; learned forecasts need the views "
            "of a 'dmpo' (or 'two_stage') encoder."
        )
    enc = EncoderConfig.from_dict(ckpt.encoder_config)
    qp = ckpt.qp_options()  # typed; checkpoints of older layouts convert too
    model = DMPOModel(enc, qp) if ckpt.kind == "dmpo" else TwoStageModel(enc, qp)
    try:
        model.load_state_dict(ckpt.state_dict)
    except RuntimeError as exc:
        raise CheckpointError(
            f"checkpoint {path!r}: its weights do not fit its encoder configuration ({exc})."
        ) from None
    model.eval()
    return ckpt, model, FeatureSpec.from_dict(ckpt.feature_config)


def _universe_free(model) -> bool:
    """Whether the model's encoder class declares parameters independent of ``n``."""
    from mpo.learn.encoders import encoder_class

    return bool(getattr(encoder_class(model.encoder_config.kind), "universe_free", False))


def _universe_free_kinds() -> list[str]:
    """Registered encoder kinds whose checkpoints apply to other universes."""
    from mpo.learn.encoders import ENCODERS

    return [name for name, cls in ENCODERS.items() if getattr(cls, "universe_free", False)]


@functools.lru_cache(maxsize=8)
def _load_for(path: str, mtime_ns: int, n: int):
    """The checkpoint's model rebuilt for ``n`` assets (same weights; universe-free encoders)."""
    from dataclasses import replace

    ckpt, base, _ = _load(path, mtime_ns)
    model = type(base)(replace(base.encoder_config, n_assets=n), ckpt.qp_options())
    try:
        model.load_state_dict(base.state_dict())
    except RuntimeError as exc:
        raise CheckpointError(
            f"checkpoint {path!r}: its weights depend on the number of assets and cannot be "
            f"applied to {n} ({exc})."
        ) from None
    model.eval()
    return model


class LearnedViews:
    """A trained encoder applied to past data, once per decision time.

    A period costs the encoder's forward (under ``torch.inference_mode``) and little
    else: the past rows are read as arrays, the tickers' positions in cvxportfolio's
    columns are found once per universe, and the window is built without pandas
    (:func:`~mpo.learn.dataset.window_from_arrays`); the views equal those of frames
    reordered by name and :func:`~mpo.learn.dataset.window_at` (tested, bit for bit).

    Parameters
    ----------
    checkpoint
        Path of a ``dmpo`` checkpoint (``mpo train`` writes ``dmpo.pt``).
    """

    def __init__(self, checkpoint: str | Path):
        path = Path(checkpoint)
        if not path.is_file():
            raise CheckpointError(
                f"checkpoint {str(path)!r} does not exist; train one with `mpo train "
                "policies/dmpo.toml` and point [learned] checkpoint at its dmpo.pt."
            )
        self.path = str(path.resolve())
        self._mtime_ns = path.stat().st_mtime_ns
        self.ckpt, self.model, self.features = _load(self.path, self._mtime_ns)
        #: the universe the model is applied to (the checkpoint's until check_universe)
        self.tickers = list(self.ckpt.tickers)
        self._index = pd.Index(self.tickers)  # built once: frames by ticker every period
        self._order: dict = {}  # role -> (columns, positions of self.tickers): _positions
        self.kind = self.ckpt.kind
        self.horizon = self.model.encoder_config.horizon
        self.eps = float(self.model.qp_spec.eps)
        spec = (self.ckpt.extra or {}).get("spec") or {}
        #: two-stage risk: Ledoit-Wolf on this many past returns (as in training)
        self.lw_lookback = int((spec.get("baselines") or {}).get("lw_lookback", 252))
        from mpo.learn.dataset import history_tail

        #: rows of past data a decision reads (older ones cannot change the views)
        self.keep = max(history_tail(self.features), self.lw_lookback)
        splits = (self.ckpt.extra or {}).get("splits") or {}
        ends = [splits[k]["end"] for k in ("train", "val") if k in splits]
        #: last decision date whose data trained or selected (early-stopped) the model
        self.selection_end = pd.Timestamp(max(ends) if ends else self.ckpt.train_window[-1])

    def __repr__(self) -> str:
        return f"LearnedViews({Path(self.path).name}, {len(self.tickers)} assets)"

    def history(self) -> int:
        """Periods of data before the first decision (feature warm-up plus window)."""
        return self.features.warmup + self.features.window

    def check_universe(self, universe: list[str]) -> None:
        """Apply the model to ``universe``, or raise :class:`CheckpointError`.

        The rule: the checkpoint's own tickers (any order) are always accepted. Another
        universe (tickers removed, added or both) is accepted only when the encoder's
        parameters do not depend on the number of assets (its class sets
        ``universe_free = True``: ``cross_asset``) and the QP stays feasible
        (``n * w_max >= 1``); the model is then rebuilt for ``n`` assets with the same
        weights, and :attr:`tickers` becomes ``universe``. Every other encoder
        (``lstm``, ``transformer``: heads sized by ``n``, asset embeddings) is refused.
        """
        if sorted(universe) == sorted(self.tickers):
            return
        trained = list(self.ckpt.tickers)
        if sorted(universe) != sorted(trained) and not _universe_free(self.model):
            only_ckpt = [t for t in trained if t not in universe]
            only_now = [t for t in universe if t not in trained]
            raise CheckpointError(
                f"checkpoint {self.path!r} was trained on another universe: only in the "
                f"checkpoint {only_ckpt}, only in the data {only_now}. Train on this universe "
                "(mpo train ... --data ...), select the checkpoint's tickers, or train an "
                "encoder whose checkpoints apply to other universes ([encoder] kind = "
                f"{' or '.join(repr(k) for k in _universe_free_kinds())})."
            )
        self._apply_to(list(universe), trained)

    def _apply_to(self, universe: list[str], trained: list[str]) -> None:
        n = len(universe)
        if sorted(universe) == sorted(trained):
            self.model = _load(self.path, self._mtime_ns)[1]
            self.tickers = trained
        else:
            w_max = self.ckpt.qp_options().w_max
            need = 1 if w_max is None else max(1, math.ceil(1.0 / w_max - 1e-9))
            if n < need:
                raise CheckpointError(
                    f"checkpoint {self.path!r} cannot be applied to {n} ticker(s): its QP is "
                    f"fully invested with every weight capped at {w_max=}, which needs at least "
                    f"{need} tickers."
                )
            self.model = _load_for(self.path, self._mtime_ns, n)
            self.tickers = universe
            logger.info(
                "checkpoint %s (trained on %d tickers) applied to %d: removed %s, added %s",
                self.path, len(trained), n, [t for t in trained if t not in universe],
                [t for t in universe if t not in trained],
            )  # fmt: skip
        self._index = pd.Index(self.tickers)
        self._order = {}

    def check_horizon(self, horizon: int, who: str) -> None:
        if horizon > self.horizon:
            raise SpecError(
                f"policy {who!r} plans {horizon} steps but the encoder of {self.path!r} predicts "
                f"{self.horizon}; set [objective] planning_horizon <= {self.horizon} or train "
                f"with [qp] horizon >= {horizon}."
            )

    def _positions(self, role: str, columns: pd.Index) -> np.ndarray | None:
        """Where :attr:`tickers` sit in ``columns`` (None: already in that order).

        Computed once per universe (cvxportfolio hands the same columns every period);
        ``role='returns'`` checks the universe (cash last) and may rebuild the model.
        """
        hit = self._order.get(role)
        if hit is not None and (hit[0] is columns or hit[0].equals(columns)):
            return hit[1]
        if role == "returns":
            self.check_universe(list(columns[:-1]))  # may set self.tickers, clear _order
        pos = columns.get_indexer(self.tickers)
        if (pos < 0).any():
            missing = [t for t, p in zip(self.tickers, pos, strict=True) if p < 0]
            raise DataError(
                f"the past {role} have no column for the tickers {missing} of {self!r}; give "
                f"{role} for every ticker of the universe."
            )
        pos = None if np.array_equal(pos, np.arange(len(pos))) else pos
        self._order[role] = (columns, pos)
        return pos

    def _past(self, role: str, frame: pd.DataFrame) -> np.ndarray:
        """The last :attr:`keep` rows of ``frame`` as floats, columns in :attr:`tickers`' order."""
        pos = self._positions(role, frame.columns)
        x = frame.iloc[-self.keep :].to_numpy(dtype=float)
        return x[:, : len(self.tickers)] if pos is None else x[:, pos]

    def _compute(self, t, past_returns: pd.DataFrame, past_volumes: pd.DataFrame | None):
        from mpo.learn.dataset import window_from_arrays

        x = self._past("returns", past_returns)  # cvxportfolio keeps cash last
        v = None  # only the 'volume' feature reads volumes
        if past_volumes is not None and "volume" in self.features.features:
            v = self._past("volumes", past_volumes)
        dates = past_returns.index[-len(x) :]
        X = torch.as_tensor(window_from_arrays(t, x, v, self.features, dates, self.tickers))[None]
        with torch.inference_mode():  # no autograd bookkeeping (the numbers of no_grad, tested)
            if self.kind == "dmpo":
                views = self.model.views(X)
            else:  # two-stage: MSE-trained mu_hat, Ledoit-Wolf risk of the past returns
                views = Views(
                    self.model.mu(X),
                    torch.as_tensor(ledoit_wolf_factor(x, self.lw_lookback, t))[None],
                )
        mu = views.mu[0].numpy()
        L = views.L[0].numpy()
        d = None if views.d is None else views.d[0].numpy()
        for name, arr in (("mu_hat", mu), ("L_hat", L), ("d_hat", d)):
            if arr is not None and not np.isfinite(arr).all():
                bad = np.argwhere(~np.isfinite(arr))[0]
                i = int(bad[-2] if name == "L_hat" else bad[-1])
                raise DataError(
                    f"the encoder of {self.path!r} returned a non-finite {name} for ticker "
                    f"{self.tickers[i]!r} at {pd.Timestamp(t).date()}; the checkpoint or the "
                    "input data are corrupt."
                )
        idio = np.full(len(self.tickers), self.eps) + (0.0 if d is None else d)
        return {  # the dense Sigma_hat only when asked (covariance_at): O(n^2) per period
            "mu": pd.DataFrame(mu, columns=self._index),
            "F": pd.DataFrame(L.T, columns=self._index),  # k x n: factor rows, ticker columns
            "d": pd.Series(idio, index=self._index),
            "views": views,
        }

    def at(self, t, past_returns, past_volumes=None, cache: dict | None = None) -> dict:
        """Views at ``t`` (computed once per ``t`` and backtest, through ``cache``)."""
        key = ("dmpo-views", self.path)
        if cache is not None:
            hit = cache.get(key)
            if hit is not None and hit[0] == t:
                return hit[1]
        value = self._compute(t, past_returns, past_volumes)
        if cache is not None:
            cache[key] = (t, value)
        return value

    def covariance_at(self, t, past_returns, past_volumes=None, cache=None) -> pd.DataFrame:
        """Dense ``Sigma_hat = F' F + diag(d)`` at ``t`` by ticker (built once per ``t``)."""
        out = self.at(t, past_returns, past_volumes, cache)
        if "Sigma" not in out:
            F, d = out["F"].to_numpy(), out["d"].to_numpy()
            out["Sigma"] = pd.DataFrame(
                F.T @ F + np.diag(d), index=self._index, columns=self._index
            )
        return out["Sigma"]

    def factor_at(self, t, past_returns, past_volumes=None, cache=None) -> tuple:
        """``(F, sqrt(d))`` at ``t`` in ``past_returns``' asset order (built once per ``t``)."""
        out = self.at(t, past_returns, past_volumes, cache)
        if "factor" not in out:
            pos = self._positions("returns", past_returns.columns)  # tickers -> universe
            order = slice(None) if pos is None else np.argsort(pos)  # universe -> tickers
            F, d = out["F"].to_numpy(), out["d"].to_numpy()
            out["factor"] = (F[:, order].copy(), np.sqrt(d[order]))
        return out["factor"]


def ledoit_wolf_factor(assets: pd.DataFrame | np.ndarray, lookback: int, t) -> np.ndarray:
    """Cholesky factor of the Ledoit-Wolf covariance of the last ``lookback`` past returns
    (as :func:`mpo.learn.baselines.ledoit_wolf_factors` in training)."""
    from sklearn.covariance import LedoitWolf

    window = np.asarray(assets, dtype=float)[-lookback:]
    if len(window) < 10:
        raise DataError(
            f"the two-stage risk model at {pd.Timestamp(t).date()} needs >= 10 past returns, "
            f"got {len(window)}."
        )
    cov = LedoitWolf().fit(window).covariance_
    return np.linalg.cholesky(cov + 1e-12 * np.eye(cov.shape[0]))


class LearnedReturnsForecast:
    """``mu_hat`` of planning step ``mpo_step`` as a returns forecast (Series by ticker)."""

    def __init__(self, views: LearnedViews):
        self.views = views

    def __repr__(self) -> str:
        return f"LearnedReturnsForecast({self.views!r})"

    def history(self) -> int:
        return self.views.history()

    def values_in_time(
        self, t, past_returns, past_volumes=None, mpo_step=None, cache=None, **kwargs
    ) -> pd.Series:
        tau = int(mpo_step or 0)
        if tau >= self.views.horizon:
            raise SpecError(f"MPO step {tau} is beyond the encoder's horizon {self.views.horizon}.")
        return self.views.at(t, past_returns, past_volumes, cache)["mu"].iloc[tau].copy()


class LearnedCovariance:
    """``Sigma_hat = L L' (+ diag(d)) + eps I`` as a DataFrame by ticker."""

    def __init__(self, views: LearnedViews):
        self.views = views

    def __repr__(self) -> str:
        return f"LearnedCovariance({self.views!r})"

    def history(self) -> int:
        return self.views.history()

    def values_in_time(self, t, past_returns, past_volumes=None, cache=None, **kwargs):
        return self.views.covariance_at(t, past_returns, past_volumes, cache).copy()


class LearnedFactorRisk(cvx.costs.Cost):
    """``w' (L L' + diag(d) + eps I) w`` as ``||L' w||^2 + ||sqrt(d + eps) * w||^2``.

    The learned Sigma_hat as a factor model (what cvxportfolio's
    ``FactorModelCovariance`` compiles, O(n k) per solve instead of O(n^2)),
    with ``L_hat`` and ``d_hat`` from the encoder at each decision. cvxportfolio's
    own factor model cannot take them: it sizes its parameters by evaluating
    ``F`` from the time alone, before any data is seen.
    """

    def __init__(self, views: LearnedViews):
        self.views = views

    def __repr__(self) -> str:
        return f"LearnedFactorRisk({self.views!r})"

    def initialize_estimator(self, universe, **kwargs):
        n = len(universe) - 1
        self._exposures = cp.Parameter((self.views.model.encoder_config.k, n))
        self._idio_sqrt = cp.Parameter(n, nonneg=True)

    def values_in_time(self, t, past_returns, past_volumes=None, cache=None, **kwargs):
        F, idio_sqrt = self.views.factor_at(t, past_returns, past_volumes, cache)
        self._exposures.value = F  # the universe's order (cash last in past_returns)
        self._idio_sqrt.value = idio_sqrt

    def compile_to_cvxpy(self, w_plus, z, w_plus_minus_w_bm, **kwargs):
        w = w_plus_minus_w_bm[:-1]
        return cp.sum_squares(self._exposures @ w) + cp.sum_squares(cp.multiply(self._idio_sqrt, w))


def learned_risk(views: LearnedViews):
    """cvxportfolio's risk term of ``Sigma_hat = L L' + diag(d) + eps I``.

    :class:`LearnedFactorRisk` when ``L`` has fewer columns than assets
    (``lowrank``/``lowrank_diag`` encoders), the dense covariance for ``full``
    factors and the two-stage model's Cholesky factor. The same quadratic form
    either way (tested).
    """
    if views.kind == "dmpo" and views.model.encoder_config.k < len(views.tickers):
        return LearnedFactorRisk(views)
    return cvx.FullCovariance(Sigma=LearnedCovariance(views))


class DMPOQPPolicy(cvx.policies.Policy):
    """The QP layer's own first-step decision, as trained (hard turnover limit enforced).

    ``w_prev`` is the portfolio's current weights of the checkpoint's tickers;
    the target weights are the QP's ``w_1`` (fully invested, long-only, capped,
    ``||w_1 - w_prev||_1 <= delta`` with ``delta`` raised only where drift left
    no feasible point within it). Every decision is recorded in ``decisions``
    (``t -> (w_prev, w_1, delta)``) for inspection and tests.

    ``limits`` (:class:`mpo.learn.limits.BoxLimits`: the policy spec's ``[constraints]``
    ``participation`` and ``min_adv``) enter the QP as per-weight bounds of the executed
    trade (:func:`mpo.learn.limits.trade_box`), from ``estimates``' planner ADV at ``t``
    (the classic policies' estimate) and the current portfolio value. Decisions whose
    box left no fully invested portfolio are made without it and counted in
    ``relaxed``.
    """

    def __init__(
        self,
        views: LearnedViews,
        delta: float | None = None,
        limits=None,
        estimates=None,
    ):
        self.views = views
        #: inference turnover limit; None: the checkpoint's (hard, or learned, delta)
        self.delta = delta
        self.limits = limits
        self.estimates = estimates
        if limits is not None and limits.active and estimates is None:
            raise ValueError("DMPOQPPolicy: participation/liquidity limits need estimates.")
        self.decisions: dict = {}
        self.relaxed: list = []

    def _box(self, t, w_prev, past_volumes, value):
        """``(lower, upper)`` of the decision at ``t`` (``(None, None)`` without limits)."""
        if self.limits is None or not self.limits.active:
            return None, None
        from mpo.learn.limits import trade_box

        tickers = pd.Index(self.views.tickers)
        if past_volumes is None or value is None:
            raise DataError(
                f"kind='dmpo_qp' with [constraints] participation/min_adv at {pd.Timestamp(t).date()} "
                "needs dollar volumes and the portfolio value; give the data volumes."
            )
        adv = self.estimates.planner_volume(t, past_volumes[tickers], tickers)
        spec = self.views.model.qp_spec
        adv_t = torch.tensor(np.nan_to_num(np.asarray(adv, dtype=float), nan=0.0))[None]
        lower, upper, relaxed = trade_box(self.limits, w_prev, adv_t, float(value), spec.horizon,
                                          spec.w_max)  # fmt: skip
        if bool(relaxed.any()):
            self.relaxed.append(t)
        return lower, upper

    def values_in_time(
        self, t, current_weights, past_returns, past_volumes=None, cache=None, **kwargs
    ):
        out = self.views.at(t, past_returns, past_volumes, cache)
        tickers = self.views.tickers
        model = self.views.model
        w_prev = torch.tensor(current_weights[tickers].to_numpy(dtype=float), dtype=torch.float64)[
            None
        ]
        value = kwargs.get("current_portfolio_value")
        lower, upper = self._box(t, w_prev, past_volumes, value)
        with torch.no_grad():
            from mpo.learn.qp import min_turnover

            if self.views.kind == "dmpo" and self.delta is None:
                delta = model.inference_delta(w_prev, lower, upper)
            else:  # the same rule: the limit, raised only where drift left no feasible point
                need = min_turnover(w_prev, model.qp_spec.w_max, lower, upper)
                delta = torch.clamp(
                    need + 1e-12, min=self.delta if self.delta is not None else model.delta
                )
            try:  # the model's QP backend; two-stage: the same QP and limits as its decider
                w, info = model.solve(out["views"], w_prev, delta, lower=lower, upper=upper)
            except ConvergenceError:  # a backend that raises (both models hold w_prev otherwise)
                w, info = torch.full_like(w_prev, float("nan"))[:, None], None
        w1 = w[0, 0].numpy()
        if (info is not None and not bool(info.converged.all())) or not np.isfinite(w1).all():
            # as in training's evaluation: a sample the solver cannot certify holds w_prev
            logger.warning("learned QP at %s did not converge; holding the portfolio", t)
            w1 = w_prev[0].numpy().copy()
        self.decisions[t] = (w_prev[0].numpy(), w1, float(delta[0]))
        target = pd.Series(0.0, index=current_weights.index)
        target[tickers] = w1
        target.iloc[-1] = 1.0 - float(w1.sum())  # cash: zero up to rounding (fully invested)
        return target

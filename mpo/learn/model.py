"""The DMPO model: encoder views through the QP layer (backend chosen by its options)."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from mpo.learn.encoders import EncoderConfig, Views, build_encoder
from mpo.learn.limits import BoxLimits, trade_box
from mpo.learn.losses import DTYPE
from mpo.learn.options import QPOptions
from mpo.learn.qp import QPInfo, QPSpec, make_backend, min_turnover

__all__ = ["DMPOModel", "build_dmpo_model", "hold_unconverged", "seeded"]

logger = logging.getLogger(__name__)


class DMPOModel(nn.Module):
    """Encoder + DMPO QP layer: windows ``(B, T, n, F)`` -> weights ``(B, H, n)``.

    Parameters
    ----------
    encoder_config : EncoderConfig
    qp_options : QPOptions or dict
        Objective weights, hard limit ``delta``, ``learned_delta`` and the QP backend
        by name; a dict (a checkpoint's ``qp_config``) goes through
        :meth:`QPOptions.from_dict`.
    """

    def __init__(
        self, encoder_config: EncoderConfig, qp_options: QPOptions | Mapping[str, Any]
    ) -> None:
        super().__init__()
        self.encoder_config = encoder_config
        self.qp_options = opts = QPOptions.coerce(qp_options)
        c = encoder_config
        self.encoder = build_encoder(c).to(DTYPE)
        self.qp_spec = QPSpec(
            n=c.n_assets,
            horizon=c.horizon,
            rank=None if c.factor == "full" else c.k,
            risk_aversion=opts.risk_aversion,
            gamma=opts.gamma,
            eps=opts.eps,
            w_max=opts.w_max,
            factor=c.factor,
            max_iter=150,
            on_failure="nan",
        )
        self.delta = opts.delta
        self.qp_backend = make_backend(opts.backend, **opts.backend_options())
        self.delta_logit = None
        if opts.learned_delta:
            self.delta_logit = nn.Parameter(torch.tensor(math.log(9.0), dtype=DTYPE))

    def views(self, X: torch.Tensor) -> Views:
        """Encoder views in float64."""
        return self.encoder(X.to(DTYPE)).to(DTYPE)

    def inference_delta(
        self,
        w_prev: torch.Tensor,
        lower: torch.Tensor | None = None,
        upper: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Turnover limit per sample: the hard ``delta`` (or the learned one below it),
        raised to ``min_turnover(w_prev)`` (of the box ``lower``/``upper`` ``(B, H, n)``
        where given) where drift left no feasible point within it."""
        if self.delta_logit is not None:
            delta = self.delta * torch.sigmoid(self.delta_logit).expand(w_prev.shape[0])
        else:
            delta = torch.full((w_prev.shape[0],), self.delta, dtype=DTYPE)
        need = min_turnover(w_prev, self.qp_spec.w_max, lower, upper) + 1e-12
        return torch.maximum(delta, need)

    def decide(
        self,
        views: Views,
        w_prev: torch.Tensor,
        adv: torch.Tensor | None = None,
        value: float | None = None,
        limits: BoxLimits | None = None,
    ) -> tuple[torch.Tensor, QPInfo, torch.Tensor]:
        """Inference decisions ``(w, info, delta)`` under the hard turnover limit and the
        box ``limits`` (default: the model's own ``participation``/``min_adv``), which
        need the planner's ADV estimate ``adv`` ``(B, n)`` and the portfolio ``value``."""
        limits = self.qp_options.limits if limits is None else limits
        lower = upper = None
        if limits.active:
            if adv is None or value is None:
                raise ValueError("participation/liquidity limits need adv and value.")
            H = self.qp_spec.horizon
            lower, upper, _ = trade_box(limits, w_prev, adv, value, H, self.qp_spec.w_max)
        delta = self.inference_delta(w_prev, lower, upper)
        w, info = self.solve(views, w_prev, delta, lower=lower, upper=upper)
        return w, info, delta

    def solve(
        self,
        views: Views,
        w_prev: torch.Tensor,
        delta: torch.Tensor | float,
        gamma: float | None = None,
        keys: torch.Tensor | None = None,
        lower: torch.Tensor | None = None,
        upper: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, QPInfo]:
        """Weights ``(B, H, n)`` and the backend's :class:`~mpo.learn.qp.QPInfo`.

        ``keys``: the samples' identities (dataset positions) for a warm-starting
        backend (``[qp] warm_start``); they never change the result. ``lower``/``upper``:
        per-weight bounds (:func:`mpo.learn.limits.trade_box`).

        Samples the solver does not converge on (rare; logged) hold ``w_prev``: a
        feasible decision that carries no gradient.
        """
        w, info = self.qp_backend(
            self.qp_spec, views.mu, views.L, w_prev, delta, d=views.d, gamma=gamma, keys=keys,
            lower=lower, upper=upper,
        )  # fmt: skip
        return hold_unconverged(w, info, w_prev), info

    def forward(self, X: torch.Tensor, w_prev: torch.Tensor) -> torch.Tensor:
        """Inference decisions (hard turnover limit): ``(B, H, n)``."""
        w, _ = self.solve(self.views(X), w_prev, self.inference_delta(w_prev))
        return w


def hold_unconverged(w: torch.Tensor, info: QPInfo, w_prev: torch.Tensor) -> torch.Tensor:
    """``w`` with the samples the solver did not certify (rare; logged) holding ``w_prev``:
    a decision that trades nothing and carries no gradient."""
    bad = ~info.converged | torch.isnan(w).flatten(1).any(-1)
    if bool(bad.any()):
        logger.warning("QP did not converge for %d sample(s); they hold w_prev.", int(bad.sum()))
        hold = w_prev.detach()[:, None].expand_as(w)
        w = torch.where(bad[:, None, None], hold, torch.nan_to_num(w))
    return w


def seeded(seed: int, fn: Callable[[], Any]) -> Any:
    """Run ``fn`` with torch's global RNG seeded, restoring the caller's RNG state after."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return fn()


def build_dmpo_model(
    encoder_config: EncoderConfig, qp_options: QPOptions | Mapping[str, Any], seed: int
) -> DMPOModel:
    """A freshly initialised :class:`DMPOModel`; same seed -> same initial weights."""
    return seeded(seed, lambda: DMPOModel(encoder_config, qp_options))

"""Optional view heads: a regime mixture of the ``mu`` heads and a per-asset risk scaling.

Both are off by default (``EncoderConfig.regimes = 0``, ``asset_risk = False``): an
encoder then has exactly the parameters, state-dict keys and views it had before these
heads existed. :class:`~mpo.learn.encoders.ViewHeads` builds them, so every encoder
that maps its representation through ``ViewHeads`` (LSTM, transformer, third-party
ones) gets them from the spec. Shapes: ``B`` batch, ``n`` assets, ``H`` planning steps,
``K`` regimes, ``w`` the representation's width; a per-asset representation
``(B, n, w)`` is averaged over the assets into the pooled ``(B, w)`` the regime head
reads.

Regime head (``[encoder] regimes = K >= 1``), a mixture of experts::

    p      = softmax(W_r z + b_r)                  (B, K)     Views.regime
    mu_k   = mu_scale * Linear_k(z)                (B, K, H, n)
    mu_hat = sum_k p_k mu_k                        (B, H, n)

The ``K`` mu heads are one ``Linear`` whose ``K`` blocks start as copies of the plain
head's initialisation (drawn from the same RNG stream as the plain head, and the regime
head's weights are drawn after every other head's), so with the same seed a freshly
initialised model has the plain model's views, and ``K = 1`` *is* the plain head
(``p = 1``). The experts differ once trained: each gets the gradient weighted by its
probability, and ``[train] regime_loss`` (cross-entropy of ``p`` against regime labels,
:func:`mpo.learn.losses.regime_cross_entropy`) teaches ``p`` the planted regimes
directly. Chosen over feeding ``p`` into the heads as a conditioning input because the
mixture keeps ``K = 1`` identical to the plain heads and makes each regime's views
readable (``mu_k``), and because its extra parameters are ``(K - 1)`` mu heads plus a
``(w + 1) K`` classifier.

Per-asset risk head (``[encoder] asset_risk = true``)::

    a   = Linear(z)  (B, n)  pooled,  or  Linear(z_i)  (B, n, 1) per asset
    s   = exp(log(S_MAX) tanh(a))                  (B, n)     Views.asset_scale
    Sigma_hat = S (L L' + diag(d)) S + eps I,      S = diag(s)

so ``s_i`` in ``[1 / S_MAX, S_MAX]`` scales asset ``i``'s volatility (bounded: the QP
stays well conditioned). The head's weights start at zero (``s = 1``: the plain views).
The scaling is folded into the views, ``L <- S L`` and ``d <- s^2 d``, so every QP
backend, the backtest estimators and :meth:`~mpo.learn.encoders.Views.sigma` see the
scaled ``Sigma_hat`` with no change; ``Views.asset_scale`` keeps ``s`` for inspection.
``Sigma_hat`` stays positive semidefinite (positive definite with ``eps > 0``).

Extra parameters (:func:`extra_param_count`), pooled / per asset::

    regimes:    (w + 1) (K - 1) H n + (w + 1) K    /   (w + 1) (K - 1) H + (w + 1) K
    asset_risk: (w + 1) n                          /   (w + 1)
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.nn import functional as F

if TYPE_CHECKING:
    from mpo.learn.encoders import EncoderConfig

__all__ = [
    "S_MAX",
    "AssetRiskHead",
    "RegimeHead",
    "extra_param_count",
    "mix_regimes",
    "pooled",
    "tile_linear",
]

#: Largest per-asset volatility scale of the risk head (the smallest is ``1 / S_MAX``).
S_MAX = 4.0


def pooled(z: torch.Tensor, per_asset: bool) -> torch.Tensor:
    """The pooled ``(B, w)`` representation: ``z`` itself, or its mean over the assets."""
    return z.mean(1) if per_asset else z


def tile_linear(head: nn.Linear, copies: int) -> nn.Linear:
    """A ``Linear(w, copies * out)`` whose ``copies`` output blocks equal ``head``'s weights.

    Draws nothing from the RNG (``head`` was initialised as the plain head is).
    """
    out = nn.utils.skip_init(
        nn.Linear, head.in_features, copies * head.out_features, dtype=head.weight.dtype
    )
    with torch.no_grad():
        out.weight.copy_(head.weight.repeat(copies, 1))
        out.bias.copy_(head.bias.repeat(copies))
    return out


class RegimeHead(nn.Module):
    """Regime probabilities ``softmax(W z + b)`` from a pooled representation.

    Parameters
    ----------
    width : int
        ``w``.
    regimes : int
        ``K >= 1``.
    """

    def __init__(self, width: int, regimes: int) -> None:
        super().__init__()
        self.logits = nn.Linear(width, regimes)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """``z``: ``(B, w)`` -> probabilities ``(B, K)`` (rows sum to 1)."""
        return F.softmax(self.logits(z), dim=-1)


def mix_regimes(p: torch.Tensor, mu_k: torch.Tensor) -> torch.Tensor:
    """``sum_k p_k mu_k``: ``p`` ``(B, K)``, ``mu_k`` ``(B, K, H, n)`` -> ``(B, H, n)``."""
    return (p[:, :, None, None] * mu_k).sum(1)


class AssetRiskHead(nn.Module):
    """Per-asset volatility scales ``s = exp(log(S_MAX) tanh(Linear(z)))``, zero-initialised.

    Parameters
    ----------
    width : int
        ``w``.
    outputs : int
        ``n`` for a pooled representation, 1 for a per-asset one.
    """

    def __init__(self, width: int, outputs: int) -> None:
        super().__init__()
        self.a = nn.Linear(width, outputs)
        nn.init.zeros_(self.a.weight)
        nn.init.zeros_(self.a.bias)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """``z``: ``(B, w)`` or ``(B, n, w)`` -> ``s`` ``(B, n)``, in ``[1/S_MAX, S_MAX]``."""
        a = self.a(z)
        if a.dim() == 3:
            a = a.squeeze(-1)
        return torch.exp(math.log(S_MAX) * torch.tanh(a))


def extra_param_count(cfg: EncoderConfig, width: int, per_asset: bool) -> int:
    """Parameters the regime and risk heads add to :class:`ViewHeads` (module docstring)."""
    n, H, K = cfg.n_assets, cfg.horizon, cfg.regimes
    count = 0
    if K:
        count += (width + 1) * (K - 1) * (H if per_asset else H * n) + (width + 1) * K
    if cfg.asset_risk:
        count += (width + 1) * (1 if per_asset else n)
    return count

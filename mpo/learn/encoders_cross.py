"""``cross_asset`` and ``cross_asset_gru``: encoders whose parameters do not depend on ``n``.

Each asset's own window ``X[:, :, i, :]`` (``T x F``) goes through one shared temporal
encoder (the same weights for every asset) giving the asset's embedding (width
``e = hidden``):

* ``cross_asset``: a 1-D convolution whose kernel spans the window, i.e.
  ``Linear(T F, e)`` of the flattened window, then ``layers - 1`` ReLU-``Linear(e, e)``;
* ``cross_asset_gru``: a GRU (``layers`` deep) over the window, its last layer's final
  state (any window length; about 70x the cost per asset in float64 on a CPU, which
  dominates a training epoch from ~100 assets: ``benchmarks/scale.py --train-encoder``).

One block of cross-asset self-attention (``nn.MultiheadAttention`` over the ``n``
embeddings, residual, layer norms and a ReLU feed-forward of width ``2 e``) lets every
asset see the others; per-asset heads (:class:`~mpo.learn.encoders.ViewHeads` with
``per_asset=True``) map each embedding to its row of ``mu`` (one value per planning
step), its ``k`` risk-factor loadings (a row of ``L``) and its diagonal ``d``.

There is no positional encoding over assets, so the encoders are permutation
equivariant: permuting the assets of ``X`` permutes ``mu`` (``mu[:, :, perm]``), the
rows of ``L`` and ``d`` the same way, and ``Sigma_hat`` as ``Sigma_hat[perm][:, perm]``
(tested to 1e-12 in float64; the optional regime head reads the mean over assets, so
its probabilities are invariant). The factor count ``k = rank`` is fixed, so
``factor="full"`` (``k = n``) is refused. Parameters, with ``l = layers``::

    (T F + 1) e + (l - 1)(e^2 + e)              window encoder (cross_asset)
    3 e (F + e + 2) + (l - 1) 3 e (2 e + 2)     or GRU (cross_asset_gru)
    + 8 e^2 + 11 e                              cross-asset block
    + (e + 1) H + (e + 1) k [+ (e + 1)]         heads (mu, L [, d])
    [+ the optional regime and risk heads, per asset: mpo.learn.heads]

none of them a function of ``n``: one model trains on any universe size, and a
checkpoint applies to another universe (:attr:`CrossAssetEncoder.universe_free`;
:meth:`mpo.forecast.learned.LearnedViews.check_universe` states the rule).
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from mpo.errors import SpecError
from mpo.learn.encoders import ENCODERS, Encoder, EncoderConfig, ViewHeads, Views

__all__ = ["CrossAssetBlock", "CrossAssetEncoder", "CrossAssetGRUEncoder"]


class CrossAssetBlock(nn.Module):
    """Post-norm self-attention block over the asset axis (no positional encoding).

    Parameters
    ----------
    width : int
        Embedding width ``e``.
    heads : int
        Attention heads (must divide ``width``).
    dropout : float
    """

    def __init__(self, width: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(width, heads, dropout=dropout, batch_first=True)
        self.norm1 = nn.LayerNorm(width)
        self.norm2 = nn.LayerNorm(width)
        self.ff = nn.Sequential(
            nn.Linear(width, 2 * width), nn.ReLU(), nn.Dropout(dropout), nn.Linear(2 * width, width)
        )
        self.drop = nn.Dropout(dropout)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """``z``: ``(B, n, e)`` -> ``(B, n, e)``."""
        a, _ = self.attn(z, z, z, need_weights=False)
        z = self.norm1(z + self.drop(a))
        return self.norm2(z + self.drop(self.ff(z)))


@ENCODERS.register("cross_asset")
class CrossAssetEncoder(Encoder):
    """Shared per-asset window encoder, cross-asset attention, per-asset heads; see the
    module docstring."""

    #: Parameters independent of ``n``: checkpoints may be applied to other universes.
    universe_free: ClassVar[bool] = True

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__(cfg)
        self.temporal = self._temporal(cfg)
        self.cross = CrossAssetBlock(cfg.hidden, cfg.heads, cfg.dropout)
        self.heads = ViewHeads(cfg, cfg.hidden, per_asset=True)

    @staticmethod
    def _temporal(cfg: EncoderConfig) -> nn.Module:
        """A kernel spanning the window, ``Linear(T F, e)``, then ``layers - 1`` ReLU-Linear."""
        e, mods = cfg.hidden, [nn.Flatten(), nn.Linear(cfg.window * cfg.n_features, cfg.hidden)]
        for _ in range(cfg.layers - 1):
            mods += [nn.ReLU(), nn.Dropout(cfg.dropout), nn.Linear(e, e)]
        return nn.Sequential(*mods)

    @classmethod
    def _temporal_params(cls, cfg: EncoderConfig) -> int:
        e = cfg.hidden
        return (cfg.window * cfg.n_features + 1) * e + (cfg.layers - 1) * (e * e + e)

    def embed(self, seq: torch.Tensor) -> torch.Tensor:
        """``seq``: ``(B n, T, F)``, one row per asset -> embeddings ``(B n, e)``."""
        return self.temporal(seq)

    def forward(self, X: torch.Tensor) -> Views:
        """``X``: ``(B, T, n, F)`` (any ``n``) -> :class:`Views` of ``n`` assets."""
        B, T, n, Fe = X.shape
        seq = X.permute(0, 2, 1, 3).reshape(B * n, T, Fe)
        return self.heads(self.cross(self.embed(seq).reshape(B, n, -1)))

    @classmethod
    def check_config(cls, cfg: EncoderConfig) -> None:
        if cfg.factor == "full":
            raise SpecError(
                f"encoder kind {cls.name!r} needs factor='lowrank' or 'lowrank_diag' (a full "
                f"n x n factor has one column per asset), got {cfg.factor=}."
            )
        if cfg.hidden % cfg.heads:
            raise SpecError(f"heads must divide hidden, got {cfg.hidden=}, {cfg.heads=}.")

    @classmethod
    def param_count(cls, cfg: EncoderConfig) -> int:
        e = cfg.hidden
        block = 8 * e * e + 11 * e
        return cls._temporal_params(cfg) + block + ViewHeads.param_count(cfg, e, per_asset=True)


@ENCODERS.register("cross_asset_gru")
class CrossAssetGRUEncoder(CrossAssetEncoder):
    """:class:`CrossAssetEncoder` with a shared GRU over each asset's window (its last
    layer's final state is the embedding): any window length, ~70x the window encoder's
    cost per asset (float64 CPU)."""

    @staticmethod
    def _temporal(cfg: EncoderConfig) -> nn.Module:
        return nn.GRU(
            cfg.n_features,
            cfg.hidden,
            num_layers=cfg.layers,
            batch_first=True,
            dropout=cfg.dropout if cfg.layers > 1 else 0.0,
        )

    @classmethod
    def _temporal_params(cls, cfg: EncoderConfig) -> int:
        e = cfg.hidden
        return 3 * e * (cfg.n_features + e + 2) + (cfg.layers - 1) * 3 * e * (2 * e + 2)

    def embed(self, seq: torch.Tensor) -> torch.Tensor:
        return self.temporal(seq)[1][-1]

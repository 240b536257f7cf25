"""Encoders mapping a feature window to DMPO views (``mu_hat`` per planning step, risk).

Both encoders take ``X`` of shape ``(B, T, n, F)`` (batch, window, assets, features) and
return one :class:`Views`:

* ``mu``: ``(B, H, n)``, expected returns of the ``H`` planning steps,
* ``L``: ``(B, n, k)``, a risk factor shared by the steps (``k = n`` for ``"full"``),
* ``d``: ``(B, n)`` positive diagonal (``factor="lowrank_diag"`` only),

so that ``Sigma_hat = L L' (+ diag(d)) + eps I`` (``eps`` is the QP's ridge), and, when
the optional heads of :mod:`mpo.learn.heads` are on,

* ``regime``: ``(B, K)`` regime probabilities (``regimes = K``; ``mu`` is their mixture
  of ``K`` mu heads),
* ``asset_scale``: ``(B, n)`` per-asset volatility scales ``s`` (``asset_risk``), already
  folded into ``L`` and ``d``: ``Sigma_hat = S (L0 L0' + diag(d0)) S + eps I``.

``LSTMEncoder`` (seed paper): ``h_t = LSTM(X_t)`` over time with the ``n * F`` features
of a date as one input vector; ``mu_hat = Linear(h_T)`` for each of the ``H`` steps,
``L = Linear(h_T)``, ``d = Softplus(Linear(h_T))``. Parameters, with ``I = n F``,
``h = hidden``, ``l = layers``::

    4 h (I + h + 2) + (l - 1) 4 h (2 h + 2)        LSTM
    + (h + 1) (H n) + (h + 1) (n k) [+ (h + 1) n]  heads (mu, L [, d])
    [+ regime and risk heads: mpo.learn.heads.extra_param_count]

``TransformerEncoder`` (seed 001): per asset a token ``Linear(F, e)`` per date plus a
learned temporal encoding ``(T, e)`` and an asset embedding ``(n, e)``; ``layers``
blocks of self-attention over time (per asset, last token kept), then one block of
cross-asset attention; per-asset heads ``Linear(e, H)``, ``Linear(e, k)`` and
``Linear(e, 1)``. Each attention block (``nn.TransformerEncoderLayer``, feed-forward
``2 e``) has ``4 e^2 + 4 e`` (attention) ``+ 4 e^2 + 3 e`` (feed-forward) ``+ 4 e``
(norms) ``= 8 e^2 + 11 e`` parameters, so in all::

    (F + 1) e + T e + n e + (layers + 1)(8 e^2 + 11 e)
    + (e + 1) H + (e + 1) k [+ (e + 1)] [+ regime and risk heads]

:func:`expected_param_count` evaluates these formulas (tested against ``numel``).

Encoders are registered by name in :data:`ENCODERS` (``EncoderConfig.kind`` and a
training spec's ``[encoder] kind`` are looked up there). A third-party encoder is a
class ``cls(cfg: EncoderConfig)`` whose ``forward(X)`` returns :class:`Views`
(subclassing :class:`Encoder` gives the optional hooks ``check_config`` and
``param_count``; :class:`ViewHeads` maps a representation to views), registered with
``@ENCODERS.register("name")`` or through the entry-point group ``mpo.encoders``.
Outputs are scaled by ``mu_scale`` and ``l_scale`` (daily returns are ``~1e-3``
and daily volatilities ``~1e-2``) so that a freshly initialised encoder produces
views of the right order of magnitude.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import ClassVar, Literal

import torch
from torch import nn
from torch.nn import functional as F

from mpo.errors import SpecError
from mpo.learn import heads as _heads
from mpo.registry import Registry, RegistryError

__all__ = [
    "ENCODERS",
    "Encoder",
    "EncoderConfig",
    "LSTMEncoder",
    "TransformerEncoder",
    "ViewHeads",
    "Views",
    "build_encoder",
    "encoder_class",
    "expected_param_count",
]

#: Encoder classes by ``EncoderConfig.kind`` (entry-point group ``mpo.encoders``).
ENCODERS: Registry[type[nn.Module]] = Registry("encoder", "mpo.encoders")


@dataclass(frozen=True)
class Views:
    """What an encoder predicts for a batch of decision dates.

    Attributes
    ----------
    mu : torch.Tensor
        ``(B, H, n)`` expected returns per planning step.
    L : torch.Tensor
        ``(B, n, k)`` risk factor, shared by all steps.
    d : torch.Tensor or None
        ``(B, n)`` positive diagonal risk, or ``None``.
    regime : torch.Tensor or None
        ``(B, K)`` regime probabilities (rows sum to 1) of a regime head, or ``None``.
    asset_scale : torch.Tensor or None
        ``(B, n)`` per-asset volatility scales of a risk head (already applied to ``L``
        and ``d``), or ``None``.
    """

    mu: torch.Tensor
    L: torch.Tensor
    d: torch.Tensor | None = None
    regime: torch.Tensor | None = None
    asset_scale: torch.Tensor | None = None

    def _map(self, fn) -> Views:
        return Views(*(None if x is None else fn(x) for x in (
            self.mu, self.L, self.d, self.regime, self.asset_scale)))  # fmt: skip

    def to(self, dtype: torch.dtype) -> Views:
        """Cast every tensor (e.g. to float64 before the QP)."""
        return self._map(lambda x: x.to(dtype))

    def index(self, idx) -> Views:
        """Sub-batch ``idx`` (anything tensor indexing accepts)."""
        return self._map(lambda x: x[idx])

    def sigma(self, eps: float = 0.0) -> torch.Tensor:
        """``L L' (+ diag(d)) + eps I``, shape ``(B, n, n)``."""
        S = self.L @ self.L.mT
        diag = torch.full(S.shape[:-1], eps, dtype=S.dtype)
        if self.d is not None:
            diag = diag + self.d
        return S + torch.diag_embed(diag)


@dataclass(frozen=True)
class EncoderConfig:
    """Architecture of an encoder (stored in checkpoints).

    Parameters
    ----------
    kind : str
        A name registered in :data:`ENCODERS` (built in: ``"lstm"``, ``"transformer"``).
    n_assets, n_features, window, horizon : int
        ``n``, ``F``, ``T``, ``H``.
    hidden : int
        LSTM hidden size ``h`` / transformer width ``e``.
    layers : int
        LSTM layers / temporal attention blocks.
    heads : int
        Attention heads (transformer; must divide ``hidden``).
    factor : {"full", "lowrank", "lowrank_diag"}
        Risk output: ``n x n`` factor, ``n x rank``, or ``n x rank`` plus diagonal.
    rank : int
        ``k`` for the low-rank factors.
    dropout : float
    mu_scale, l_scale, diag_scale : float
        Output scales of ``mu``, ``L`` (divided by ``sqrt(k)``) and ``d``.
    regimes : int
        ``K``: a regime head mixing ``K`` mu heads (:mod:`mpo.learn.heads`); 0 = off.
    asset_risk : bool
        A per-asset volatility scaling of ``Sigma_hat`` (:mod:`mpo.learn.heads`).

    :meth:`to_dict` leaves out ``regimes`` and ``asset_risk`` while they are off, so the
    configuration of a model without those heads is the dict it was before they existed
    (and :meth:`from_dict` fills keys an older checkpoint lacks with these defaults).
    """

    kind: str = "lstm"
    n_assets: int = 20
    n_features: int = 1
    window: int = 20
    horizon: int = 1
    hidden: int = 32
    layers: int = 1
    heads: int = 2
    factor: Literal["full", "lowrank", "lowrank_diag"] = "lowrank_diag"
    rank: int = 3
    dropout: float = 0.0
    mu_scale: float = 1e-3
    l_scale: float = 1e-2
    diag_scale: float = 1e-4
    regimes: int = 0
    asset_risk: bool = False

    def __post_init__(self) -> None:
        encoder = encoder_class(self.kind)
        if self.factor not in ("full", "lowrank", "lowrank_diag"):
            raise SpecError(f"factor must be full, lowrank or lowrank_diag, got {self.factor=}.")
        for name in ("n_assets", "n_features", "window", "horizon", "hidden", "layers", "rank"):
            if getattr(self, name) < 1:
                raise SpecError(f"{name} must be >= 1, got {getattr(self, name)}.")
        if not 0 <= self.dropout < 1:
            raise SpecError(f"dropout must be in [0, 1), got {self.dropout=}.")
        if isinstance(self.regimes, bool) or not isinstance(self.regimes, int) or self.regimes < 0:
            raise SpecError(f"regimes must be an integer >= 0 (0: off), got {self.regimes=}.")
        if not isinstance(self.asset_risk, bool):
            raise SpecError(f"asset_risk must be true or false, got {self.asset_risk=}.")
        check = getattr(encoder, "check_config", None)
        if check is not None:
            check(self)

    @property
    def k(self) -> int:
        """Columns of ``L``."""
        return self.n_assets if self.factor == "full" else self.rank

    def to_dict(self) -> dict:
        """Plain dict (stored in checkpoints); the optional heads' keys only when on."""
        out = asdict(self)
        for key, off in _OPTIONAL_OFF.items():
            if out[key] == off:
                del out[key]
        return out

    @classmethod
    def from_dict(cls, data: dict) -> EncoderConfig:
        """Inverse of :meth:`to_dict`; absent keys (older checkpoints) take their defaults."""
        return cls(**data)


#: Fields of the optional heads and their "off" values (left out of ``to_dict``).
_OPTIONAL_OFF = {"regimes": 0, "asset_risk": False}


def encoder_class(kind: str) -> type[nn.Module]:
    """The class registered as ``kind``; :class:`RegistryError` listing the names if none."""
    try:
        return ENCODERS.get(kind)
    except RegistryError as exc:
        raise RegistryError(f"encoder kind: {exc}") from None


class Encoder(nn.Module):
    """Base of the built-in encoders: ``Encoder(cfg)``, ``forward(X) -> Views``.

    Subclasses register themselves with ``@ENCODERS.register("name")``; the hooks
    below are optional for third-party encoders (any ``nn.Module`` class taking an
    :class:`EncoderConfig` will do).

    Parameters
    ----------
    cfg : EncoderConfig
    """

    #: Registered name (set by :meth:`Registry.register`).
    name: ClassVar[str]

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.cfg = cfg

    @classmethod
    def check_config(cls, cfg: EncoderConfig) -> None:
        """Raise :class:`~mpo.errors.SpecError` if ``cfg`` does not suit this encoder."""

    @classmethod
    def param_count(cls, cfg: EncoderConfig) -> int:
        """Number of parameters, from a closed formula (see the module docstring)."""
        raise NotImplementedError(f"encoder {cls.__name__} documents no parameter count.")


class ViewHeads(nn.Module):
    """Linear heads from a representation to ``mu``, ``L`` (and ``d``), scaled per ``cfg``;
    with ``cfg.regimes`` / ``cfg.asset_risk`` also the regime mixture and the per-asset
    risk scaling of :mod:`mpo.learn.heads` (their parameters: :meth:`param_count`).

    Parameters
    ----------
    cfg : EncoderConfig
    width : int
        Width of the representation.
    per_asset : bool
        ``True``: the input is ``(B, n, width)`` and the heads are shared by the assets;
        ``False``: the input is a pooled ``(B, width)``.
    """

    def __init__(self, cfg: EncoderConfig, width: int, per_asset: bool) -> None:
        super().__init__()
        self.cfg = cfg
        self.per_asset = per_asset
        n, H, k = cfg.n_assets, cfg.horizon, cfg.k
        self.mu = nn.Linear(width, H if per_asset else H * n)
        self.L = nn.Linear(width, k if per_asset else n * k)
        self.d = None
        if cfg.factor == "lowrank_diag":
            self.d = nn.Linear(width, 1 if per_asset else n)
        # the optional heads draw from the RNG after the plain ones: same seed, same views
        self.regime = self.asset_risk = None
        if cfg.regimes:
            self.mu = _heads.tile_linear(self.mu, cfg.regimes)
            self.regime = _heads.RegimeHead(width, cfg.regimes)
        if cfg.asset_risk:
            self.asset_risk = _heads.AssetRiskHead(width, 1 if per_asset else n)

    def forward(self, z: torch.Tensor) -> Views:
        """``z``: ``(B, width)`` (pooled) or ``(B, n, width)`` (per asset)."""
        cfg = self.cfg
        B, H, k = z.shape[0], cfg.horizon, cfg.k
        n = z.shape[1] if self.per_asset else cfg.n_assets
        K = max(cfg.regimes, 1)
        if self.per_asset:
            mu = self.mu(z).reshape(B, n, K, H).permute(0, 2, 3, 1)
            L = self.L(z)
            d = None if self.d is None else self.d(z).squeeze(-1)
        else:
            mu = self.mu(z).reshape(B, K, H, n)
            L = self.L(z).reshape(B, n, k)
            d = None if self.d is None else self.d(z)
        p = None
        if self.regime is not None:
            p = self.regime(_heads.pooled(z, self.per_asset))
            mu = _heads.mix_regimes(p, mu)
        else:
            mu = mu[:, 0]
        mu = cfg.mu_scale * mu
        L = cfg.l_scale / math.sqrt(k) * L
        if d is not None:
            d = cfg.diag_scale * F.softplus(d)
        s = None
        if self.asset_risk is not None:
            s = self.asset_risk(z)
            L = s[..., None] * L
            d = None if d is None else s * s * d
        return Views(mu, L, d, p, s)

    @staticmethod
    def param_count(cfg: EncoderConfig, width: int, per_asset: bool) -> int:
        """Parameters of ``ViewHeads(cfg, width, per_asset)`` (the optional heads included)."""
        n, H, k = cfg.n_assets, cfg.horizon, cfg.k
        outs = (H + k + (cfg.factor == "lowrank_diag")) * (1 if per_asset else n)
        return (width + 1) * outs + _heads.extra_param_count(cfg, width, per_asset)


@ENCODERS.register("lstm")
class LSTMEncoder(Encoder):
    """LSTM over time on the flattened cross-section; see the module docstring."""

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__(cfg)
        self.lstm = nn.LSTM(
            cfg.n_assets * cfg.n_features,
            cfg.hidden,
            num_layers=cfg.layers,
            batch_first=True,
            dropout=cfg.dropout if cfg.layers > 1 else 0.0,
        )
        self.heads = ViewHeads(cfg, cfg.hidden, per_asset=False)

    def forward(self, X: torch.Tensor) -> Views:
        """``X``: ``(B, T, n, F)`` -> :class:`Views`."""
        B, T = X.shape[:2]
        out, _ = self.lstm(X.reshape(B, T, -1))
        return self.heads(out[:, -1])

    @classmethod
    def param_count(cls, cfg: EncoderConfig) -> int:
        n, Fe, h = cfg.n_assets, cfg.n_features, cfg.hidden
        lstm = 4 * h * (n * Fe + h + 2) + (cfg.layers - 1) * 4 * h * (2 * h + 2)
        return lstm + ViewHeads.param_count(cfg, h, per_asset=False)


@ENCODERS.register("transformer")
class TransformerEncoder(Encoder):
    """Temporal self-attention per asset, then cross-asset attention; see the module docstring."""

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__(cfg)
        e = cfg.hidden
        self.embed = nn.Linear(cfg.n_features, e)
        self.time_pos = nn.Parameter(0.02 * torch.randn(cfg.window, e))
        self.asset_emb = nn.Parameter(0.02 * torch.randn(cfg.n_assets, e))

        def block() -> nn.TransformerEncoderLayer:
            return nn.TransformerEncoderLayer(
                e, cfg.heads, dim_feedforward=2 * e, dropout=cfg.dropout, batch_first=True
            )

        self.temporal = nn.TransformerEncoder(block(), cfg.layers, enable_nested_tensor=False)
        self.cross = nn.TransformerEncoder(block(), 1, enable_nested_tensor=False)
        self.heads = ViewHeads(cfg, e, per_asset=True)

    def forward(self, X: torch.Tensor) -> Views:
        """``X``: ``(B, T, n, F)`` -> :class:`Views`."""
        B, T, n, _ = X.shape
        tok = self.embed(X) + self.time_pos[:, None, :] + self.asset_emb  # (B, T, n, e)
        tok = tok.permute(0, 2, 1, 3).reshape(B * n, T, -1)
        last = self.temporal(tok)[:, -1].reshape(B, n, -1)
        return self.heads(self.cross(last))

    @classmethod
    def check_config(cls, cfg: EncoderConfig) -> None:
        if cfg.hidden % cfg.heads:
            raise SpecError(f"heads must divide hidden, got {cfg.hidden=}, {cfg.heads=}.")

    @classmethod
    def param_count(cls, cfg: EncoderConfig) -> int:
        e, Fe, T, n = cfg.hidden, cfg.n_features, cfg.window, cfg.n_assets
        blocks = (cfg.layers + 1) * (8 * e * e + 11 * e)
        heads = ViewHeads.param_count(cfg, e, per_asset=True)
        return (Fe + 1) * e + T * e + n * e + blocks + heads


def build_encoder(cfg: EncoderConfig) -> nn.Module:
    """The encoder registered as ``cfg.kind`` (parameters initialised from torch's global RNG)."""
    return encoder_class(cfg.kind)(cfg)


def expected_param_count(cfg: EncoderConfig) -> int:
    """Parameter count from the encoder's closed formula (its ``param_count``)."""
    return encoder_class(cfg.kind).param_count(cfg)


from mpo.learn import encoders_cross as _cross  # noqa: E402,F401

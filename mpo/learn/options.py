"""Typed QP options of the learned models (DMPO, two-stage), as stored in checkpoints.

:class:`QPOptions` is what a model needs beyond its encoder to build and solve its QP:
the objective weights, the hard turnover limit, whether that limit is learned, and the
QP backend by name. A training spec gives it (:meth:`mpo.learn.config.TrainSpec.qp_options`);
a checkpoint stores it as a plain dict (:meth:`QPOptions.to_dict`) and
:meth:`QPOptions.from_dict` reads that dict back, including the dicts older versions
wrote (no ``backend`` / ``learned_delta`` keys; the cost keys older ``mpo train``
versions stored beside the QP options).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

from mpo.errors import SpecError
from mpo.learn.limits import BoxLimits
from mpo.learn.qp.backend import QP_BACKENDS

__all__ = ["QPOptions"]

#: Keys older ``mpo train`` versions wrote into a checkpoint's ``qp_config`` beside the QP
#: options (the run's realised-cost parameters; the costs now live in the checkpoint's
#: ``extra["spec"]["costs"]``); ignored when reading the options.
CHECKPOINT_COST_KEYS = ("kappa", "impact", "value")


@dataclass(frozen=True)
class QPOptions:
    """QP options of a learned model (validated on construction).

    Parameters
    ----------
    risk_aversion : float, default 1.0
        ``lambda`` of the QP objective (``> 0``).
    gamma : float, default 0.0
        L1 trading-cost weight in the QP objective (``>= 0``).
    eps : float, default 1e-6
        Ridge added to every ``Sigma_hat`` (``> 0``).
    w_max : float or None, default None
        Weight cap in ``(0, 1]``; ``None``: no cap.
    delta : float, default 0.2
        Hard turnover limit at inference (``> 0``; ``inf``: none).
    learned_delta : bool, default False
        Learn ``delta_eff = delta * sigmoid(theta)`` (the ``learned_delta`` remedy).
    backend : str, default "fast"
        A QP backend registered in :data:`mpo.learn.qp.QP_BACKENDS`.
    warm_start : bool, default False
        Warm-start training solves from each window's previous active set (the
        ``"fast"`` backend's ``warm_start``; see :mod:`mpo.learn.qp.warm`). Changes
        speed, never results beyond rounding.
    participation : float or None, default None
        Executed trades at most this fraction of the planner's ADV estimate, as a box in
        the QP (:mod:`mpo.learn.limits`), in training and in the model's own evaluation.
    min_adv : float or None, default None
        Names whose ADV estimate is below this (dollars) may only shrink.
    """

    risk_aversion: float = 1.0
    gamma: float = 0.0
    eps: float = 1e-6
    w_max: float | None = None
    delta: float = 0.2
    learned_delta: bool = False
    backend: str = "fast"
    warm_start: bool = False
    participation: float | None = None
    min_adv: float | None = None

    def __post_init__(self) -> None:
        for name in ("risk_aversion", "gamma", "eps", "delta"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise SpecError(f"QPOptions.{name} must be a number, got {value!r}.")
            object.__setattr__(self, name, float(value))
        for name, low, strict in (("risk_aversion", 0, True), ("gamma", 0, False),
                                  ("eps", 0, True), ("delta", 0, True)):  # fmt: skip
            value = getattr(self, name)
            ok = value > low if strict else value >= low
            if math.isnan(value) or not ok or (name != "delta" and math.isinf(value)):
                bound = f"> {low}" if strict else f">= {low}"
                raise SpecError(f"QPOptions.{name} must be finite and {bound}, got {value!r}.")
        if self.w_max is not None:
            if isinstance(self.w_max, bool) or not isinstance(self.w_max, int | float):
                raise SpecError(f"QPOptions.w_max must be a number or None, got {self.w_max!r}.")
            object.__setattr__(self, "w_max", float(self.w_max))
            if not 0 < self.w_max <= 1:
                raise SpecError(f"QPOptions.w_max must be in (0, 1] or None, got {self.w_max=}.")
        if not isinstance(self.learned_delta, bool):
            raise SpecError(f"QPOptions.learned_delta must be a bool, got {self.learned_delta!r}.")
        if not isinstance(self.backend, str) or self.backend not in QP_BACKENDS:
            QP_BACKENDS.get(self.backend)  # raises, listing the registered backends
        for name in ("participation", "min_adv"):
            value = getattr(self, name)
            if value is None:
                continue
            bad = isinstance(value, bool) or not isinstance(value, int | float)
            if bad or not math.isfinite(value) or value <= 0:
                raise SpecError(f"QPOptions.{name} must be a finite number > 0 or None, got "
                                f"{value!r}.")  # fmt: skip
            object.__setattr__(self, name, float(value))
        if not isinstance(self.warm_start, bool):
            raise SpecError(f"QPOptions.warm_start must be a bool, got {self.warm_start!r}.")
        if self.warm_start and self.backend != "fast":
            raise SpecError(
                f"QPOptions.warm_start needs the 'fast' QP backend, got backend="
                f"{self.backend!r}; set warm_start = false or backend = 'fast'."
            )

    @property
    def limits(self) -> BoxLimits:
        """The participation limit and liquidity screen (:mod:`mpo.learn.limits`)."""
        return BoxLimits(self.participation, self.min_adv)

    def backend_options(self) -> dict[str, Any]:
        """Keyword options of :func:`mpo.learn.qp.make_backend` for :attr:`backend`."""
        return {"warm_start": True} if self.warm_start else {}

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (the checkpoint's ``qp_config``)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> QPOptions:
        """Options from a dict, e.g. a checkpoint's ``qp_config`` (old layouts included).

        Missing keys take their defaults (checkpoints written before ``backend`` and
        ``learned_delta`` existed), the cost keys ``kappa``, ``impact`` and ``value``
        are ignored.

        Raises
        ------
        SpecError
            Unknown keys (naming them and the known ones) or invalid values.
        """
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known - set(CHECKPOINT_COST_KEYS))
        if unknown:
            raise SpecError(
                f"unknown QP option(s) {unknown}; known: {sorted(known)} (and the cost keys "
                f"{list(CHECKPOINT_COST_KEYS)}, ignored). Remove or rename them."
            )
        return cls(**{k: v for k, v in data.items() if k in known})

    @classmethod
    def coerce(cls, value: QPOptions | Mapping[str, Any]) -> QPOptions:
        """``value`` itself, or :meth:`from_dict` of a mapping."""
        if isinstance(value, cls):
            return value
        if isinstance(value, Mapping):
            return cls.from_dict(value)
        raise TypeError(f"QP options must be QPOptions or a dict, got {type(value).__name__}.")

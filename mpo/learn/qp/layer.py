"""``torch.nn.Module`` wrapper around a QP backend chosen by name."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from mpo.learn.qp.backend import QPBackend, QPInfo, make_backend
from mpo.learn.qp.spec import QPSpec

__all__ = ["DMPOLayer"]


class DMPOLayer(nn.Module):
    """Differentiable DMPO portfolio QP layer.

    Parameters
    ----------
    spec : QPSpec
        Static options of the QP.
    backend : str or QPBackend, default "fast"
        A name registered in :data:`mpo.learn.qp.QP_BACKENDS` (``"fast"``: batched
        torch interior point with implicit-KKT gradients; ``"cvxpylayers"``: the slow
        reference) or a backend instance.
    **options
        The backend's options when ``backend`` is a name (e.g. ``solver_args`` of
        ``"cvxpylayers"``).

    Attributes
    ----------
    last_info : QPInfo or None
        Diagnostics of the last forward call.
    """

    def __init__(self, spec: QPSpec, backend: str | QPBackend = "fast", **options: Any) -> None:
        super().__init__()
        self.spec = spec
        self.backend = make_backend(backend, **options) if isinstance(backend, str) else backend
        self.last_info: QPInfo | None = None

    def forward(
        self,
        mu: torch.Tensor,
        L: torch.Tensor,
        w_prev: torch.Tensor,
        delta: float | torch.Tensor | None = None,
        d: torch.Tensor | None = None,
        gamma: float | torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Optimal weights ``(B, H, n)``; see :meth:`mpo.learn.qp.QPBackend.solve`."""
        w, self.last_info = self.backend(self.spec, mu, L, w_prev, delta, d=d, gamma=gamma)
        return w

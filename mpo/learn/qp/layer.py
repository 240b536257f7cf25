"""``torch.nn.Module`` wrapper choosing the fast solver or the cvxpylayers reference."""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import nn

from mpo.learn.qp.fast import QPInfo, solve_qp
from mpo.learn.qp.spec import QPSpec

__all__ = ["DMPOLayer"]


class DMPOLayer(nn.Module):
    """Differentiable DMPO portfolio QP layer.

    Parameters
    ----------
    spec : QPSpec
        Static options of the QP.
    backend : {"fast", "cvxpylayers"}, default "fast"
        ``"fast"``: batched torch interior point with implicit-KKT gradients;
        ``"cvxpylayers"``: :class:`mpo.learn.qp.reference.CvxpyLayerQP` (slow, reference).
    shared_factor : bool, default False
        Only for ``"cvxpylayers"``: ``L`` is ``(B, n, k)``, shared by all periods.
    turnover : bool, default True
        Only for ``"cvxpylayers"``: whether calls pass a finite turnover limit.
    solver_args : dict or None, default None
        Only for ``"cvxpylayers"``: diffcp arguments (default Clarabel, tight).

    Attributes
    ----------
    last_info : QPInfo or None
        Diagnostics of the last forward call of the fast backend.
    """

    def __init__(
        self,
        spec: QPSpec,
        backend: Literal["fast", "cvxpylayers"] = "fast",
        shared_factor: bool = False,
        turnover: bool = True,
        solver_args: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if backend not in ("fast", "cvxpylayers"):
            raise ValueError(f"backend must be 'fast' or 'cvxpylayers', got {backend=}.")
        self.spec = spec
        self.backend = backend
        self.last_info: QPInfo | None = None
        self._ref = None
        if backend == "cvxpylayers":
            from mpo.learn.qp.reference import CvxpyLayerQP

            self._ref = CvxpyLayerQP(spec, shared_factor, turnover, solver_args)

    def forward(
        self,
        mu: torch.Tensor,
        L: torch.Tensor,
        w_prev: torch.Tensor,
        delta: float | torch.Tensor | None = None,
        d: torch.Tensor | None = None,
        gamma: float | torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Optimal weights ``(B, H, n)``; see :func:`mpo.learn.qp.solve_qp`."""
        if self._ref is not None:
            return self._ref(mu, L, w_prev, delta, d=d, gamma=gamma)
        w, info = solve_qp(self.spec, mu, L, w_prev, delta, d=d, gamma=gamma, return_info=True)
        self.last_info = info
        return w

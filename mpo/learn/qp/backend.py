"""One signature for every DMPO QP solver, and the registry of solvers by name.

A backend (like a cvxpylayers ``SolverInterface``) solves a batch of validated
:class:`~mpo.learn.qp.spec.QPInputs` of one :class:`~mpo.learn.qp.spec.QPSpec`::

    w, info = backend.solve(spec, inputs)              # validated inputs
    w, info = backend(spec, mu, L, w_prev, delta, d=d, gamma=gamma)   # validates first

``w`` ``(B, H, n)`` is differentiable in torch with respect to every tensor input
(``mu``, ``L``, ``d``, ``w_prev``, ``delta``, ``gamma``) and ``info`` is a
:class:`QPInfo`. Backends are registered by name in :data:`QP_BACKENDS` (built in:
``"fast"``, :class:`mpo.learn.qp.fast.FastBackend`; ``"cvxpylayers"``,
:class:`mpo.learn.qp.reference.CvxpyLayersBackend`); third-party packages add theirs
through the entry-point group ``mpo.qp_backends``. Training and inference pick one by
the name in their typed options (:func:`make_backend`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from mpo.learn.qp.spec import QPInputs, QPSpec, validate_inputs
from mpo.registry import Registry

__all__ = ["QP_BACKENDS", "QPBackend", "QPInfo", "make_backend"]


@dataclass
class QPInfo:
    """Per-sample diagnostics of one solve (all tensors of shape ``(B,)``).

    Attributes
    ----------
    iterations : torch.Tensor
        Interior-point iterations (``0`` where the backend does not report them).
    primal_residual, dual_residual, gap : torch.Tensor
        Scaled infinity-norm residuals and mean complementarity at the last iterate
        (``NaN`` where the backend does not report them).
    converged : torch.Tensor
        Interior point converged or the polished point passed the KKT check.
    polished : torch.Tensor
        The returned point is the exact active-set solution (KKT check passed).
    turnover_active : torch.Tensor
        The turnover limit binds.
    starved : torch.Tensor
        The turnover limit binds and the active constraints pin ``w_1`` completely, so
        ``d w_1 / d mu = 0`` (training signal flows only through ``w_prev`` and ``delta``).
        All ``False`` when the active-set system was not built (``polish=False``
        without gradients) or the backend does not identify it.
    warm : torch.Tensor or None
        Solved from an earlier solve's active set without an interior point (the fast
        backend's ``warm_start``; ``iterations`` 0, residuals and gap ``NaN``); ``None``
        when no warm start was tried (no warm starts, or a call without keys).
    """

    iterations: torch.Tensor
    primal_residual: torch.Tensor
    dual_residual: torch.Tensor
    gap: torch.Tensor
    converged: torch.Tensor
    polished: torch.Tensor
    turnover_active: torch.Tensor
    starved: torch.Tensor
    warm: torch.Tensor | None = None

    @property
    def starved_share(self) -> float:
        """Share of samples whose gradient w.r.t. ``mu`` is zero because turnover binds."""
        return float(self.starved.to(torch.float64).mean())


class QPBackend(ABC):
    """A differentiable solver of batches of DMPO QPs; subclass, implement :meth:`solve`,
    register with ``@QP_BACKENDS.register("name")``.

    Constructor keyword arguments are the backend's own options (see
    :func:`make_backend`); a backend instance may cache per-spec state (a compiled
    problem) and serves any number of specs.
    """

    #: Registered name (set by :meth:`Registry.register`).
    name: ClassVar[str]

    @abstractmethod
    def solve(self, spec: QPSpec, inputs: QPInputs) -> tuple[torch.Tensor, QPInfo]:
        """Optimal weights ``(B, H, n)`` (``w[:, 0]`` is the trade) and diagnostics.

        Parameters
        ----------
        spec : QPSpec
            Static options.
        inputs : QPInputs
            Inputs validated by :func:`mpo.learn.qp.validate_inputs` for ``spec``.

        Returns
        -------
        (torch.Tensor, QPInfo)
            Weights in the dtype of ``inputs.mu``, differentiable w.r.t. every input.
        """

    def __call__(
        self,
        spec: QPSpec,
        mu: torch.Tensor,
        L: torch.Tensor,
        w_prev: torch.Tensor,
        delta: float | torch.Tensor | None = None,
        *,
        d: torch.Tensor | None = None,
        gamma: float | torch.Tensor | None = None,
        keys: torch.Tensor | None = None,
        lower: torch.Tensor | None = None,
        upper: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, QPInfo]:
        """Validate the inputs (:func:`mpo.learn.qp.validate_inputs`), then :meth:`solve`."""
        inputs = validate_inputs(spec, mu, L, w_prev, delta, d=d, gamma=gamma, keys=keys,
                                 lower=lower, upper=upper)  # fmt: skip
        return self.solve(spec, inputs)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


#: QP backends by name (entry-point group ``mpo.qp_backends``).
QP_BACKENDS: Registry[type[QPBackend]] = Registry(
    "QP backend", "mpo.qp_backends", bootstrap=("mpo.learn.qp.fast", "mpo.learn.qp.reference")
)


def make_backend(name: str, **options: Any) -> QPBackend:
    """An instance of the backend registered as ``name`` with its ``options``.

    Raises
    ------
    mpo.registry.RegistryError
        If no backend has that name (the message lists the registered ones).
    """
    return QP_BACKENDS.get(name)(**options)

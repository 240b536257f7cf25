"""Reference solvers: a cvxpylayers layer and a high-precision cvxpy solve.

Both build the same DPP-compliant cvxpy problem: the quadratic is
``1/2 ||L_tau' w_tau||^2 (+ 1/2 ||sqrt(d_tau) * w_tau||^2) + eps/2 ||w_tau||^2`` with ``L``
(and ``sqrt(d)``) as parameters, the L1 terms use ``cp.norm1`` with ``gamma`` a
nonnegative parameter, and the turnover limit ``||w_1 - w_prev||_1 <= delta`` has
``delta`` as a parameter.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import cvxpy as cp
import numpy as np
import torch

from mpo.errors import ConvergenceError
from mpo.learn.qp.spec import QPInputs, QPSpec, validate_inputs

__all__ = [
    "CLARABEL_TIGHT",
    "DIFFCP_CLARABEL",
    "ReferenceProblem",
    "build_problem",
    "reference_solve",
    "CvxpyLayerQP",
]

logger = logging.getLogger(__name__)

#: Clarabel settings used for ground truth (``cvxpy.Problem.solve(**CLARABEL_TIGHT)``).
#: At 1e-10 Clarabel's weights can still be off by ~1e-6 near an L1 kink; 1e-12 gives
#: ~1e-9 (tests/learn/test_qp_agreement.py compares at 1e-6).
CLARABEL_TIGHT: dict[str, Any] = {
    "solver": cp.CLARABEL,
    "tol_gap_abs": 1e-12,
    "tol_gap_rel": 1e-12,
    "tol_feas": 1e-12,
    "tol_ktratio": 1e-10,
    "max_iter": 500,
}

#: diffcp settings under which cvxpylayers' gradients agree with the finite-difference
#: checked fast gradients (tests/learn/test_qp_gradients.py): Clarabel inside diffcp at
#: tight tolerances. (SCS with eps 1e-10 was not evaluated.)
DIFFCP_CLARABEL: dict[str, Any] = {
    "solve_method": "Clarabel",
    "tol_gap_abs": 1e-10,
    "tol_gap_rel": 1e-10,
    "tol_feas": 1e-10,
    "tol_ktratio": 1e-8,
}


@dataclass
class ReferenceProblem:
    """A parametrised cvxpy problem for one sample of the DMPO QP.

    Attributes
    ----------
    problem : cvxpy.Problem
        The DPP-compliant problem.
    w : cvxpy.Variable
        Weights, shape ``(H, n)``.
    params : dict[str, cvxpy.Parameter or list]
        ``"mu"`` ``(H, n)``, ``"L"`` (list of ``n x k`` parameters, one per distinct
        factor), ``"w_prev"``, ``"gamma"``, ``"delta"`` (absent without a limit),
        ``"sqrt_d"`` (list, only for ``lowrank_diag``).
    """

    problem: cp.Problem
    w: cp.Variable
    params: dict[str, Any]

    def parameter_list(self) -> list[cp.Parameter]:
        """Parameters in the order :class:`CvxpyLayerQP` feeds them."""
        out = [self.params["mu"], *self.params["L"], self.params["w_prev"], self.params["gamma"]]
        if "delta" in self.params:
            out.append(self.params["delta"])
        out.extend(self.params.get("sqrt_d", []))
        return out


def build_problem(spec: QPSpec, shared_factor: bool, turnover: bool) -> ReferenceProblem:
    """Build the DPP-compliant cvxpy problem for one sample.

    Parameters
    ----------
    spec : QPSpec
        Static options.
    shared_factor : bool
        One ``L`` (and ``d``) for every period instead of one per period.
    turnover : bool
        Include the turnover limit with a ``delta`` parameter.

    Returns
    -------
    ReferenceProblem
    """
    n, H, k = spec.n, spec.horizon, spec.k
    w = cp.Variable((H, n), name="w")
    mu = cp.Parameter((H, n), name="mu")
    n_fac = 1 if shared_factor else H
    Ls = [cp.Parameter((n, k), name=f"L{j}") for j in range(n_fac)]
    diag = spec.factor == "lowrank_diag"
    sqrt_d = [cp.Parameter(n, nonneg=True, name=f"sqrt_d{j}") for j in range(n_fac)] if diag else []
    w_prev = cp.Parameter(n, name="w_prev")
    gamma = cp.Parameter(nonneg=True, name="gamma")
    trade = cp.Variable(n, name="trade")  # w_1 - w_prev; keeps gamma * norm1 DPP
    terms = []
    cons = [trade == w[0] - w_prev]
    for tau in range(H):
        j = 0 if shared_factor else tau
        quad = cp.sum_squares(Ls[j].T @ w[tau]) + spec.eps * cp.sum_squares(w[tau])
        if diag:
            quad = quad + cp.sum_squares(cp.multiply(sqrt_d[j], w[tau]))
        terms.append(0.5 * quad - spec.risk_aversion * (mu[tau] @ w[tau]))
        terms.append(gamma * cp.norm1(trade if tau == 0 else w[tau] - w[tau - 1]))
        cons += [cp.sum(w[tau]) == 1, w[tau] >= 0]
        if spec.w_max is not None:
            cons.append(w[tau] <= spec.w_max)
    params: dict[str, Any] = {"mu": mu, "L": Ls, "w_prev": w_prev, "gamma": gamma}
    if turnover:
        delta = cp.Parameter(nonneg=True, name="delta")
        cons.append(cp.norm1(trade) <= delta)
        params["delta"] = delta
    if diag:
        params["sqrt_d"] = sqrt_d
    problem = cp.Problem(cp.Minimize(cp.sum(terms)), cons)
    assert problem.is_dcp(dpp=True)
    return ReferenceProblem(problem=problem, w=w, params=params)


def reference_solve(
    spec: QPSpec,
    mu: torch.Tensor,
    L: torch.Tensor,
    w_prev: torch.Tensor,
    delta: float | torch.Tensor | None = None,
    *,
    d: torch.Tensor | None = None,
    gamma: float | torch.Tensor | None = None,
    solver_kwargs: dict[str, Any] | None = None,
) -> np.ndarray:
    """Solve every sample with cvxpy and Clarabel at tolerance 1e-12 (ground truth).

    Parameters
    ----------
    spec, mu, L, w_prev, delta, d, gamma
        As in :func:`mpo.learn.qp.solve_qp`.
    solver_kwargs : dict or None
        Overrides :data:`CLARABEL_TIGHT`.

    Returns
    -------
    numpy.ndarray
        Optimal weights, float64, shape ``(B, H, n)``.

    Raises
    ------
    ConvergenceError
        If a sample's solve does not end ``optimal``, naming the sample.
    """
    inp = validate_inputs(spec, mu, L, w_prev, delta, d=d, gamma=gamma)
    kwargs = {**CLARABEL_TIGHT, **(solver_kwargs or {})}
    data = _to_numpy(inp)
    cache: dict[tuple[bool, bool], ReferenceProblem] = {}
    out = np.empty((inp.batch, spec.horizon, spec.n))
    shared = inp.L.shape[1] == 1
    for b in range(inp.batch):
        turnover = bool(np.isfinite(data["delta"][b]))
        ref = cache.get((shared, turnover))
        if ref is None:
            ref = cache[(shared, turnover)] = build_problem(spec, shared, turnover)
        _assign(ref, data, b)
        ref.problem.solve(**kwargs)
        if ref.problem.status != cp.OPTIMAL:
            raise ConvergenceError(
                f"reference solve of sample {b} ended with status {ref.problem.status!r}; "
                "check the inputs of that sample or loosen solver_kwargs."
            )
        out[b] = ref.w.value
    return out


def _to_numpy(inp: QPInputs) -> dict[str, np.ndarray]:
    data = {
        "mu": inp.mu.detach().cpu().double().numpy(),
        "L": inp.L.detach().cpu().double().numpy(),
        "w_prev": inp.w_prev.detach().cpu().double().numpy(),
        "delta": inp.delta.detach().cpu().double().numpy(),
        "gamma": inp.gamma.detach().cpu().double().numpy(),
    }
    if inp.d is not None:
        data["sqrt_d"] = np.sqrt(inp.d.detach().cpu().double().numpy())
    return data


def _assign(ref: ReferenceProblem, data: dict[str, np.ndarray], b: int) -> None:
    p = ref.params
    p["mu"].value = data["mu"][b]
    for j, Lp in enumerate(p["L"]):
        Lp.value = data["L"][b, j]
    p["w_prev"].value = data["w_prev"][b]
    p["gamma"].value = float(data["gamma"][b])
    if "delta" in p:
        p["delta"].value = float(data["delta"][b])
    for j, sd in enumerate(p.get("sqrt_d", [])):
        sd.value = data["sqrt_d"][b, j]


class CvxpyLayerQP:
    """Differentiable reference layer built on cvxpylayers (diffcp backend).

    Parameters
    ----------
    spec : QPSpec
        Static options.
    shared_factor : bool, default False
        ``L`` of shape ``(B, n, k)`` shared by all periods instead of ``(B, H, n, k)``.
    turnover : bool, default True
        Include the turnover limit (then every call must pass a finite ``delta``).
    solver_args : dict or None, default None
        diffcp arguments; ``None`` uses :data:`DIFFCP_CLARABEL`, ``{}`` the cvxpylayers
        default (SCS, loose tolerance).

    Notes
    -----
    The MOREAU backend of cvxpylayers silently drops ``w >= 0`` for this problem; only
    the diffcp backend is used here.
    """

    def __init__(
        self,
        spec: QPSpec,
        shared_factor: bool = False,
        turnover: bool = True,
        solver_args: dict[str, Any] | None = None,
    ) -> None:
        from cvxpylayers.torch import CvxpyLayer

        self.spec = spec
        self.shared_factor = shared_factor
        self.turnover = turnover
        self.solver_args = dict(DIFFCP_CLARABEL if solver_args is None else solver_args)
        self.ref = build_problem(spec, shared_factor, turnover)
        self.layer = CvxpyLayer(
            self.ref.problem, parameters=self.ref.parameter_list(), variables=[self.ref.w]
        )

    def __call__(
        self,
        mu: torch.Tensor,
        L: torch.Tensor,
        w_prev: torch.Tensor,
        delta: float | torch.Tensor | None = None,
        *,
        d: torch.Tensor | None = None,
        gamma: float | torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Solve the batch; same arguments and output ``(B, H, n)`` as ``solve_qp``."""
        inp = validate_inputs(self.spec, mu, L, w_prev, delta, d=d, gamma=gamma)
        if (inp.L.shape[1] == 1) != self.shared_factor and self.spec.horizon > 1:
            raise ValueError(
                f"this layer was built with shared_factor={self.shared_factor}, got L of "
                f"shape {tuple(inp.L.shape)}."
            )
        finite = bool(torch.isfinite(inp.delta).all())
        if finite != self.turnover:
            raise ValueError(
                f"this layer was built with turnover={self.turnover}; pass "
                + ("a finite delta for every sample." if self.turnover else "delta=None.")
            )
        args = [inp.mu]
        args += [inp.L[:, j] for j in range(inp.L.shape[1])][: len(self.ref.params["L"])]
        args += [inp.w_prev, inp.gamma]
        if self.turnover:
            args.append(inp.delta)
        if inp.d is not None:
            args += [inp.d[:, j].sqrt() for j in range(inp.d.shape[1])]
        (w,) = self.layer(*args, solver_args=self.solver_args)
        return w

"""Reference solvers: the ``"cvxpylayers"`` QP backend and a high-precision cvxpy solve.

Both build the same DPP-compliant cvxpy problem: the quadratic is
``1/2 ||L_tau' w_tau||^2 (+ 1/2 ||sqrt(d_tau) * w_tau||^2) + eps/2 ||w_tau||^2`` with ``L``
(and ``sqrt(d)``) as parameters, the L1 terms use ``cp.norm1`` with ``gamma`` a
nonnegative parameter, and the turnover limit ``||w_1 - w_prev||_1 <= delta`` has
``delta`` as a parameter.

:class:`CvxpyLayersBackend` (registered as ``"cvxpylayers"``) differentiates it with
cvxpylayers, one :class:`CvxpyLayerQP` per problem structure; :func:`reference_solve`
(plain cvxpy + Clarabel at 1e-12, not differentiable) is the tests' ground truth.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import cvxpy as cp
import numpy as np
import torch

from mpo.errors import ConvergenceError
from mpo.learn.qp.backend import QP_BACKENDS, QPBackend, QPInfo
from mpo.learn.qp.spec import QPInputs, QPSpec, validate_inputs

__all__ = [
    "CLARABEL_TIGHT",
    "DIFFCP_CLARABEL",
    "CvxpyLayerQP",
    "CvxpyLayersBackend",
    "ReferenceProblem",
    "build_problem",
    "reference_solve",
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

#: The turnover limit counts as binding when ``||w_1 - w_prev||_1 >= delta - this``.
_BINDING_TOL = 1e-6


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


def build_problem(
    spec: QPSpec, shared_factor: bool, turnover: bool, box: bool = False
) -> ReferenceProblem:
    """Build the DPP-compliant cvxpy problem for one sample.

    Parameters
    ----------
    spec : QPSpec
        Static options.
    shared_factor : bool
        One ``L`` (and ``d``) for every period instead of one per period.
    turnover : bool
        Include the turnover limit with a ``delta`` parameter.
    box : bool, default False
        Per-weight bounds ``lower <= w <= upper`` as ``(H, n)`` parameters (``params``
        ``"lower"``, ``"upper"``) instead of ``0 <= w <= w_max``.

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
        cons.append(cp.sum(w[tau]) == 1)
        if not box:
            cons.append(w[tau] >= 0)
            if spec.w_max is not None:
                cons.append(w[tau] <= spec.w_max)
    params: dict[str, Any] = {"mu": mu, "L": Ls, "w_prev": w_prev, "gamma": gamma}
    if box:
        params["lower"] = lo = cp.Parameter((H, n), name="lower")
        params["upper"] = hi = cp.Parameter((H, n), name="upper")
        cons += [w >= lo, w <= hi]
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
    lower: torch.Tensor | None = None,
    upper: torch.Tensor | None = None,
) -> np.ndarray:
    """Solve every sample with cvxpy and Clarabel at tolerance 1e-12 (ground truth).

    Parameters
    ----------
    spec, mu, L, w_prev, delta, d, gamma, lower, upper
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
    inp = validate_inputs(spec, mu, L, w_prev, delta, d=d, gamma=gamma, lower=lower, upper=upper)
    kwargs = {**CLARABEL_TIGHT, **(solver_kwargs or {})}
    data = _to_numpy(inp)
    box = inp.lower is not None or inp.upper is not None
    if box:
        shape = (inp.batch, spec.horizon, spec.n)
        cap = np.inf if spec.w_max is None else spec.w_max
        data["lower"] = np.zeros(shape) if inp.lower is None else inp.lower.double().numpy()
        data["upper"] = np.full(shape, cap) if inp.upper is None else inp.upper.double().numpy()
    cache: dict[tuple[bool, bool], ReferenceProblem] = {}
    out = np.empty((inp.batch, spec.horizon, spec.n))
    shared = inp.L.shape[1] == 1
    for b in range(inp.batch):
        turnover = bool(np.isfinite(data["delta"][b]))
        ref = cache.get((shared, turnover))
        if ref is None:
            ref = cache[(shared, turnover)] = build_problem(spec, shared, turnover, box)
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
    if "lower" in p:
        p["lower"].value = data["lower"][b]
        p["upper"].value = np.minimum(data["upper"][b], 1e6)  # no cap: a loose one


class CvxpyLayerQP:
    """cvxpylayers (diffcp) layer of one problem structure.

    Parameters
    ----------
    spec : QPSpec
        Static options.
    shared_factor : bool, default False
        ``L`` of shape ``(B, n, k)`` shared by all periods instead of ``(B, H, n, k)``.
    turnover : bool, default True
        Include the turnover limit (then every sample must have a finite ``delta``).
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

    def solve(self, inp: QPInputs) -> torch.Tensor:
        """Weights ``(B, H, n)`` of validated inputs of this layer's structure."""
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


@QP_BACKENDS.register("cvxpylayers")
class CvxpyLayersBackend(QPBackend):
    """The DPP problem of :func:`build_problem` differentiated by cvxpylayers (slow reference).

    One :class:`CvxpyLayerQP` is compiled per ``(spec, shared factor, turnover)`` and
    cached; a batch mixing finite and infinite ``delta`` is solved in two parts.
    :class:`QPInfo` reports ``converged`` (finite solution), ``primal_residual`` (largest
    violation of budget, bounds and turnover), ``turnover_active`` (the limit binds
    within ``1e-6``); iterations are ``0``, the dual residual and gap ``NaN`` and
    ``polished``/``starved`` ``False`` (not identified).

    Parameters
    ----------
    solver_args : dict or None, default None
        diffcp arguments; ``None`` uses :data:`DIFFCP_CLARABEL` (Clarabel inside diffcp
        at tight tolerances, whose gradients agree with the checked fast gradients),
        ``{}`` the cvxpylayers default (SCS, loose tolerance).
    """

    def __init__(self, solver_args: dict[str, Any] | None = None) -> None:
        self.solver_args = dict(DIFFCP_CLARABEL if solver_args is None else solver_args)
        self._layers: dict[tuple[QPSpec, bool, bool], CvxpyLayerQP] = {}

    def __repr__(self) -> str:
        return f"CvxpyLayersBackend(solver_args={self.solver_args!r})"

    def layer(self, spec: QPSpec, shared_factor: bool, turnover: bool) -> CvxpyLayerQP:
        """The (cached) compiled layer of one problem structure."""
        key = (spec, shared_factor, turnover)
        if key not in self._layers:
            self._layers[key] = CvxpyLayerQP(spec, shared_factor, turnover, self.solver_args)
        return self._layers[key]

    def solve(self, spec: QPSpec, inputs: QPInputs) -> tuple[torch.Tensor, QPInfo]:
        if inputs.lower is not None or inputs.upper is not None:
            raise ValueError(
                "the 'cvxpylayers' QP backend has no per-weight bounds (lower/upper: "
                "participation or liquidity limits); use the 'fast' backend."
            )
        shared = inputs.L.shape[1] == 1
        finite = torch.isfinite(inputs.delta)
        if bool(finite.all()) or not bool(finite.any()):
            w = self.layer(spec, shared, bool(finite.all())).solve(inputs)
        else:
            parts, order = [], []
            for turnover, rows in ((True, finite), (False, ~finite)):
                idx = torch.nonzero(rows).flatten()
                parts.append(self.layer(spec, shared, turnover).solve(inputs.select(idx)))
                order.append(idx)
            w = torch.cat(parts)[torch.argsort(torch.cat(order))]
        return w, _diagnostics(spec, inputs, w)


def _diagnostics(spec: QPSpec, inp: QPInputs, w: torch.Tensor) -> QPInfo:
    """What a cvxpylayers solution tells: feasibility, whether the turnover limit binds."""
    with torch.no_grad():
        w = w.detach()
        B, like = inp.batch, w
        delta = inp.delta.detach()
        finite = torch.isfinite(delta)
        turn = (w[:, 0] - inp.w_prev.detach()).abs().sum(-1)
        gap = torch.where(finite, turn - delta, torch.full_like(turn, -torch.inf))
        viol = [(w.sum(-1) - 1).abs().amax(-1), (-w).clamp(min=0).flatten(1).amax(-1)]
        if spec.w_max is not None:
            viol.append((w - spec.w_max).clamp(min=0).flatten(1).amax(-1))
        viol.append(gap.clamp(min=0))
        nan = torch.full((B,), float("nan"), dtype=like.dtype, device=like.device)
        false = torch.zeros(B, dtype=torch.bool, device=like.device)
        return QPInfo(
            iterations=torch.zeros(B, dtype=torch.long, device=like.device),
            primal_residual=torch.stack(viol).amax(0),
            dual_residual=nan,
            gap=nan.clone(),
            converged=torch.isfinite(w).flatten(1).all(-1),
            polished=false,
            turnover_active=gap >= -_BINDING_TOL,
            starved=false.clone(),
        )

"""Problem definition and input validation shared by every DMPO QP solver.

The DMPO problem for one sample, with ``w_0 = w_prev``, is::

    minimise    sum_tau  1/2 w_tau' Sigma_tau w_tau - lambda mu_tau' w_tau
                         + gamma ||w_tau - w_{tau-1}||_1
    subject to  1' w_tau = 1,  0 <= w_tau <= w_max,  ||w_1 - w_prev||_1 <= delta,

with ``Sigma_tau = L_tau L_tau' (+ diag(d_tau)) + eps I``. :class:`QPSpec` holds the
static options and :func:`validate_inputs` checks and normalises the batched tensors
that both the fast solver and the cvxpylayers reference consume.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

from mpo.errors import InfeasibleError, SpecError

__all__ = [
    "FactorKind",
    "QPSpec",
    "QPInputs",
    "validate_inputs",
    "min_turnover",
]

FactorKind = Literal["full", "lowrank", "lowrank_diag"]
_FACTORS = ("full", "lowrank", "lowrank_diag")


@dataclass(frozen=True)
class QPSpec:
    """Static options of the DMPO portfolio QP.

    Parameters
    ----------
    n : int
        Number of assets.
    horizon : int, default 1
        Number of periods ``H``; ``H = 1`` is the single-period QP.
    rank : int or None, default None
        Number of columns ``k`` of the risk factor ``L``; ``None`` means ``k = n``.
    risk_aversion : float, default 1.0
        The ``lambda`` multiplying the expected-return term ``mu' w``.
    gamma : float, default 0.0
        Default L1 trading-cost weight; a per-sample tensor passed at call time wins.
    eps : float, default 1e-6
        Ridge added to every ``Sigma_tau``; must be positive so the QP is strictly convex.
    w_max : float or None, default None
        Upper bound on every weight; ``None`` means no upper bound.
    factor : {"full", "lowrank", "lowrank_diag"}, default "full"
        ``"full"``: ``L`` is ``n x n``; ``"lowrank"``: ``L`` is ``n x k``;
        ``"lowrank_diag"``: ``Sigma = F F' + diag(d) + eps I`` with ``F = L`` (``n x k``)
        and a positive ``d`` passed at call time.
    tol : float or None, default None
        Interior-point tolerance on scaled residuals and gap; ``None`` picks ``1e-9``
        for float64 and ``1e-5`` for float32.
    max_iter : int, default 60
        Maximum number of interior-point iterations.
    on_failure : {"raise", "nan"}, default "raise"
        What to do with samples that did not converge: raise
        :class:`~mpo.errors.ConvergenceError` naming them, or return NaN rows (the
        info object's ``converged`` mask says which).
    polish : bool, default True
        Re-solve the equality-constrained QP on the identified active set after the
        interior-point phase (exact solution, and the factorisation the backward reuses).
    upcast : bool, default True
        Solve float32 inputs in float64 and cast the solution and gradients back (float32
        interior points lose the active set on ill-conditioned risk models; on CPU the
        float64 factorisations are not slower). ``False`` solves in float32 with looser
        tolerances.
    newton : {"auto", "dense", "woodbury"}, default "auto"
        How the interior point solves its Newton systems. ``"dense"``: one ``n x n``
        Cholesky per period and iteration. ``"woodbury"``: keeps ``Sigma = L L' +
        diag(d) + eps I`` factored and factors one ``H k x H k`` matrix per iteration
        (needs ``factor != "full"``). ``"auto"`` picks Woodbury for low-rank factors
        with ``H k <= n / 2``.
    """

    n: int
    horizon: int = 1
    rank: int | None = None
    risk_aversion: float = 1.0
    gamma: float = 0.0
    eps: float = 1e-6
    w_max: float | None = None
    factor: FactorKind = "full"
    tol: float | None = None
    max_iter: int = 60
    on_failure: Literal["raise", "nan"] = "raise"
    polish: bool = True
    upcast: bool = True
    newton: Literal["auto", "dense", "woodbury"] = "auto"

    def __post_init__(self) -> None:
        check_spec(self)

    @property
    def k(self) -> int:
        """Number of columns of the factor ``L``."""
        return self.n if self.rank is None else self.rank

    @property
    def woodbury(self) -> bool:
        """Whether the interior point keeps ``Sigma`` factored (see ``newton``)."""
        if self.newton == "auto":
            return self.factor != "full" and 2 * self.horizon * self.k <= self.n
        return self.newton == "woodbury"


def check_spec(spec: QPSpec) -> None:
    """Raise :class:`~mpo.errors.SpecError` if the static options are inconsistent.

    Parameters
    ----------
    spec : QPSpec
        The options to check.

    Raises
    ------
    SpecError
        With a message naming the offending field and how to fix it.
    InfeasibleError
        If ``n * w_max < 1`` (no portfolio sums to one under the cap).
    """
    if spec.n < 1 or spec.horizon < 1:
        raise SpecError(f"n and horizon must be >= 1, got {spec.n=}, {spec.horizon=}.")
    if spec.factor not in _FACTORS:
        raise SpecError(f"factor must be one of {_FACTORS}, got {spec.factor=}.")
    if spec.factor == "full" and spec.rank not in (None, spec.n):
        raise SpecError(
            f"factor='full' needs rank None or n={spec.n}, got {spec.rank=}; "
            "use factor='lowrank' for an n x k factor."
        )
    if spec.rank is not None and spec.rank < 1:
        raise SpecError(f"rank must be >= 1, got {spec.rank=}.")
    for name in ("risk_aversion", "gamma", "eps"):
        value = getattr(spec, name)
        if not (math.isfinite(value) and value >= 0):
            raise SpecError(f"{name} must be finite and >= 0, got {value!r}.")
    if spec.eps <= 0:
        raise SpecError(f"eps must be > 0 so every Sigma is positive definite, got {spec.eps=}.")
    if spec.w_max is not None:
        if not (math.isfinite(spec.w_max) and spec.w_max > 0):
            raise SpecError(f"w_max must be finite and > 0 or None, got {spec.w_max=}.")
        if spec.n * spec.w_max < 1:
            raise InfeasibleError(
                f"n * w_max = {spec.n * spec.w_max:.6g} < 1: no portfolio of {spec.n} assets "
                f"capped at w_max={spec.w_max} sums to one; raise w_max to at least 1/n."
            )
    if spec.tol is not None and not (0 < spec.tol < 1):
        raise SpecError(f"tol must be in (0, 1) or None, got {spec.tol=}.")
    if spec.max_iter < 1:
        raise SpecError(f"max_iter must be >= 1, got {spec.max_iter=}.")
    if spec.newton not in ("auto", "dense", "woodbury"):
        raise SpecError(f"newton must be 'auto', 'dense' or 'woodbury', got {spec.newton=}.")
    if spec.newton == "woodbury" and spec.factor == "full":
        raise SpecError(
            "newton='woodbury' needs a low-rank factor (factor='lowrank' or 'lowrank_diag' "
            "with rank k < n); use newton='dense' or 'auto' for factor='full'."
        )
    if spec.on_failure not in ("raise", "nan"):
        raise SpecError(f"on_failure must be 'raise' or 'nan', got {spec.on_failure=}.")


@dataclass(frozen=True)
class QPInputs:
    """Validated, batched inputs of the DMPO QP (all on one device and dtype).

    Attributes
    ----------
    mu : torch.Tensor
        Expected returns, shape ``(B, H, n)``.
    L : torch.Tensor
        Risk factors, shape ``(B, H_L, n, k)`` with ``H_L`` in ``{1, H}``; ``H_L = 1`` is
        shared by every period.
    w_prev : torch.Tensor
        Current weights, shape ``(B, n)``.
    delta : torch.Tensor
        Turnover limits, shape ``(B,)``; ``inf`` means no limit.
    gamma : torch.Tensor
        L1 trading-cost weights, shape ``(B,)``.
    d : torch.Tensor or None
        Diagonal risk, shape ``(B, H_L, n)``, only for ``factor="lowrank_diag"``.
    keys : torch.Tensor or None
        Optional sample identities ``(B,)`` (``int64``, ``>= 0``; e.g. dataset positions),
        for backends that warm-start a sample from its earlier solves (the ``"fast"``
        backend with ``warm_start=True``). They never change the solution.
    lower, upper : torch.Tensor or None
        Per-weight bounds ``lower <= w_tau <= upper``, shape ``(B, H, n)``, replacing
        ``0 <= w <= w_max`` where given (``upper`` replaces the cap: intersect it with
        ``w_max`` yourself); constants of the problem (no gradient flows to them).
    """

    mu: torch.Tensor
    L: torch.Tensor
    w_prev: torch.Tensor
    delta: torch.Tensor
    gamma: torch.Tensor
    d: torch.Tensor | None
    keys: torch.Tensor | None = None
    lower: torch.Tensor | None = None
    upper: torch.Tensor | None = None

    @property
    def batch(self) -> int:
        """Batch size ``B``."""
        return self.mu.shape[0]

    def select(self, rows: torch.Tensor) -> QPInputs:
        """The samples ``rows`` (index or boolean tensor), differentiably."""
        d = None if self.d is None else self.d[rows]
        pick = lambda x: None if x is None else x[rows]  # noqa: E731
        return QPInputs(
            self.mu[rows],
            self.L[rows],
            self.w_prev[rows],
            self.delta[rows],
            self.gamma[rows],
            d,
            pick(self.keys),
            pick(self.lower),
            pick(self.upper),
        )


def min_turnover(
    w_prev: torch.Tensor,
    w_max: float | None,
    lower: torch.Tensor | None = None,
    upper: torch.Tensor | None = None,
) -> torch.Tensor:
    """Smallest L1 distance from ``w_prev`` to ``{w : 1'w = 1, lo <= w <= hi}``.

    ``lo = 0`` and ``hi = w_max`` unless per-weight bounds ``lower`` / ``upper`` are
    given: of the trade's period, shape ``(..., n)``, or the QP's box ``(..., H, n)``
    (:attr:`QPInputs.lower`), whose first period is used. Clipping each coordinate into
    ``[lo, hi]`` costs ``sum |w_prev - clip(w_prev)|`` and every feasible ``w`` is
    reached from the clipped point without moving back, so the distance is that cost
    plus ``|1 - sum clip(w_prev)|`` (there is room to move the sum to one when
    ``sum lo <= 1 <= sum hi``).

    Parameters
    ----------
    w_prev : torch.Tensor
        Weights, shape ``(..., n)``.
    w_max : float or None
        Upper bound, ``None`` for none (ignored where ``upper`` is given).
    lower, upper : torch.Tensor or None
        Per-weight bounds, ``(..., n)`` or ``(..., H, n)`` (first period used).

    Returns
    -------
    torch.Tensor
        Distances, shape ``(...)``.
    """

    def first(x):
        return x[..., 0, :] if x is not None and x.dim() == w_prev.dim() + 1 else x

    lower, upper = first(lower), first(upper)
    lo = torch.zeros_like(w_prev) if lower is None else lower
    if upper is not None:
        clipped = torch.minimum(torch.maximum(w_prev, lo), upper)
    else:
        clipped = torch.maximum(w_prev, lo)
        if w_max is not None:
            clipped = clipped.clamp(max=w_max)
    return (w_prev - clipped).abs().sum(-1) + (1.0 - clipped.sum(-1)).abs()


def _as_batch_vector(
    value: float | torch.Tensor | None, name: str, batch: int, like: torch.Tensor, default: float
) -> torch.Tensor:
    """Broadcast a scalar or ``(B,)`` tensor to shape ``(B,)`` on ``like``'s device/dtype."""
    if value is None:
        value = default
    if not isinstance(value, torch.Tensor):
        return torch.full((batch,), float(value), dtype=like.dtype, device=like.device)
    _check_tensor(value, name, like)
    if value.dim() == 0:
        return value.expand(batch)
    if value.shape != (batch,):
        raise ValueError(
            f"{name} must be a scalar or have shape ({batch},), got {tuple(value.shape)}."
        )
    return value


def _check_tensor(x: torch.Tensor, name: str, like: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}.")
    if x.dtype != like.dtype or x.device != like.device:
        raise TypeError(
            f"{name} has dtype={x.dtype}, device={x.device} but mu has dtype={like.dtype}, "
            f"device={like.device}; cast every input with .to(mu)."
        )


def _check_finite(x: torch.Tensor, name: str, allow_pos_inf: bool = False) -> None:
    # A finite sum proves every entry finite (NaN and inf propagate) at ~1/10 the cost of
    # isfinite on large factors; an overflowing sum falls through to the exact test.
    if bool(torch.isfinite(x.detach().sum())) or bool(torch.isfinite(x).all()):
        return
    bad = torch.isnan(x) | (torch.isinf(x) & ~(allow_pos_inf & (x > 0)))
    if bool(bad.any()):
        flat = bad.reshape(bad.shape[0], -1).any(-1) if bad.dim() > 0 else bad.reshape(1)
        samples = torch.nonzero(flat).flatten().tolist()[:10]
        raise ValueError(
            f"{name} has non-finite entries in samples {samples}; "
            "clean or mask those samples before the QP layer."
        )


def validate_inputs(
    spec: QPSpec,
    mu: torch.Tensor,
    L: torch.Tensor,
    w_prev: torch.Tensor,
    delta: float | torch.Tensor | None = None,
    d: torch.Tensor | None = None,
    gamma: float | torch.Tensor | None = None,
    keys: torch.Tensor | None = None,
    lower: torch.Tensor | None = None,
    upper: torch.Tensor | None = None,
) -> QPInputs:
    """Check shapes, dtypes, finiteness and feasibility; return normalised inputs.

    Parameters
    ----------
    spec : QPSpec
        Static options.
    mu : torch.Tensor
        Expected returns ``(B, H, n)``; ``(B, n)`` is accepted when ``H = 1``.
    L : torch.Tensor
        Factors ``(B, H, n, k)``, or ``(B, n, k)`` shared by every period.
    w_prev : torch.Tensor
        Current weights ``(B, n)``; may lie outside the feasible set.
    delta : float, torch.Tensor or None
        Turnover limit on the first trade, scalar or ``(B,)``; ``None``/``inf``: no limit.
    d : torch.Tensor or None
        Positive diagonal risk ``(B, H, n)`` or ``(B, n)``; required iff
        ``spec.factor == "lowrank_diag"``.
    gamma : float, torch.Tensor or None
        L1 cost weight, scalar or ``(B,)``; ``None`` uses ``spec.gamma``.
    keys : torch.Tensor or None
        Sample identities ``(B,)`` for warm starts (:attr:`QPInputs.keys`).
    lower, upper : torch.Tensor or None
        Per-weight bounds ``(B, H, n)`` or ``(B, n)`` (every period); see
        :attr:`QPInputs.lower`.

    Returns
    -------
    QPInputs
        Batched inputs with ``delta`` and ``gamma`` of shape ``(B,)``.

    Raises
    ------
    TypeError
        Non-tensor input, non-floating dtype, or dtype/device mismatch with ``mu``.
    ValueError
        Wrong shape, non-finite entry, negative ``gamma``/``delta``, non-positive ``d``.
    InfeasibleError
        ``delta`` smaller than the minimal turnover needed to reach the feasible set,
        naming the samples and the turnover they need.
    """
    if not isinstance(mu, torch.Tensor):
        raise TypeError(f"mu must be a torch.Tensor, got {type(mu).__name__}.")
    if mu.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"mu must be float32 or float64, got {mu.dtype}.")
    n, H, k = spec.n, spec.horizon, spec.k
    if mu.dim() == 2 and H == 1:
        mu = mu.unsqueeze(1)
    if mu.dim() != 3 or mu.shape[1:] != (H, n):
        raise ValueError(f"mu must have shape (B, {H}, {n}), got {tuple(mu.shape)}.")
    B = mu.shape[0]
    _check_tensor(L, "L", mu)
    _check_tensor(w_prev, "w_prev", mu)
    if L.dim() == 3:
        L = L.unsqueeze(1)
    if L.dim() != 4 or L.shape[0] != B or L.shape[1] not in (1, H) or L.shape[2:] != (n, k):
        raise ValueError(
            f"L must have shape (B, {H}, {n}, {k}) or (B, {n}, {k}) with B={B}, "
            f"got {tuple(L.shape)}."
        )
    if w_prev.shape != (B, n):
        raise ValueError(f"w_prev must have shape ({B}, {n}), got {tuple(w_prev.shape)}.")
    if spec.factor == "lowrank_diag":
        if d is None:
            raise ValueError("factor='lowrank_diag' needs the diagonal risk d, got d=None.")
        _check_tensor(d, "d", mu)
        if d.dim() == 2:
            d = d.unsqueeze(1)
        if d.dim() != 3 or d.shape[0] != B or d.shape[1] != L.shape[1] or d.shape[2] != n:
            raise ValueError(
                f"d must have shape ({B}, {L.shape[1]}, {n}) (matching L) or ({B}, {n}), "
                f"got {tuple(d.shape)}."
            )
    elif d is not None:
        raise ValueError(f"d is only used with factor='lowrank_diag', got {spec.factor=}.")
    delta_t = _as_batch_vector(delta, "delta", B, mu, math.inf)
    gamma_t = _as_batch_vector(gamma, "gamma", B, mu, spec.gamma)
    for x, name in ((mu, "mu"), (L, "L"), (w_prev, "w_prev"), (gamma_t, "gamma")):
        _check_finite(x, name)
    _check_finite(delta_t, "delta", allow_pos_inf=True)
    if d is not None:
        _check_finite(d, "d")
        if bool((d <= 0).any()):
            bad = torch.nonzero((d <= 0).reshape(B, -1).any(-1)).flatten().tolist()[:10]
            raise ValueError(f"d must be > 0, violated in samples {bad}.")
    for x, name in ((gamma_t, "gamma"), (delta_t, "delta")):
        if bool((x < 0).any()):
            bad = torch.nonzero(x < 0).flatten().tolist()[:10]
            raise ValueError(f"{name} must be >= 0, violated in samples {bad}.")
    lower, upper = _check_bounds(spec, lower, upper, mu)
    _check_turnover_feasible(spec, w_prev, delta_t, lower, upper)
    if keys is not None:
        keys = _check_keys(keys, B)
    return QPInputs(mu=mu, L=L, w_prev=w_prev, delta=delta_t, gamma=gamma_t, d=d, keys=keys,
                    lower=lower, upper=upper)  # fmt: skip


def _check_bounds(spec: QPSpec, lower, upper, mu: torch.Tensor):
    """Per-weight bounds as ``(B, H, n)`` constants: shapes, finiteness, ``0 <= lower <=
    upper`` and room for the budget in every period (``sum lower <= 1 <= sum upper``)."""
    B, H, n = mu.shape
    out = []
    for x, name in ((lower, "lower"), (upper, "upper")):
        if x is None:
            out.append(None)
            continue
        _check_tensor(x, name, mu)
        x = x.detach()
        if x.dim() == 2 and x.shape == (B, n):
            x = x.unsqueeze(1).expand(B, H, n)
        if x.shape != (B, H, n):
            raise ValueError(f"{name} must have shape ({B}, {H}, {n}) or ({B}, {n}), got "
                             f"{tuple(x.shape)}.")  # fmt: skip
        _check_finite(x, name)
        out.append(x)
    lower, upper = out
    lo = torch.zeros_like(mu) if lower is None else lower
    hi = (
        upper
        if upper is not None
        else (None if spec.w_max is None else torch.full_like(mu, spec.w_max))
    )
    problems = []
    if lower is not None and bool((lower < 0).any()):
        problems.append(("lower < 0 (the QP is long-only)", (lower < 0).flatten(1).any(-1)))
    if hi is not None:
        tol = 1e-12 if mu.dtype == torch.float64 else 1e-6
        problems.append(("lower > upper", (lo > hi + tol).flatten(1).any(-1)))
        problems.append(("sum(upper) < 1 (no fully invested portfolio fits)",
                         (hi.sum(-1) < 1 - tol).any(-1)))  # fmt: skip
    problems.append(("sum(lower) > 1 (no fully invested portfolio fits)",
                     (lo.sum(-1) > 1 + 1e-12).any(-1)))  # fmt: skip
    for what, bad in problems:
        if bool(bad.any()):
            samples = torch.nonzero(bad).flatten().tolist()[:10]
            raise InfeasibleError(
                f"per-weight bounds infeasible: {what} in samples {samples}; loosen the "
                "limits behind them (participation, liquidity screen, w_max)."
            )
    return lower, upper


def _check_keys(keys, batch: int) -> torch.Tensor:
    keys = torch.as_tensor(keys)
    if keys.dtype.is_floating_point or keys.dtype == torch.bool or keys.shape != (batch,):
        raise ValueError(
            f"keys must be {batch} integer sample identities (shape ({batch},)), got "
            f"dtype={keys.dtype}, shape={tuple(keys.shape)}."
        )
    keys = keys.to(torch.long).cpu()
    if batch and int(keys.min()) < 0:
        raise ValueError(f"keys must be >= 0, got {int(keys.min())}.")
    return keys


def _check_turnover_feasible(
    spec: QPSpec, w_prev: torch.Tensor, delta: torch.Tensor, lower=None, upper=None
) -> None:
    need = min_turnover(w_prev.detach(), spec.w_max, lower, upper)
    slack = 1e-12 if w_prev.dtype == torch.float64 else 1e-6
    bad = delta.detach() < need - slack
    if bool(bad.any()):
        idx = torch.nonzero(bad).flatten().tolist()
        shown = ", ".join(
            f"sample {i}: delta={float(delta[i]):.6g} < needed {float(need[i]):.6g}"
            for i in idx[:5]
        )
        more = f" (and {len(idx) - 5} more)" if len(idx) > 5 else ""
        raise InfeasibleError(
            f"turnover limit too small to reach the feasible set {{1'w=1, 0<=w<=w_max}} from "
            f"w_prev in {len(idx)} sample(s): {shown}{more}. Raise delta to at least the "
            "needed value (see mpo.learn.qp.min_turnover) or project w_prev first."
        )

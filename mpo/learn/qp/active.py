"""Active-set identification, exact polishing and implicit differentiation.

At the interior-point solution every inequality is classified as active or not:
``w_{tau,i} = 0``, ``w_{tau,i} = w_max``, L1 kinks ``w_{tau,i} = w_{tau-1,i}`` (both
epigraph constraints active) and the turnover limit. Weights joined by kinks form
*runs*; a run containing a bound, or tied to ``w_prev``, is fixed, every other run is
one free variable. On that active set the QP is an equality-constrained QP in the run
variables ``y``,

    [R  A'] [y ]   [r]        R = P' blockdiag(Sigma_tau) P,   w = c + P y,
    [A  0 ] [nu] = [e],

with the ``H`` budget rows and the turnover row in ``A``. Its solution is the exact
optimum when the active set is right (checked through the KKT conditions), and the
same factorisation gives the adjoint solve of the backward pass.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

__all__ = ["ActiveSet", "Bounds", "ReducedKKT", "RiskOperator", "as_bounds", "identify_active_set"]


@dataclass
class Bounds:
    """The weights' box ``lower <= w_tau <= upper`` of a batch.

    ``lower``: ``(B, H, n)`` or ``None`` (0, long-only); ``upper``: ``(B, H, n)``, a
    scalar cap (``QPSpec.w_max``) or ``None`` (no upper bound). Per-weight bounds come
    from limits that stay boxes in the weights (a participation limit on the executed
    trade, a liquidity screen); they are constants of the problem (no gradient).
    """

    lower: torch.Tensor | None = None
    upper: torch.Tensor | float | None = None
    #: ``(B, H, n)`` weights whose box has (next to) zero width: fixed, and the sign of
    #: their bound multiplier is free (both bounds active); ``None``: no such weight.
    pinned: torch.Tensor | None = None

    def select(self, rows: torch.Tensor) -> Bounds:
        """The samples ``rows`` of these bounds."""
        pick = lambda x: x[rows] if isinstance(x, torch.Tensor) else x  # noqa: E731
        return Bounds(pick(self.lower), pick(self.upper), pick(self.pinned))

    def values(self) -> tuple:
        """``(lo, hi)``: tensors or floats (``lo = 0.0``; ``hi = None``: unbounded)."""
        return (0.0 if self.lower is None else self.lower), self.upper


def as_bounds(w_max: float | None | Bounds) -> Bounds:
    """``w_max`` itself if it is :class:`Bounds`, else the long-only box capped at it."""
    return w_max if isinstance(w_max, Bounds) else Bounds(None, w_max)


@dataclass
class RiskOperator:
    """``Sigma_tau`` of a batch: dense ``(B, H_S, n, n)`` or factored ``F F' + diag(dd)``.

    The factored form (``F`` of shape ``(B, H_S, n, k)``, ``dd > 0`` of shape
    ``(B, H_S, n)``) never builds an ``n x n`` matrix: products cost ``O(n k)`` and the
    polish gathers only the ``r x r`` block of its free slots. ``H_S`` is 1 (shared by
    every period) or ``H``.
    """

    dense: torch.Tensor | None = None
    F: torch.Tensor | None = None
    dd: torch.Tensor | None = None

    @property
    def periods(self) -> int:
        return (self.dense if self.dense is not None else self.F).shape[1]

    def mul(self, x: torch.Tensor) -> torch.Tensor:
        """``Sigma_tau x_tau`` for ``x`` of shape ``(B, H, n)``."""
        if self.dense is not None:
            # bmm on 3-d views: matmul's broadcasting costs several extra calls per use
            # (this sits in every interior-point iteration)
            B, H, n = x.shape
            if self.dense.shape[1] == H:
                S = self.dense.reshape(B * H, n, n)
                return torch.bmm(S, x.reshape(B * H, n, 1)).view(B, H, n)
            return torch.bmm(self.dense.reshape(B, n, n), x.mT).mT
        return (self.F @ (self.F.mT @ x.unsqueeze(-1))).squeeze(-1) + self.dd * x

    def diagonal(self) -> torch.Tensor:
        """Diagonals ``(B, H_S, n)``."""
        if self.dense is not None:
            return self.dense.diagonal(dim1=-2, dim2=-1)
        return self.F.square().sum(-1) + self.dd

    def block(self, tau: int, coord: torch.Tensor) -> torch.Tensor:
        """``Sigma_tau[coord][:, coord]`` for indices ``coord`` ``(B, r)``: ``(B, r, r)``."""
        t = min(tau, self.periods - 1)
        B, r = coord.shape
        if self.dense is not None:
            S = self.dense[:, t]
            rows = coord.unsqueeze(-1).expand(B, r, S.shape[-1])
            return S.gather(1, rows).gather(2, coord.unsqueeze(1).expand(B, r, r))
        F = self.F[:, t]
        Fr = F.gather(1, coord.unsqueeze(-1).expand(B, r, F.shape[-1]))
        blk = Fr @ Fr.mT
        blk.diagonal(dim1=-2, dim2=-1).add_(self.dd[:, t].gather(1, coord))
        return blk

    def select(self, rows: torch.Tensor) -> RiskOperator:
        """The samples ``rows`` (boolean mask) of this operator."""
        return RiskOperator(
            *(None if x is None else x[rows] for x in (self.dense, self.F, self.dd))
        )


@dataclass
class ActiveSet:
    """Boolean masks ``(B, H, n)`` (``turnover``: ``(B,)``) and L1 signs of the optimum."""

    lower: torch.Tensor
    upper: torch.Tensor
    kink: torch.Tensor
    sign: torch.Tensor
    turnover: torch.Tensor

    def select(self, rows: torch.Tensor) -> ActiveSet:
        """The samples ``rows`` (boolean mask) of this active set."""
        return ActiveSet(**{f.name: getattr(self, f.name)[rows] for f in fields(self)})

    def to(self, like: torch.Tensor) -> ActiveSet:
        """On ``like``'s device, the signs in its dtype."""
        out = {f.name: getattr(self, f.name).to(like.device) for f in fields(self)}
        out["sign"] = out["sign"].to(like.dtype)
        return ActiveSet(**out)

    def merge(self, other: ActiveSet, rows: torch.Tensor) -> ActiveSet:
        """Copy of this active set with the samples ``rows`` replaced by ``other``'s."""
        return ActiveSet(
            **{
                f.name: _put_rows(getattr(self, f.name), rows, getattr(other, f.name))
                for f in fields(self)
            }
        )


def identify_active_set(
    slack: dict,
    dual: dict,
    l1mask: torch.Tensor,
    prev_slack: dict | None = None,
    prev_dual: dict | None = None,
) -> ActiveSet:
    """Classify inequalities as active or inactive at an interior-point iterate.

    With the iterate before the last step (``prev_*``), Tapia's indicators decide: a
    constraint is active iff its slack shrank faster than its multiplier in the last
    step, ``s / s_prev < z / z_prev``; this is invariant to the scales of the primal and
    dual variables. Ties (no step taken) and calls without ``prev_*`` fall back to
    ``z > s`` (primal and dual are of order one in the scaled problem).

    Parameters
    ----------
    slack, dual : dict[str, torch.Tensor]
        As in :class:`mpo.learn.qp.ipm.IPMResult`.
    l1mask : torch.Tensor
        ``(B, H, 1)`` float mask of periods that carry an L1 epigraph variable.
    prev_slack, prev_dual : dict[str, torch.Tensor] or None
        The same before the last interior-point step.

    Returns
    -------
    ActiveSet
    """

    def active(k: str) -> torch.Tensor:
        s, z = slack[k], dual[k]
        if prev_slack is None or prev_dual is None:
            return z > s
        score = s * prev_dual[k] - z * prev_slack[k]
        return (score < 0) | ((score == 0) & (z > s))

    has = l1mask > 0
    lower = active("l")
    upper = active("u") if "u" in dual else torch.zeros_like(lower)
    a = active("a") & has
    b = active("b") & has
    kink = a & b
    sign = a.to(slack["l"].dtype) - b.to(slack["l"].dtype)
    sign = torch.where(kink, torch.zeros_like(sign), sign)
    return ActiveSet(lower=lower & ~upper, upper=upper, kink=kink, sign=sign, turnover=active("d"))


def _runs(act: ActiveSet, w_prev: torch.Tensor, w_max: float | None):
    """Run start index per entry (``-1``: tied to ``w_prev``), fixed mask and values."""
    B, H, n = act.kink.shape
    bound = act.lower | act.upper
    lo, hi = as_bounds(w_max).values()
    bval = act.upper.to(w_prev.dtype) * (0.0 if hi is None else hi)
    if isinstance(lo, torch.Tensor):
        bval = bval + act.lower.to(w_prev.dtype) * lo
    rid = torch.empty(B, H, n, dtype=torch.long, device=w_prev.device)
    for tau in range(H):
        here = torch.full_like(rid[:, 0], tau)
        prev = rid[:, tau - 1] if tau > 0 else torch.full_like(here, -1)
        rid[:, tau] = torch.where(act.kink[:, tau], prev, here)
    slot = rid + 1  # 0: the w_prev run
    run_bound = torch.zeros(B, H + 1, n, dtype=w_prev.dtype, device=w_prev.device)
    run_bound.scatter_add_(1, slot, bound.to(w_prev.dtype))
    run_val = torch.zeros_like(run_bound).scatter_add_(1, slot, bval * bound)
    run_val = run_val / run_bound.clamp(min=1.0)
    has_bound = torch.gather(run_bound, 1, slot) > 0
    linked = (rid < 0) & ~has_bound
    fixed = has_bound | linked
    c = torch.where(has_bound, torch.gather(run_val, 1, slot), torch.zeros_like(bval))
    c = torch.where(linked, w_prev.unsqueeze(1).expand(B, H, n), c)
    return rid, fixed, linked, c


class ReducedKKT:
    """Factorised equality-constrained QP of one active set (batched).

    Parameters
    ----------
    Sig : torch.Tensor or RiskOperator
        ``(B, H_S, n, n)`` covariances (unscaled), or the operator (dense or factored).
    qlin : torch.Tensor
        ``(B, H, n)`` linear term ``-lambda mu``.
    w_prev, gamma, delta : torch.Tensor
        ``(B, n)``, ``(B,)``, ``(B,)``.
    w_max : float or None
        Upper bound.
    act : ActiveSet
        The active set.
    """

    def __init__(
        self,
        Sig: torch.Tensor | RiskOperator,
        qlin: torch.Tensor,
        w_prev: torch.Tensor,
        gamma: torch.Tensor,
        delta: torch.Tensor,
        w_max: float | None,
        act: ActiveSet,
    ) -> None:
        B, H, n = qlin.shape
        self.shape = (B, H, n)
        self.risk = Sig if isinstance(Sig, RiskOperator) else RiskOperator(dense=Sig)
        pinned = as_bounds(w_max).pinned
        if pinned is not None:  # a fixed weight sits at its (upper) bound, whatever the IPM says
            act = ActiveSet(act.lower & ~pinned, act.upper | pinned, act.kink, act.sign,
                            act.turnover)  # fmt: skip
        self.act = act
        self.rid, self.fixed, self.linked, self.c = _runs(act, w_prev, w_max)
        free = ~self.fixed
        # M[tau][:, a] : entries of period tau that belong to the free run starting at a
        self.M = [
            torch.stack([(free[:, tau] & (self.rid[:, tau] == a)) for a in range(H)], 1).to(
                qlin.dtype
            )
            for tau in range(H)
        ]
        sig = act.sign
        self.lin = qlin + gamma[:, None, None] * (sig - torch.cat([sig[:, 1:], sig[:, :1] * 0], 1))
        Sc = self._sig_mul(self.c)
        r = -self.Pt(self.lin + Sc)
        var = torch.stack([self.M[a][:, a] for a in range(H)], 1).reshape(B, H * n)
        ref = self.risk.diagonal().mean((1, 2))
        self._compact(var, ref)
        A = torch.zeros(B, H + 1, H, n, dtype=qlin.dtype, device=qlin.device)
        for tau in range(H):
            A[:, tau] = self.M[tau]
        turn = act.turnover & torch.isfinite(delta)
        self.turn = turn
        A[:, H, 0] = sig[:, 0] * self.M[0][:, 0] * turn[:, None].to(qlin.dtype)
        self.A = A.reshape(B, H + 1, H * n)
        e = torch.zeros(B, H + 1, dtype=qlin.dtype, device=qlin.device)
        e[:, :H] = 1.0 - self.c.sum(-1)
        dfin = torch.where(turn, delta, torch.zeros_like(delta))
        e[:, H] = torch.where(turn, dfin - (sig[:, 0] * (self.c[:, 0] - w_prev)).sum(-1), 0.0)
        self.e = e
        rhs = torch.cat([r.reshape(B, H * n, 1), self.A.mT], -1)
        X = self._solve(rhs)
        self.Xr, self.XA = X[..., 0], X[..., 1:]
        S = self.A @ self.XA
        self.Spinv = _pinv_psd(S)
        # Projector onto multipliers that A' maps to zero (empty or dependent rows).
        eye = torch.eye(H + 1, dtype=S.dtype, device=S.device)
        self.null_proj = eye - self.Spinv @ S
        self.var = var
        # One step of iterative refinement, kept per sample where it lowers the residual:
        # on ill-conditioned risk models (low rank, tiny eps) the first solve can leave
        # budget/turnover residuals around 1e-9.
        r = r.reshape(B, H * n)
        y, nu = self._kkt_solve(self.Xr, e)
        ry, re, err = self._residual(r, e, y, nu)
        if bool((err > 1e3 * torch.finfo(r.dtype).eps).any()):
            dy, dnu = self._kkt_solve(self._solve(ry.unsqueeze(-1))[..., 0], re)
            y2, nu2 = y + dy, nu + dnu
            better = (self._residual(r, e, y2, nu2)[2] < err).unsqueeze(-1)
            y, nu = torch.where(better, y2, y), torch.where(better, nu2, nu)
        self.y, self.nu = y, nu
        self.w = self.c + self.P(self.y.reshape(B, H, n))

    def _residual(self, r, e, y, nu):
        """Residuals of the bordered system and their (scale-free) max norm per sample."""
        ry = r - self._R_mul(y) - (self.A.mT @ nu.unsqueeze(-1))[..., 0]
        re = e - (self.A @ y.unsqueeze(-1)).squeeze(-1)
        err = torch.maximum(ry.abs().amax(-1) / self.ref, re.abs().amax(-1))
        return ry, re, err

    def _kkt_solve(self, Xr: torch.Tensor, e: torch.Tensor):
        """``(y, nu)`` of the bordered system given ``Xr = R^{-1} r`` and the rows' ``e``."""
        nu = (self.Spinv @ ((self.A @ Xr.unsqueeze(-1)).squeeze(-1) - e).unsqueeze(-1)).squeeze(-1)
        return Xr - (self.XA @ nu.unsqueeze(-1)).squeeze(-1), nu

    def _R_mul(self, y: torch.Tensor) -> torch.Tensor:
        """``R y`` for slot values ``y`` ``(B, H n)`` (unused slots: ``ref`` times ``y``)."""
        B, H, n = self.shape
        Ry = self.Pt(self._sig_mul(self.P(y.reshape(B, H, n)))).reshape(B, H * n)
        return Ry + (1.0 - self.var) * self.ref[:, None] * y

    def _compact(self, var: torch.Tensor, ref: torch.Tensor) -> None:
        """Factor ``R`` restricted to the free slots (``var``, ``(B, H n)``).

        ``R = P' blockdiag(Sigma) P + diag((1 - var) ref)`` is block diagonal between
        free slots (run variables) and unused ones (``ref`` times the identity), and
        there are usually far fewer free runs than slots (most weights sit at a bound
        or a kink). Only the ``r x r`` block of the first ``r`` slots in free-first order
        is formed and factorised, ``r`` the largest number of free runs in the batch;
        unused slots are solved by a division by ``ref``.
        """
        B, H, n = self.shape
        self.order = torch.sort(var, dim=-1, descending=True, stable=True).indices
        self.ref = ref
        r = max(int(var.sum(-1).max()), 1) if B > 0 else 1
        idx = self.order[:, :r]
        coord = idx % n
        Rc = torch.zeros(B, r, r, dtype=var.dtype, device=var.device)
        for tau in range(H):
            S = self.risk.block(tau, coord)
            m = self.M[tau].reshape(B, H * n).gather(1, idx)
            Rc.addcmul_(S, m.unsqueeze(-1) * m.unsqueeze(-2))
        Rc.diagonal(dim1=-2, dim2=-1).add_((1.0 - var.gather(1, idx)) * ref[:, None])
        chol, info = torch.linalg.cholesky_ex(Rc, upper=True)
        self.failed = info != 0
        if bool(self.failed.any()):
            eye = torch.eye(r, dtype=Rc.dtype, device=Rc.device)
            chol = torch.where(self.failed[:, None, None], eye, chol)
        self.idx, self.chol = idx, chol

    def _widen(self, r: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(idx, chol)`` padded to ``r`` slots (extra slots are unused: ``sqrt(ref)``)."""
        r0 = self.idx.shape[1]
        if r <= r0:
            return self.idx, self.chol
        B = self.chol.shape[0]
        chol = torch.zeros(B, r, r, dtype=self.chol.dtype, device=self.chol.device)
        chol[:, :r0, :r0] = self.chol
        chol[:, r0:, r0:] = torch.diag_embed(self.ref.sqrt()[:, None].expand(B, r - r0))
        return self.order[:, :r], chol

    def merge(self, other: ReducedKKT, rows: torch.Tensor) -> ReducedKKT:
        """Copy of this system with the samples ``rows`` replaced by ``other``'s."""
        out = object.__new__(ReducedKKT)
        out.__dict__.update(self.__dict__)
        r = max(self.idx.shape[1], other.idx.shape[1])
        mine, theirs = self._widen(r), other._widen(r)
        out.idx = _put_rows(mine[0], rows, theirs[0])
        out.chol = _put_rows(mine[1], rows, theirs[1])
        for k, v in self.__dict__.items():
            if k in ("risk", "shape", "idx", "chol"):
                continue
            o = other.__dict__[k]
            if isinstance(v, torch.Tensor):
                out.__dict__[k] = _put_rows(v, rows, o)
            elif isinstance(v, list):
                out.__dict__[k] = [_put_rows(a, rows, b) for a, b in zip(v, o, strict=True)]
            elif isinstance(v, ActiveSet):
                out.__dict__[k] = v.merge(o, rows)
        return out

    def expand(self, risk: RiskOperator, rows: torch.Tensor) -> ReducedKKT:
        """This system's samples at ``rows`` (boolean mask) of a batch of ``len(rows)``
        over ``risk``; the other samples are placeholders for :meth:`merge` to fill."""
        out = object.__new__(ReducedKKT)
        out.__dict__.update(self.__dict__)
        out.risk = risk
        out.shape = (rows.shape[0], *self.shape[1:])

        def put(v: torch.Tensor) -> torch.Tensor:
            full = v.new_zeros((rows.shape[0], *v.shape[1:]))
            full[rows] = v
            return full

        for k, v in self.__dict__.items():
            if k in ("risk", "shape"):
                continue
            if isinstance(v, torch.Tensor):
                out.__dict__[k] = put(v)
            elif isinstance(v, list):
                out.__dict__[k] = [put(a) for a in v]
            elif isinstance(v, ActiveSet):
                out.__dict__[k] = ActiveSet(**{f.name: put(getattr(v, f.name)) for f in fields(v)})
        return out

    # ----------------------------------------------------------------- helpers
    def _solve(self, b: torch.Tensor) -> torch.Tensor:
        """Solve ``R x = b`` for ``b`` of shape ``(B, H n, k)``."""
        idx = self.idx.unsqueeze(-1).expand(-1, -1, b.shape[-1])
        y = torch.linalg.solve_triangular(self.chol.mT, b.gather(1, idx), upper=False)
        xc = torch.linalg.solve_triangular(self.chol, y, upper=True)
        return (b / self.ref[:, None, None]).scatter_(1, idx, xc)

    def _sig_mul(self, x: torch.Tensor) -> torch.Tensor:
        return self.risk.mul(x)

    def P(self, y: torch.Tensor) -> torch.Tensor:
        """Map run variables ``(B, H, n)`` to weights ``(B, H, n)`` (without ``c``)."""
        return torch.stack([(self.M[tau] * y).sum(1) for tau in range(len(self.M))], 1)

    def Pt(self, g: torch.Tensor) -> torch.Tensor:
        """Adjoint of :meth:`P`."""
        return sum(self.M[tau] * g[:, tau].unsqueeze(1) for tau in range(len(self.M)))

    # ------------------------------------------------------------------ checks
    def kkt_check(
        self,
        w_max: float | None,
        gamma: torch.Tensor,
        delta: torch.Tensor,
        w_prev: torch.Tensor,
        scale: torch.Tensor,
        ftol: float,
        dtol: float,
        nu_fallback: torch.Tensor,
    ) -> tuple[torch.Tensor, ActiveSet]:
        """Check the KKT conditions of the full QP at the polished point.

        Multipliers of budget/turnover rows that are empty or linearly dependent are not
        determined by the reduced system; their free component is taken from
        ``nu_fallback`` ``(B, H + 1)`` (the interior-point estimates).

        Returns ``ok`` ``(B,)`` and a *corrected* active set: every violated condition
        flipped (a weight below 0 or above ``w_max`` becomes bound, a weight that
        crossed its kink becomes a kink, a bound or kink whose multiplier has the wrong
        sign or size is released in the direction the gradient points, and the
        turnover row is switched on or off). One more polish on it repairs the near-
        degenerate misclassifications the interior point's indicators make when a
        constraint is almost exactly at its threshold; the KKT check stays the judge.
        """
        B, H, n = self.shape
        w, act = self.w, self.act
        nu = self.nu + (self.null_proj @ (nu_fallback - self.nu).unsqueeze(-1)).squeeze(-1)
        ok = torch.isfinite(w).all(-1).all(-1) & ~self.failed
        lower, upper, kink, sign = act.lower, act.upper, act.kink, act.sign
        bound = lower | upper
        box = as_bounds(w_max)
        b_lo, b_hi = box.values()
        neg = w < b_lo - ftol
        over = w > b_hi + ftol if b_hi is not None else torch.zeros_like(neg)
        ok &= ~(neg | over).any(-1).any(-1)
        neg, over = neg & ~lower, over & ~upper
        ok &= ((w.sum(-1) - 1.0).abs() <= ftol).all(-1)
        d = w - torch.cat([w_prev.unsqueeze(1), w[:, :-1]], 1)
        wrong_sign = sign * d < -ftol
        # An entry off its kink needs the slope sign(d) of its L1 term (and of the
        # turnover row): sign 0 there would certify the optimum of a problem without
        # that trading cost. (Sign 0 with d = 0 is the valid subgradient 0.)
        charged = (gamma > 0)[:, None].expand(B, H).clone()
        charged[:, 0] |= self.turn
        unsigned = (sign == 0) & ~kink & (d.abs() > ftol) & charged.unsqueeze(-1)
        ok &= ~(wrong_sign | unsigned).any(-1).any(-1)
        crossed = wrong_sign & ~kink & ~bound
        turnover = d[:, 0].abs().sum(-1)
        too_much = torch.isfinite(delta) & (turnover > delta + ftol)
        ok &= ~too_much
        resid = (self.A @ self.y.unsqueeze(-1)).squeeze(-1) - self.e
        ok &= (resid.abs() <= ftol).all(-1)
        nu_t = torch.where(self.turn, nu[:, H], torch.zeros_like(nu[:, H]))
        dt = dtol * scale
        turn_off = self.turn & (nu_t < -dt)
        ok &= ~turn_off
        g = self._sig_mul(w) + self.lin + nu[:, :H].unsqueeze(-1)
        g = torch.cat([(g[:, 0] + nu_t.unsqueeze(-1) * act.sign[:, 0]).unsqueeze(1), g[:, 1:]], 1)
        xi = torch.zeros_like(w_prev)
        dt_ = dt.unsqueeze(-1)
        up_rel, down_rel = [], []  # released upwards / downwards, per period (reversed)
        for tau in range(H - 1, -1, -1):
            rem = xi - g[:, tau]
            cap = (gamma + (nu_t if tau == 0 else 0.0)).unsqueeze(-1)
            k_, lo, up = kink[:, tau], lower[:, tau], upper[:, tau]
            lim = torch.where(k_, cap, torch.zeros_like(rem)) + dt_
            # rem is minus the gradient left for the constraints of this entry: a bound
            # at 0 needs rem <= lim, a bound at w_max rem >= -lim, a free kink both.
            wants_up = (rem > lim) & ~up & (lo | k_)
            wants_down = (rem < -lim) & ~lo & (up | k_)
            if box.pinned is not None:  # both bounds active: any multiplier sign is valid
                wants_up &= ~box.pinned[:, tau]
                wants_down &= ~box.pinned[:, tau]
            free_bad = (rem.abs() > dt_) & ~(k_ | lo | up)  # reduced solve inaccurate
            ok &= ~(wants_up | wants_down | free_bad).any(-1)
            up_rel.append(wants_up)
            down_rel.append(wants_down)
            xi_k = torch.where(
                lo, torch.maximum(rem, -cap), torch.where(up, torch.minimum(rem, cap), rem)
            )
            if box.pinned is not None:
                xi_k = torch.where(box.pinned[:, tau], torch.clamp(rem, -cap, cap), xi_k)
            xi = torch.where(k_, xi_k, torch.zeros_like(rem))
        rel_up = torch.stack(up_rel[::-1], 1)
        rel_down = torch.stack(down_rel[::-1], 1)
        released = rel_up | rel_down
        one = torch.ones_like(sign)
        # released kinks move in the gradient's direction; released bounds keep their sign
        new_sign = torch.where(released & kink, torch.where(rel_up, one, -one), sign)
        new_sign = torch.where(crossed, torch.zeros_like(sign), new_sign)
        new_sign = torch.where((wrong_sign & bound) | unsigned, torch.sign(d), new_sign)
        fix = ActiveSet(
            lower=(lower & ~released) | neg,
            upper=(upper & ~released) | over,
            kink=(kink & ~released) | crossed,
            sign=new_sign,
            turnover=(act.turnover & ~turn_off) | too_much,
        )
        return ok, fix

    # ---------------------------------------------------------------- adjoint
    def adjoint(self, gw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Adjoint solve: return ``(w_bar, v)`` for an upstream gradient ``gw`` on ``w``.

        ``w_bar = P u`` where ``[u; v] = K^{-1} [P' gw; 0]``.
        """
        B, H, n = self.shape
        u, v, _, _ = self._adjoint_cols(self.Pt(gw).reshape(B, H * n, 1))
        return u[..., 0].reshape(B, H, n), v[..., 0]

    def _adjoint_cols(self, yb: torch.Tensor):
        """Adjoint solves for the columns of ``yb`` ``(B, H n, r)``: ``u, v, X = R^-1 yb``."""
        X = self._solve(yb)
        v = self.Spinv @ (self.A @ X)
        u = X - self.XA @ v
        return u, v, X, yb

    def pinned(self, rel: float) -> torch.Tensor:
        """Samples whose first-period weights are fixed by the active constraints alone.

        Uses two deterministic probe directions ``p`` on period one: ``w_1`` is pinned iff
        ``p' Pi p = 0`` where ``Pi`` is the reduced inverse, compared with ``p' R^-1 p``.
        """
        B, H, n = self.shape
        gen = torch.Generator(device="cpu").manual_seed(12345)
        probes = torch.rand(2, n, generator=gen, dtype=torch.float64) + 0.5
        probes = probes.to(dtype=self.c.dtype, device=self.c.device)
        gw = torch.zeros(B, 2, H, n, dtype=self.c.dtype, device=self.c.device)
        gw[:, :, 0] = probes
        # P' applied to both probes at once (P' acts on the period axis).
        yb = torch.stack([self.Pt(gw[:, j]) for j in range(2)], -1).reshape(B, H * n, 2)
        u, _, X, _ = self._adjoint_cols(yb)
        quad = (u * yb).sum(1)
        base = (X * yb).sum(1)
        return (quad <= rel * base).all(-1)


def _put_rows(x: torch.Tensor, rows: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    x = x.clone()
    x[rows] = values
    return x


def _pinv_psd(S: torch.Tensor) -> torch.Tensor:
    """Pseudo-inverse of small symmetric PSD matrices (drops dependent/empty rows)."""
    evals, evecs = torch.linalg.eigh(S)
    cut = evals.amax(-1, keepdim=True).clamp(min=0) * (S.shape[-1] * torch.finfo(S.dtype).eps * 1e3)
    inv = torch.where(evals > cut, 1.0 / evals.clamp(min=torch.finfo(S.dtype).tiny), 0.0)
    return (evecs * inv.unsqueeze(-2)) @ evecs.mT

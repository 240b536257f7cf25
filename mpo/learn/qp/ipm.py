"""Batched primal-dual interior-point method for the DMPO QP, in pure torch: the driver.

The L1 terms are written with epigraph variables ``t_tau >= |w_tau - w_{tau-1}|``; the
turnover limit becomes ``1' t_1 <= delta``. All inequalities are stacked into one slack
vector ``s = g(w, t) >= 0`` of length ``m = G H n + 1`` per sample, in the order

    [w  (lower bounds),  t - d  ("a"),  t + d  ("b"),  w_max - w  (upper, optional),
     delta - 1't_1  (turnover)],        d_tau = w_tau - w_{tau-1},  w_0 = w_prev,

so that every vector operation of an iteration (ratios, complementarity, step lengths,
residuals) is one torch call on a ``(B, m)`` tensor. Inequalities that a sample does not
have (L1 rows of a period without L1 term, the turnover row when ``delta = inf``) are
inert placeholders (``s = 1``, ``z = 0``, never moved).

Each Mehrotra predictor-corrector iteration eliminates slacks, duals and ``t``
analytically, which leaves one symmetric ``(H n) x (H n)`` block-tridiagonal system per
sample (dense ``n x n`` diagonal blocks, diagonal off-diagonal blocks) bordered by the
``H`` budget rows and the rank-one turnover term. See ``README.md`` next to this file
for the algebra. Nothing here loops over the batch; converged samples are frozen and
the batch is compacted once half of it has finished.

Modules: :mod:`~mpo.learn.qp.ipm_problem` (scaled data, the stacked inequalities),
:mod:`~mpo.learn.qp.ipm_newton` (the Newton systems) and this one (iterates, residuals,
directions, step lengths and the iteration loop).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, fields

import torch

from mpo.learn.qp.ipm_newton import NewtonSystem
from mpo.learn.qp.ipm_problem import IPMProblem, split_groups

__all__ = ["IPMResult", "default_tol", "ipm_solve", "objective_scale"]

logger = logging.getLogger(__name__)

_STEP_FRACTION = 0.99
# A sample whose mean complementarity fell below _STALL * tol stops iterating (more
# iterations only lose precision); it counts as converged if its residuals are within
# _STALL_RESID * tol.
_STALL = 1e-3
# Convergence also asks every complementarity product to be within _MAX_COMP * tol, so
# that each constraint is clearly active or inactive.
_MAX_COMP = 10.0
_STALL_RESID = 100.0
# A sample whose max(residual, gap) grew by this factor in one step is stepped back and
# stopped (the Newton systems have lost their accuracy).
_DIVERGE = 10.0


def objective_scale(diag: torch.Tensor, q: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    """Per-sample objective scale ``(B,)`` the interior point divides the problem by: the
    largest of ``max diag(Sigma)`` (``diag`` ``(B, H_S, n)``), ``max |q|`` and ``gamma``."""
    scale = torch.maximum(torch.maximum(diag.amax((1, 2)), q.abs().amax((1, 2))), gamma)
    return scale.clamp(min=torch.finfo(q.dtype).tiny)


def default_tol(dtype: torch.dtype) -> float:
    """Default interior-point tolerance (scaled residuals and gap) for ``dtype``."""
    return 1e-9 if dtype == torch.float64 else 1e-5


@dataclass
class IPMResult:
    """Interior-point iterate at termination (duals in units of the scaled objective).

    Attributes
    ----------
    w, t : torch.Tensor
        Weights and L1 epigraph variables, ``(B, H, n)``.
    slack, dual : dict[str, torch.Tensor]
        Slacks and multipliers of the inequality groups ``"l"`` (``w >= 0``), ``"u"``
        (``w <= w_max``), ``"a"``/``"b"`` (``t >= +-(w_tau - w_{tau-1})``), ``"d"``
        (turnover, shape ``(B,)``).
    y : torch.Tensor
        Budget multipliers ``(B, H)``.
    scale : torch.Tensor
        Objective scale ``(B,)`` the problem was divided by.
    iterations : torch.Tensor
        Iterations used per sample ``(B,)``.
    primal_residual, dual_residual, gap : torch.Tensor
        Scaled infinity-norm residuals and mean complementarity, ``(B,)``.
    converged : torch.Tensor
        Boolean mask ``(B,)``.
    l1mask : torch.Tensor
        ``(B, H, 1)`` float mask of periods carrying an L1 epigraph variable.
    state : dict[str, torch.Tensor]
        The raw iterate (``w, t, y`` and stacked ``s, z``) to resume from.
    prev_slack, prev_dual : dict[str, torch.Tensor]
        Slacks and multipliers before the last step (for Tapia's active-set indicators).
    """

    w: torch.Tensor
    t: torch.Tensor
    slack: dict[str, torch.Tensor]
    dual: dict[str, torch.Tensor]
    y: torch.Tensor
    scale: torch.Tensor
    iterations: torch.Tensor
    primal_residual: torch.Tensor
    dual_residual: torch.Tensor
    gap: torch.Tensor
    converged: torch.Tensor
    l1mask: torch.Tensor
    state: dict[str, torch.Tensor]
    prev_slack: dict[str, torch.Tensor]
    prev_dual: dict[str, torch.Tensor]

    def select(self, rows: torch.Tensor) -> IPMResult:
        """The samples ``rows`` (boolean mask) of this result."""
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            out[f.name] = {k: x[rows] for k, x in v.items()} if isinstance(v, dict) else v[rows]
        return IPMResult(**out)

    def merge(self, other: IPMResult, rows: torch.Tensor) -> IPMResult:
        """Copy of this result with the samples ``rows`` replaced by ``other``."""
        out = {}
        for f in fields(self):
            v, o = getattr(self, f.name), getattr(other, f.name)
            if isinstance(v, dict):
                out[f.name] = {k: _put(x, rows, o[k]) for k, x in v.items()}
            else:
                out[f.name] = _put(v, rows, o)
        return IPMResult(**out)


def _put(x: torch.Tensor, rows: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    x = x.clone()
    x[rows] = values
    return x


class _State:
    """Iterate of a batch: primal ``w, t``, budget duals ``y``, stacked ``s, z``."""

    def __init__(self, w, t, y, s, z) -> None:
        self.w, self.t, self.y, self.s, self.z = w, t, y, s, z

    def as_dict(self) -> dict[str, torch.Tensor]:
        return {"w": self.w, "t": self.t, "y": self.y, "s": self.s, "z": self.z}


class _Residuals:
    """Residuals and complementarity of an iterate."""

    def __init__(self, pb: IPMProblem, st: _State) -> None:
        B, H = pb.B, pb.H
        rs = st.s - pb.slack_of(st.w, st.t)
        if pb.dummy:
            rs = rs * pb.cmask
        zg = pb.groups(st.z)
        za, zb = zg[:, 1], zg[:, 2]
        rw = pb.sig_mul(st.w) + pb.q + st.y.unsqueeze(-1) - zg[:, 0] + pb.diff_t(za - zb)
        if pb.has_u:
            rw = rw + zg[:, 3]
        rt = pb.gamma - za - zb
        rt.select(1, 0).add_(st.z[:, -1:])
        if pb.dummy:
            rt = rt * pb.l1m
        rp = st.w.sum(-1) - 1.0
        self.rs, self.rw, self.rt, self.rp = rs, rw, rt, rp
        # budget residuals as the border right-hand side (0 in the turnover row)
        self.rp_col = torch.cat([rp, torch.zeros_like(rp[:, :1])], 1).unsqueeze_(-1)
        absr = torch.cat([rs, rp, rw.reshape(B, -1), rt.reshape(B, -1)], 1).abs_()
        k = pb.m + H
        self.pres = absr[:, :k].amax(-1)
        self.dres = absr[:, k:].amax(-1)
        self.comp = st.s * st.z
        self.mu = self.comp.sum(-1) / pb.count
        self.max_comp = self.comp.amax(-1)
        self.zrs = st.z * rs


def _direction(
    pb: IPMProblem,
    nt: NewtonSystem,
    st: _State,
    res: _Residuals,
    rc: torch.Tensor,
    first: bool = False,
):
    """Newton direction for the complementarity right-hand side ``rc`` (``(B, m)``).

    With ``first``, the border columns are solved together with this right-hand side
    (one triangular-solve pair instead of two) and stored in ``nt``.
    """
    B, H, n = pb.B, pb.H, pb.n
    rho = (res.zrs - rc).div_(st.s)
    if pb.dummy:
        rho = rho * pb.cmask
    rg = pb.groups(rho)
    ra, rb = rg[:, 1], rg[:, 2]
    gw = pb.diff_t(ra - rb) - rg[:, 0]
    if pb.has_u:
        gw = gw + rg[:, 3]
    fw = (res.rw + gw).neg_()
    ft = ra + rb - res.rt
    ft.select(1, 0).sub_(rho[:, -1:])
    if pb.dummy:
        ft = ft * pb.l1m
    g = nt.beta * nt.minv(ft)
    rhs = fw - pb.diff_t(g)
    if first:
        X = nt.solve(torch.cat([rhs.reshape(B, H * n, 1), nt.C], -1))
        x0 = X[..., :1]
        nt.set_border(X[..., 1:])
    else:
        x0 = nt.solve(rhs.reshape(B, H * n, 1))
    bb = torch.baddbmm(res.rp_col, nt.C.mT, x0)
    lam = torch.cholesky_solve(bb, nt.sch_chol)
    dw = torch.baddbmm(x0, nt.X1, lam, alpha=-1.0).view(B, H, n)
    dd = pb.diff0(dw)
    dt = nt.minv(ft - nt.beta * dd)
    gdx = pb.stack(dw, dt - dd, dt + dd, dt[:, 0].sum(-1).neg_())
    ds = gdx.sub_(res.rs)
    if pb.dummy:
        ds = ds * pb.cmask
    dz = torch.addcmul(rc, st.z, ds).div_(st.s).neg_()
    if pb.dummy:
        dz = dz * pb.cmask
    return dw, dt, lam[:, :H, 0], ds, dz


def _max_step(pb: IPMProblem, st: _State, ds: torch.Tensor, dz: torch.Tensor) -> torch.Tensor:
    """Largest step in ``[0, 1]`` keeping ``s`` and ``z`` non-negative, ``(B,)``."""
    zd = st.z + pb.zsafe if pb.dummy else st.z
    worst = torch.minimum((ds / st.s).amin(-1), (dz / zd).amin(-1))
    return worst.neg_().clamp_(min=1.0).reciprocal_()


def _init_state(pb: IPMProblem) -> _State:
    B, H, n = pb.B, pb.H, pb.n
    like = pb.q
    floor = 1.0 / n
    w = torch.full_like(like, 1.0 / n)
    d = w - pb.prev(w)
    t = d.abs() + floor
    s = pb.slack_of(w, t).clamp_(min=floor)
    s[:, -1].clamp_(min=1.0)
    z = torch.ones_like(s)
    if pb.dummy:
        s = torch.where(pb.cmask > 0, s, torch.ones_like(s))
        z = z * pb.cmask
    y = torch.zeros(B, H, dtype=like.dtype, device=like.device)
    return _State(w, t, y, s, z)


def ipm_solve(
    Sig: torch.Tensor,
    q: torch.Tensor,
    w_prev: torch.Tensor,
    gamma: torch.Tensor,
    delta: torch.Tensor,
    w_max: float | None,
    tol: float,
    max_iter: int,
    start: IPMResult | None = None,
    factor: tuple[torch.Tensor, torch.Tensor] | None = None,
    refine: bool = False,
) -> IPMResult:
    """Solve a batch of DMPO QPs with a Mehrotra predictor-corrector method.

    Parameters
    ----------
    Sig : torch.Tensor
        Covariances ``(B, H_S, n, n)``, ``H_S`` in ``{1, H}`` (``1``: shared).
    q : torch.Tensor
        Linear term ``-lambda mu``, ``(B, H, n)``.
    w_prev : torch.Tensor
        ``(B, n)``.
    gamma, delta : torch.Tensor
        ``(B,)``; ``delta = inf`` means no turnover limit.
    w_max : float or None
        Upper bound on the weights.
    tol : float
        Tolerance on scaled residuals and mean complementarity.
    max_iter : int
        Iteration limit.
    start : IPMResult or None
        Resume from this iterate (same samples) instead of the default start.
    factor : (torch.Tensor, torch.Tensor) or None
        ``(F, dd)`` with ``Sigma_tau = F_tau F_tau' + diag(dd_tau)``, ``F`` of shape
        ``(B, H_S, n, k)`` and ``dd > 0`` of shape ``(B, H_S, n)``: the Newton systems
        are then solved by Woodbury in ``O(n (H k)^2)`` and ``Sig`` is not used (pass
        ``None``). Worth it when ``H k`` is well below ``n``.
    refine : bool, default False
        One step of iterative refinement per dense Newton solve (about 1.5x the cost of
        an iteration); used for the few samples that reach the later, tighter stages.
        Woodbury solves are always refined (cheap).

    Returns
    -------
    IPMResult
        Final iterate for every sample (converged or not).
    """
    B = q.shape[0]
    with torch.no_grad():
        if factor is None:
            diag = Sig.diagonal(dim1=-2, dim2=-1)
        else:
            diag = factor[0].square().sum(-1) + factor[1]
        scale = objective_scale(diag, q, gamma)
        pb = IPMProblem(Sig, q, w_prev, gamma, delta, w_max, scale, factor, refine)
        if start is None:
            st = _init_state(pb)
            iters = torch.zeros(B, dtype=torch.long, device=q.device)
        else:
            st = _State(**{k: start.state[k].clone() for k in ("w", "t", "y", "s", "z")})
            iters = start.iterations.clone()
        return _iterate(pb, st, scale, tol, max_iter, iters)


class _Output:
    """Per-sample results, filled as samples leave the (compacted) active batch."""

    def __init__(self, st: _State, like: torch.Tensor) -> None:
        B = like.shape[0]
        self.st = {k: v.clone() for k, v in st.as_dict().items()}
        self.st["s_prev"] = st.s.clone()
        self.st["z_prev"] = st.z.clone()
        self.iters = torch.zeros(B, dtype=torch.long, device=like.device)
        self.pres = torch.full_like(like, float("inf"))
        self.dres = torch.full_like(like, float("inf"))
        self.gap = torch.full_like(like, float("inf"))
        self.conv = torch.zeros(B, dtype=torch.bool, device=like.device)

    def write(self, idx, rows, st: _State, iters, res: _Residuals, conv, prev_s, prev_z) -> None:
        sel = idx[rows]
        for k, v in st.as_dict().items():
            self.st[k][sel] = v[rows]
        self.st["s_prev"][sel] = prev_s[rows]
        self.st["z_prev"][sel] = prev_z[rows]
        self.iters[sel] = iters[rows]
        self.pres[sel] = res.pres[rows]
        self.dres[sel] = res.dres[rows]
        self.gap[sel] = res.mu[rows]
        self.conv[sel] = conv[rows]


def _iterate(
    pb: IPMProblem, st: _State, scale: torch.Tensor, tol: float, max_iter: int, iters: torch.Tensor
) -> IPMResult:
    B = pb.B
    l1mask = pb.l1m
    device = pb.q.device
    out = _Output(st, pb.delta)
    idx = torch.arange(B, device=device)
    done = torch.zeros(B, dtype=torch.bool, device=device)
    failed = torch.zeros(B, dtype=torch.bool, device=device)
    budget = max_iter - int(iters.min()) if B > 0 else 0
    last_conv = done
    prev_s, prev_z = st.s, st.z
    prev_merit = None
    for it in range(budget + 1):
        res = _Residuals(pb, st)
        resid = torch.maximum(res.pres, res.dres)
        merit = torch.maximum(resid, res.mu)  # NaN and inf propagate
        # (few, cheap calls: at n = 20 an iteration is bound by the number of torch calls)
        conv = (merit <= tol) & (res.max_comp <= _MAX_COMP * tol)
        stalled = res.mu <= _STALL * tol
        if prev_merit is not None:
            # Rounding errors of the Newton systems can blow the residuals up near the end
            # on ill-conditioned samples: stop those (their slacks and multipliers still
            # identify the active set; the polish decides).
            stalled |= merit > _DIVERGE * prev_merit
        conv |= stalled & (resid <= _STALL_RESID * tol)
        done = conv | stalled | failed | ~(merit < float("inf")) | (iters >= max_iter)
        last_conv = conv
        n_done = int(done.sum())
        if n_done == done.numel() or it == budget:
            break
        if n_done * 2 >= done.numel() and done.numel() > 4:
            out.write(idx, done, st, iters, res, conv, prev_s, prev_z)
            keep = ~done
            pb = pb.subset(keep)
            st = _State(**{k: v[keep] for k, v in st.as_dict().items()})
            prev_s, prev_z = prev_s[keep], prev_z[keep]
            res = _Residuals(pb, st)
            idx, iters, done, failed = idx[keep], iters[keep], done[keep], failed[keep]
            merit = merit[keep]
        nt = NewtonSystem(pb, st.s, st.z)
        aff = _direction(pb, nt, st, res, res.comp, first=True)
        a_aff = _max_step(pb, st, aff[3], aff[4]).unsqueeze(-1)
        comp_aff = torch.addcmul(st.s, a_aff, aff[3]) * torch.addcmul(st.z, a_aff, aff[4])
        mu_aff = comp_aff.sum(-1) / pb.count
        sigma = (mu_aff / res.mu).clamp_(min=0.0, max=1.0).pow_(3)
        rc = torch.addcmul(res.comp, aff[3], aff[4]).sub_((sigma * res.mu).unsqueeze(-1))
        if pb.dummy:
            rc = rc * pb.cmask
        dw, dt, dy, ds, dz = _direction(pb, nt, st, res, rc)
        step = (_STEP_FRACTION * _max_step(pb, st, ds, dz)).clamp_(max=1.0)
        frozen = done | nt.failed
        step.masked_fill_(frozen, 0.0)
        s1 = step.unsqueeze(-1)
        s3 = s1.unsqueeze(-1)
        moved = (step > 0).unsqueeze(-1)
        prev_merit = merit
        prev_s = torch.where(moved, st.s, prev_s)
        prev_z = torch.where(moved, st.z, prev_z)
        st = _State(
            st.w.addcmul(s3, dw),
            st.t.addcmul(s3, dt),
            st.y.addcmul(s1, dy),
            st.s.addcmul(s1, ds),
            st.z.addcmul(s1, dz),
        )
        failed = nt.failed & ~done
        iters = iters + ~frozen
    out.write(idx, torch.ones_like(done), st, iters, res, last_conv, prev_s, prev_z)
    slack, dual = split_groups(pb, out.st["s"]), split_groups(pb, out.st["z"])
    return IPMResult(
        w=out.st["w"],
        t=out.st["t"],
        slack=slack,
        dual=dual,
        y=out.st["y"],
        scale=scale,
        iterations=out.iters,
        primal_residual=out.pres,
        dual_residual=out.dres,
        gap=out.gap,
        converged=out.conv,
        l1mask=l1mask,
        state=out.st,
        prev_slack=split_groups(pb, out.st["s_prev"]),
        prev_dual=split_groups(pb, out.st["z_prev"]),
    )

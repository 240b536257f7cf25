"""Fast batched DMPO QP layer: interior point forward, implicit-KKT backward.

:class:`FastBackend` is the ``"fast"`` entry of :data:`mpo.learn.qp.QP_BACKENDS`;
:func:`solve_qp` calls it with the inputs as separate arguments.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from mpo.errors import ConvergenceError
from mpo.learn.qp.active import ActiveSet, Bounds, ReducedKKT, RiskOperator, identify_active_set
from mpo.learn.qp.backend import QP_BACKENDS, QPBackend, QPInfo
from mpo.learn.qp.ipm import IPMResult, default_tol, ipm_solve, objective_scale
from mpo.learn.qp.spec import QPInputs, QPSpec, min_turnover, validate_inputs
from mpo.learn.qp.warm import ActiveSetCache

__all__ = ["FastBackend", "QPInfo", "solve_qp", "covariance"]

logger = logging.getLogger(__name__)

# Polish acceptance tolerances: (primal in weight units, dual relative to objective scale)
_POLISH_TOL = {torch.float64: (1e-9, 1e-8), torch.float32: (1e-5, 1e-4)}
# Interior-point tolerance at which the first polish is attempted.
_EARLY_TOL = {torch.float64: 1e-7, torch.float32: 1e-4}
# Samples whose polish still fails at tol get a last interior-point stage to tol * this.
_LAST_STAGE = 1e-2
# Corrected active-set solves for samples whose polish fails (more rounds help little:
# measured on the benchmark problems, 1 round lifts the early-polish success rate by
# 3-10 points, 6 rounds by 5-20).
_CORRECT = 1
# Then one solve on the plain ``z > s`` classification (see :func:`_polish`).
_PLAIN = True
# Current weights this close to a bound are moved onto it (see _snap): the polish's
# primal tolerance, below which kink and bound cannot be told apart.
_SNAP = 1e-9
# Smallest width of a per-weight box (see _bounds); inside the polish's primal tolerance.
_MIN_WIDTH = 1e-10
# Relative threshold of the probe test deciding that w_1 is pinned by the active set.
_PINNED_REL = {torch.float64: 1e-9, torch.float32: 1e-4}


def covariance(spec: QPSpec, L: torch.Tensor, d: torch.Tensor | None) -> torch.Tensor:
    """``Sigma = L L' (+ diag(d)) + eps I`` for ``L`` of shape ``(B, H_L, n, k)``."""
    Sig = L @ L.mT
    Sig.diagonal(dim1=-2, dim2=-1).add_(spec.eps if d is None else d + spec.eps)
    return Sig


@dataclass
class _Batch:
    """One batch of scaled-free problem data, as the solver stages pass it around."""

    risk: RiskOperator
    qlin: torch.Tensor
    w_prev: torch.Tensor
    gamma: torch.Tensor
    delta: torch.Tensor
    bounds: Bounds

    def select(self, rows: torch.Tensor) -> _Batch:
        """The samples ``rows`` (boolean mask)."""
        return _Batch(
            self.risk.select(rows),
            self.qlin[rows],
            self.w_prev[rows],
            self.gamma[rows],
            self.delta[rows],
            self.bounds.select(rows),
        )

    def ipm(self, tol: float, max_iter: int, **kwargs) -> IPMResult:
        """:func:`~mpo.learn.qp.ipm.ipm_solve` of this batch."""
        r = self.risk
        factor = None if r.dense is not None else (r.F, r.dd)
        return ipm_solve(r.dense, self.qlin, self.w_prev, self.gamma, self.delta, self.bounds,
                         tol, max_iter, factor=factor, **kwargs)  # fmt: skip

    def reduced(self, act: ActiveSet) -> ReducedKKT:
        """The equality-constrained QP of ``act``."""
        return ReducedKKT(self.risk, self.qlin, self.w_prev, self.gamma, self.delta,
                          self.bounds, act)  # fmt: skip

    def check(self, kkt: ReducedKKT, scale, nu) -> tuple[torch.Tensor, ActiveSet]:
        """:meth:`ReducedKKT.kkt_check` of ``kkt`` against this batch."""
        ftol, dtol = _POLISH_TOL[self.qlin.dtype]
        return kkt.kkt_check(self.bounds, self.gamma, self.delta, self.w_prev, scale, ftol,
                             dtol, nu)  # fmt: skip


class _DMPOFunction(torch.autograd.Function):
    """Autograd function; the backward differentiates the KKT conditions of the optimum."""

    @staticmethod
    def forward(ctx, spec, holder, warm, box, mu, L, w_prev, delta, gamma, d):
        ctx.in_dtype = mu.dtype
        lower, upper = box
        if spec.upcast and mu.dtype != torch.float64:
            mu, L, w_prev, delta, gamma = (x.double() for x in (mu, L, w_prev, delta, gamma))
            d = None if d is None else d.double()
            lower, upper = (None if x is None else x.double() for x in (lower, upper))
        qlin = -spec.risk_aversion * mu
        need_kkt = spec.polish or any(ctx.needs_input_grad[4:])
        if spec.woodbury:
            # Sigma stays factored end to end: no (B, H, n, n) tensor is ever formed
            dd = torch.full(L.shape[:-1], spec.eps, dtype=L.dtype, device=L.device)
            risk = RiskOperator(F=L, dd=dd if d is None else dd + d)
        else:
            risk = RiskOperator(dense=covariance(spec, L, d))
        bounds = _bounds(spec, lower, upper)
        w_prev, delta = _snap(spec, w_prev, delta, bounds)
        pb = _Batch(risk, qlin, w_prev, gamma, delta, bounds)
        B = mu.shape[0]
        false = torch.zeros(B, dtype=torch.bool, device=mu.device)
        hit = false
        if warm is not None and need_kkt:
            hit, kkt_w = _warm_solve(pb, *warm)
        rest = ~hit
        if bool(hit.all()):
            res, kkt, polished = None, kkt_w, hit
        elif bool(hit.any()):
            res, kkt_r, pol_r = _solve(spec, pb.select(rest), need_kkt)
            kkt = kkt_w.merge(kkt_r, rest)
            polished = hit.clone()
            polished[rest] = pol_r
        else:
            res, kkt, polished = _solve(spec, pb, need_kkt)
        if warm is not None and need_kkt:
            warm[0].store(warm[1], kkt.act, polished)
        info = _info(res, rest, kkt, polished, hit, delta)
        w, starved, pinned = info.pop("w"), false, false
        if kkt is not None:
            w = torch.where(polished[:, None, None], kkt.w, w)
            pinned = kkt.pinned(_PINNED_REL[mu.dtype])
            starved = pinned & kkt.turn
        converged = info["converged"]
        holder.append(QPInfo(**info, starved=starved, warm=hit if warm is not None else None))
        if not bool(converged.all()):
            bad = torch.nonzero(~converged).flatten().tolist()
            if spec.on_failure == "raise":
                raise ConvergenceError(
                    f"QP layer did not converge for {len(bad)} sample(s) {bad[:10]} within "
                    f"{spec.max_iter} iterations; inspect those inputs (scale of mu, L), raise "
                    "max_iter, or pass on_failure='nan' to get NaN rows and the info mask."
                )
            logger.warning("QP layer did not converge for samples %s; returning NaN rows.", bad)
            w = torch.where(converged[:, None, None], w, torch.full_like(w, float("nan")))
        ctx.spec, ctx.kkt, ctx.pinned = spec, kkt, pinned
        ctx.save_for_backward(w, L)
        ctx.shared = L.shape[1] == 1
        return w.to(ctx.in_dtype)

    @staticmethod
    def backward(ctx, gw):
        w, L = ctx.saved_tensors
        kkt: ReducedKKT = ctx.kkt
        spec: QPSpec = ctx.spec
        gw = gw.to(w.dtype)
        u, v = kkt.adjoint(gw)
        u = torch.where(ctx.pinned[:, None, None] & _first_period(u), torch.zeros_like(u), u)
        wbar = kkt.P(u)
        H = w.shape[1]
        g_mu = spec.risk_aversion * wbar if ctx.needs_input_grad[4] else None
        g_L = g_d = None
        if ctx.needs_input_grad[5] or ctx.needs_input_grad[9]:
            # dLoss/dSigma_tau = -sym(wbar_tau w_tau')
            if ctx.needs_input_grad[5]:
                # -(wbar (w'L) + w (wbar'L)) = -[wbar, w] [w, wbar]' L, one product chain.
                left = torch.stack([wbar, w], -1)  # (B, H, n, 2)
                right = torch.stack([w, wbar], -2)  # (B, H, 2, n)
                if ctx.shared:
                    # sum over periods folds into the inner dimension: (B, n, 2H) (2H, n)
                    left = left.transpose(1, 2).reshape(w.shape[0], 1, -1, 2 * H)
                    right = right.reshape(w.shape[0], 1, 2 * H, -1)
                g_L = -(left @ (right @ L))
            if ctx.needs_input_grad[9]:
                g_d = -(wbar * w)
                if ctx.shared:
                    g_d = g_d.sum(1, keepdim=True)
        g_wp = None
        if ctx.needs_input_grad[6]:
            Sw = kkt.risk.mul(wbar)
            link = kkt.linked.to(w.dtype)
            g_wp = (link * (gw - Sw - v[:, :H].unsqueeze(-1))).sum(1)
            g_wp = g_wp + v[:, H].unsqueeze(-1) * kkt.act.sign[:, 0] * kkt.turn[:, None]
        g_delta = torch.where(kkt.turn, v[:, H], 0.0) if ctx.needs_input_grad[7] else None
        g_gamma = None
        if ctx.needs_input_grad[8]:
            sig = kkt.act.sign
            dsig = sig - torch.cat([sig[:, 1:], torch.zeros_like(sig[:, :1])], 1)
            g_gamma = -(wbar * dsig).sum((1, 2))
        grads = (g_mu, g_L, g_wp, g_delta, g_gamma, g_d)
        return (None, None, None, None, *(None if g is None else g.to(ctx.in_dtype) for g in grads))


def _solve(
    spec: QPSpec, pb: _Batch, need_kkt: bool
) -> tuple[IPMResult, ReducedKKT | None, torch.Tensor]:
    """Interior point to a loose tolerance, polish, and finish only where polish failed.

    With a factored ``risk`` (``Sigma = F F' + diag(dd)``) the interior point takes
    Woodbury steps and the polish and backward use the factors too.
    """
    tol = spec.tol if spec.tol is not None else default_tol(pb.qlin.dtype)
    B = pb.qlin.shape[0]
    if not need_kkt:
        res = pb.ipm(tol, spec.max_iter)
        return res, None, torch.zeros(B, dtype=torch.bool, device=pb.qlin.device)
    stages = [max(tol, _EARLY_TOL[pb.qlin.dtype]), tol, tol * _LAST_STAGE]
    res = pb.ipm(stages[0], spec.max_iter)
    kkt, ok = _polish(pb, res)
    for stage, stage_tol in enumerate(stages[1:], start=1):
        if bool(ok.all()):
            break
        rows = ~ok
        sub = pb.select(rows)
        more = sub.ipm(
            stage_tol,
            spec.max_iter,
            start=res.select(rows),
            refine=pb.qlin.dtype == torch.float64,  # float32 native: rounding-dominated
        )
        kkt_rows, ok_rows = _polish(sub, more)
        if stage == len(stages) - 1:
            # The last-resort stage (tol * 1e-2) must not undo an iterate that converged
            # at tol when its residuals stall and its polish fails too: that iterate is
            # returned, unpolished, as converged.
            before = res.select(rows)
            lost = before.converged & ~more.converged & ~ok_rows
            if bool(lost.any()):
                more = more.merge(before.select(lost), lost)
        res = res.merge(more, rows)
        kkt = kkt.merge(kkt_rows, rows)
        ok = ok.clone()
        ok[rows] = ok_rows
    return res, kkt, ok


def _polish(pb: _Batch, res: IPMResult):
    """Active-set solves at the interior-point iterate until the KKT check passes.

    The first active set comes from Tapia's indicators. Samples whose KKT check fails
    get one more solve on the corrected active set :meth:`ReducedKKT.kkt_check`
    proposes (every violated condition flipped), then one on the plain ``z > s``
    classification of the same iterate: on a degenerate constraint (slack and
    multiplier both still of order ``sqrt(tol)``) the two rules can disagree, and the
    indicators' choice may leave the reduced system inconsistent (the budget and
    turnover rows cannot both hold). The KKT check decides every time, so a wrong
    candidate costs time, never accuracy.
    """
    nu_ipm = torch.cat([res.y, res.dual["d"].unsqueeze(-1)], -1) * res.scale[:, None]
    act = identify_active_set(res.slack, res.dual, res.l1mask, res.prev_slack, res.prev_dual)

    def plain(rows: torch.Tensor) -> ActiveSet:
        sub_res = res.select(rows)
        return identify_active_set(sub_res.slack, sub_res.dual, sub_res.l1mask)

    rounds = [None] * _CORRECT + ([plain] if _PLAIN else [])
    return _active_set_rounds(pb, act, res.scale, nu_ipm, rounds)


def _active_set_rounds(pb: _Batch, act: ActiveSet, scale, nu, rounds):
    """Solve on ``act`` and check; then, for the failing samples, one more solve per
    entry of ``rounds``: ``None`` takes the corrections the last check proposed, a
    callable ``rows -> ActiveSet`` another candidate. Returns ``(kkt, ok)``."""
    kkt = pb.reduced(act)
    ok, fix = pb.check(kkt, scale, nu)
    for candidate in rounds:
        if bool(ok.all()):
            break
        rows = ~ok
        cand = fix.select(rows) if candidate is None else candidate(rows)
        sub = pb.select(rows)
        kkt2 = sub.reduced(cand)
        ok2, fix2 = sub.check(kkt2, scale[rows], nu[rows])
        kkt = kkt.merge(kkt2, rows)
        ok = ok.clone()
        ok[rows] = ok2
        fix = fix.merge(fix2, rows)
    return kkt, ok


def _warm_solve(pb: _Batch, cache: ActiveSetCache, keys, rounds):
    """Solve the samples whose ``keys`` have a cached active set from it (plus up to
    ``rounds`` corrected active sets); ``(hit, kkt)``: ``hit`` ``(B,)`` marks the
    samples that passed the KKT check, ``kkt`` (``None`` without any cached key) holds
    their systems, the other samples placeholders."""
    qlin = pb.qlin
    B = qlin.shape[0]
    known = cache.known(keys)
    cache.cold += int((~known).sum())
    if not bool(known.any()):
        return torch.zeros(B, dtype=torch.bool, device=qlin.device), None
    act = cache.lookup(keys[known]).to(qlin)
    known = known.to(qlin.device)
    sub = pb if bool(known.all()) else pb.select(known)
    scale = objective_scale(sub.risk.diagonal(), sub.qlin, sub.gamma)
    nu = torch.zeros(sub.qlin.shape[0], sub.qlin.shape[1] + 1, dtype=qlin.dtype, device=qlin.device)
    kkt, ok = _active_set_rounds(sub, act, scale, nu, [None] * rounds)
    cache.hits += int(ok.sum())
    cache.misses += int((~ok).sum())
    hit = known.clone()
    hit[known] = ok
    return hit, kkt if bool(known.all()) else kkt.expand(pb.risk, known)


def _info(res: IPMResult | None, rest, kkt, polished, hit, delta) -> dict:
    """:class:`QPInfo` fields (and the unpolished ``w``) of a solve whose samples ``rest``
    went to the interior point (``res``) and ``hit`` were warm-started."""
    if res is not None and bool(rest.all()):
        turn = (res.dual["d"] > res.slack["d"]) & torch.isfinite(delta)
        return {
            "w": res.w,
            "iterations": res.iterations,
            "primal_residual": res.primal_residual,
            "dual_residual": res.dual_residual,
            "gap": res.gap,
            "converged": res.converged | polished,
            "polished": polished,
            "turnover_active": turn,
        }
    B = polished.shape[0]
    nan = torch.full((B,), float("nan"), dtype=delta.dtype, device=delta.device)
    out = {
        "w": kkt.w.clone(),
        "iterations": torch.zeros(B, dtype=torch.long, device=delta.device),
        "primal_residual": nan,
        "dual_residual": nan.clone(),
        "gap": nan.clone(),
        "converged": polished.clone(),
        "polished": polished,
        "turnover_active": hit & kkt.turn,
    }
    if res is not None:
        out["w"][rest] = res.w
        out["converged"][rest] |= res.converged
        out["turnover_active"][rest] = (res.dual["d"] > res.slack["d"]) & torch.isfinite(
            delta[rest]
        )
        for name in ("iterations", "primal_residual", "dual_residual", "gap"):
            out[name][rest] = getattr(res, name)
    return out


def _bounds(spec: QPSpec, lower, upper) -> Bounds:
    """The box of the solve. A zero-width box (``lower = upper``: a name without volume
    under a participation limit, a name held at the cap it may only shrink from) is
    widened to :data:`_MIN_WIDTH` for the interior point (which needs an interior), and
    its weight is *pinned* for the polish and the KKT check: fixed at the bound, with a
    bound multiplier of either sign (measured on the tests' boxes: without this, 1
    sample in 10 stayed unpolished at the tolerance 1e-9)."""
    if lower is None and upper is None:
        return Bounds(None, spec.w_max)
    lo = torch.zeros_like(upper) if lower is None else lower
    hi = upper
    if hi is None:
        hi = None if spec.w_max is None else torch.full_like(lo, spec.w_max)
    pinned = None
    if hi is not None:
        narrow = (hi - lo) <= _MIN_WIDTH
        if bool(narrow.any()):
            pinned = narrow
        hi = torch.maximum(hi, lo + _MIN_WIDTH)
    return Bounds(lower, hi, pinned)


def _snap(spec: QPSpec, w_prev: torch.Tensor, delta: torch.Tensor, bounds: Bounds):
    """``w_prev`` entries within :data:`_SNAP` of a first-period bound moved onto it.

    A weight that drifted to ``5e-11`` (or to just below the cap) puts its no-trade kink
    next to its bound, closer than the polish's tolerance can tell apart: measured on a
    two-stage evaluation sample (entries of 5e-11 to 1e-9), the interior point stalled at
    a dual residual of 9e-6 and no polish passed (Clarabel at 1e-12 also ended
    ``optimal_inaccurate``). On the bound, kink and bound coincide, which the active set
    handles. The turnover limit is lowered by the moved mass so that the original one
    still holds; a sample whose limit has no room for that is not moved.
    """
    lo, hi = bounds.values()
    lo1 = lo[:, 0] if isinstance(lo, torch.Tensor) else torch.zeros_like(w_prev)
    target = torch.where((w_prev - lo1).abs() <= _SNAP, lo1, w_prev)
    if hi is not None:
        hi1 = hi[:, 0] if isinstance(hi, torch.Tensor) else torch.full_like(w_prev, hi)
        target = torch.where((w_prev - hi1).abs() <= _SNAP, hi1, target)
    moved = (target - w_prev).abs().sum(-1)
    if not bool((moved > 0).any()):
        return w_prev, delta
    upper = bounds.upper if isinstance(bounds.upper, torch.Tensor) else None
    need = min_turnover(target, spec.w_max, bounds.lower, upper)
    room = ~torch.isfinite(delta) | (delta - moved >= need + 1e-12)
    w_prev = torch.where(room[:, None], target, w_prev)
    delta = torch.where(room & torch.isfinite(delta), delta - moved, delta)
    return w_prev, delta


def _first_period(x: torch.Tensor) -> torch.Tensor:
    mask = torch.zeros(x.shape[1:], dtype=torch.bool, device=x.device)
    mask[0] = True
    return mask.unsqueeze(0)


def solve_qp(
    spec: QPSpec,
    mu: torch.Tensor,
    L: torch.Tensor,
    w_prev: torch.Tensor,
    delta: float | torch.Tensor | None = None,
    *,
    d: torch.Tensor | None = None,
    gamma: float | torch.Tensor | None = None,
    return_info: bool = False,
    lower: torch.Tensor | None = None,
    upper: torch.Tensor | None = None,
) -> torch.Tensor | tuple[torch.Tensor, QPInfo]:
    """Solve a batch of DMPO QPs with the fast solver (differentiable).

    The ``"fast"`` backend with the inputs as arguments:
    ``make_backend("fast")(spec, mu, L, w_prev, delta, d=d, gamma=gamma)``.

    Parameters
    ----------
    spec : QPSpec
        Static options.
    mu : torch.Tensor
        Expected returns ``(B, H, n)`` (``(B, n)`` when ``H = 1``).
    L : torch.Tensor
        Risk factors ``(B, H, n, k)``, or ``(B, n, k)`` shared by every period.
    w_prev : torch.Tensor
        Current weights ``(B, n)``.
    delta : float, torch.Tensor or None, default None
        Turnover limit ``||w_1 - w_prev||_1 <= delta``, scalar or ``(B,)``; ``None``
        or ``inf`` entries mean no limit.
    d : torch.Tensor or None, default None
        Positive diagonal risk ``(B, H, n)`` / ``(B, n)`` for ``factor="lowrank_diag"``.
    gamma : float, torch.Tensor or None, default None
        L1 trading cost weight, scalar or ``(B,)``; ``None`` uses ``spec.gamma``.
    return_info : bool, default False
        Also return the :class:`QPInfo` diagnostics.
    lower, upper : torch.Tensor or None
        Per-weight bounds ``(B, H, n)`` or ``(B, n)`` replacing ``0 <= w <= w_max``
        (:attr:`QPInputs.lower`; e.g. a participation limit on the executed trade).

    Returns
    -------
    torch.Tensor or (torch.Tensor, QPInfo)
        Optimal weights ``(B, H, n)``; ``w[:, 0]`` is the trade to execute.

    Raises
    ------
    InfeasibleError, ValueError, TypeError
        From :func:`mpo.learn.qp.validate_inputs`.
    ConvergenceError
        If some samples did not converge and ``spec.on_failure == "raise"``.
    """
    inp = validate_inputs(spec, mu, L, w_prev, delta, d=d, gamma=gamma, lower=lower, upper=upper)
    w, info = FastBackend().solve(spec, inp)
    return (w, info) if return_info else w


@QP_BACKENDS.register("fast")
class FastBackend(QPBackend):
    """Batched interior point, active-set polish and implicit-KKT backward (this module).

    The tolerances are the spec's (``tol``, ``max_iter``, ``polish``, ``upcast``,
    ``newton``, ``on_failure``).

    Parameters
    ----------
    warm_start : bool, default False
        Keep the accepted active set of every sample key (:attr:`QPInputs.keys`; calls
        without keys are solved cold) in one :class:`~mpo.learn.qp.warm.ActiveSetCache`
        per spec, and solve a key's next problem from it first: one equality-constrained
        solve per round and no interior point when the KKT check of the full QP passes
        (the check that accepts polished interior-point solutions, so the result is the
        same to rounding). Pays off when the same samples recur with nearby data, as
        the training windows do every epoch with a fixed ``w_prev`` per window.
    warm_rounds : int, default 2
        Corrected active sets tried after the cached one before the interior point.
    """

    def __init__(self, warm_start: bool = False, warm_rounds: int = 2) -> None:
        if not isinstance(warm_start, bool):
            raise TypeError(f"warm_start must be True or False, got {warm_start!r}.")
        if isinstance(warm_rounds, bool) or not isinstance(warm_rounds, int) or warm_rounds < 0:
            raise ValueError(f"warm_rounds must be an integer >= 0, got {warm_rounds!r}.")
        self.warm_start = warm_start
        self.warm_rounds = warm_rounds
        self._caches: dict[QPSpec, ActiveSetCache] = {}

    def __repr__(self) -> str:
        if not self.warm_start:
            return "FastBackend()"
        return f"FastBackend(warm_start=True, warm_rounds={self.warm_rounds})"

    def cache(self, spec: QPSpec) -> ActiveSetCache:
        """The warm-start cache of ``spec`` (created empty on first use)."""
        if spec not in self._caches:
            self._caches[spec] = ActiveSetCache()
        return self._caches[spec]

    def solve(self, spec: QPSpec, inputs: QPInputs) -> tuple[torch.Tensor, QPInfo]:
        inp = inputs
        warm = None
        if self.warm_start and inp.keys is not None:
            warm = (self.cache(spec), inp.keys, self.warm_rounds)
        holder: list[QPInfo] = []
        box = (inp.lower, inp.upper)
        w = _DMPOFunction.apply(
            spec, holder, warm, box, inp.mu, inp.L, inp.w_prev, inp.delta, inp.gamma, inp.d
        )
        return w, holder[0]

"""Batched primal-dual interior-point method for the DMPO QP, in pure torch.

The L1 terms are written with epigraph variables ``t_tau >= |w_tau - w_{tau-1}|``; the
turnover limit becomes ``1' t_1 <= delta``. Each Mehrotra predictor-corrector
iteration eliminates slacks, duals and ``t`` analytically, which leaves one symmetric
``(H n) x (H n)`` block-tridiagonal system per sample (dense ``n x n`` diagonal
blocks ``Sigma_tau + diag(.)`` plus a rank-one turnover term in block one, diagonal
off-diagonal blocks) bordered by the ``H`` budget rows. See ``README.md`` next to this
file for the algebra. Nothing here loops over the batch; converged samples are frozen
and the batch is compacted as they finish.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, fields

import torch

__all__ = ["IPMResult", "ipm_solve", "default_tol"]

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


def _shift_prev(x: torch.Tensor, first: torch.Tensor | None) -> torch.Tensor:
    """``x_{tau-1}`` along dim 1 with ``x_{-1} = first`` (zeros if ``None``)."""
    head = torch.zeros_like(x[:, :1]) if first is None else first.unsqueeze(1)
    return torch.cat([head, x[:, :-1]], dim=1)


def _shift_next(x: torch.Tensor) -> torch.Tensor:
    """``x_{tau+1}`` along dim 1 with zero after the last period."""
    return torch.cat([x[:, 1:], torch.zeros_like(x[:, :1])], dim=1)


def _block_factor(blocks: list[torch.Tensor], off: torch.Tensor) -> tuple[list, torch.Tensor]:
    """Factor a block-tridiagonal SPD matrix with diagonal off-diagonal blocks.

    ``blocks[tau]`` is the ``(B, n, n)`` diagonal block (overwritten), ``-diag(off[:, tau])``
    couples periods ``tau - 1`` and ``tau`` (``off[:, 0]`` is unused). Returns upper
    Cholesky factors of the Schur complements ``S_tau = K_tau - E S_{tau-1}^{-1} E`` and a
    ``(B,)`` failure mask. The Schur complements are formed as
    ``K_tau - E + E S_{tau-1}^{-1} (S_{tau-1} - E)`` (symmetrised), which avoids the
    cancellation of two huge terms when a kink weight ``E`` explodes.
    """
    chols: list[torch.Tensor] = []
    failed = torch.zeros(blocks[0].shape[0], dtype=torch.bool, device=blocks[0].device)
    prev = blocks[0]
    for tau, K in enumerate(blocks):
        S = K
        if tau > 0:
            e = off[:, tau]
            R = prev
            R.diagonal(dim1=-2, dim2=-1).sub_(e)
            T = _chol_solve(chols[-1], R).mul_(e.unsqueeze(-1))
            S = K.add_(T, alpha=0.5).add_(T.mT, alpha=0.5)
            S.diagonal(dim1=-2, dim2=-1).sub_(e)
        U, info = torch.linalg.cholesky_ex(S, upper=True)
        bad = info != 0
        if bool(bad.any()):
            eye = torch.eye(S.shape[-1], dtype=S.dtype, device=S.device)
            U = torch.where(bad[:, None, None], eye, U)
        failed |= bad
        chols.append(U)
        prev = S
    return chols, failed


def _chol_solve(U: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Solve ``U' U x = b`` for an upper Cholesky factor ``U``."""
    y = torch.linalg.solve_triangular(U.mT, b, upper=False)
    return torch.linalg.solve_triangular(U, y, upper=True)


def _block_solve(chols: list[torch.Tensor], off: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
    """Solve with the factorisation of :func:`_block_factor`; ``rhs`` is ``(B, H, n, m)``."""
    H = rhs.shape[1]
    Z: list[torch.Tensor] = []
    for tau in range(H):
        Y = rhs[:, tau] if tau == 0 else rhs[:, tau] + off[:, tau].unsqueeze(-1) * Z[-1]
        Z.append(_chol_solve(chols[tau], Y))
    X = [Z[-1]]
    for tau in range(H - 2, -1, -1):
        X.append(Z[tau] + _chol_solve(chols[tau], off[:, tau + 1].unsqueeze(-1) * X[-1]))
    return torch.stack(X[::-1], dim=1)


class _Newton:
    """Reduced Newton system of one iteration: factorisation plus elimination data."""

    def __init__(self, Sig: torch.Tensor, st: dict, pb: dict) -> None:
        l1m, hd = pb["l1m"], pb["hd"]
        H, n = st["w"].shape[1:]
        W = {k: st["z" + k] / st["s" + k] for k in ("l", "a", "b")}
        Wd = torch.where(hd, st["zd"] / st["sd"], torch.zeros_like(st["zd"]))
        Wa, Wb = W["a"] * l1m, W["b"] * l1m
        alpha = Wa + Wb
        safe = torch.where(l1m > 0, alpha, torch.ones_like(alpha))
        self.uinv = l1m / safe
        self.beta = Wb - Wa
        Ed = 4.0 * Wa * Wb / safe
        self.kappa = Wd / (1.0 + Wd * self.uinv[:, 0].sum(-1))
        diag = W["l"] + Ed + _shift_next(Ed)
        if "su" in st:
            diag = diag + st["zu"] / st["su"]
        blocks = []
        for tau in range(H):
            K = Sig[:, min(tau, Sig.shape[1] - 1)].clone()
            K.diagonal(dim1=-2, dim2=-1).add_(diag[:, tau])
            blocks.append(K)
        self.off = Ed
        self.chols, self.failed = _block_factor(blocks, Ed)
        # Border: the H budget rows and the turnover rank-one term kappa v v' of block one,
        # written as V V' with V = sqrt(kappa) v and eliminated through zeta = V' dw.
        B = st["w"].shape[0]
        C = torch.zeros(B, H, n, H + 1, dtype=Sig.dtype, device=Sig.device)
        C[:, :, :, :H] = torch.eye(H, dtype=Sig.dtype, device=Sig.device).reshape(1, H, 1, H)
        C[:, 0, :, H] = self.kappa.sqrt().unsqueeze(-1) * self.beta[:, 0] * self.uinv[:, 0]
        self.C = C
        self.X1 = _block_solve(self.chols, self.off, C)
        sch = self._border(self.X1)
        sch[:, H, H] += 1.0
        self.sch_chol, info = torch.linalg.cholesky_ex(sch)
        self.failed |= info != 0

    def _border(self, X: torch.Tensor) -> torch.Tensor:
        """Apply the border rows ``C'`` to ``X`` of shape ``(B, H, n, m)``: ``(B, H + 1, m)``."""
        return torch.cat([X.sum(2), (self.C[:, 0, :, -1:] * X[:, 0]).sum(1, keepdim=True)], 1)

    def minv(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the inverse of the ``t``-block (diagonal plus rank one in period 1)."""
        ux = self.uinv * x
        u0 = self.uinv[:, 0]
        corr = (self.kappa * (u0 * x[:, 0]).sum(-1)).unsqueeze(-1) * u0
        return torch.cat([(ux[:, 0] - corr).unsqueeze(1), ux[:, 1:]], dim=1)

    def direction(self, st: dict, pb: dict, res: dict, rc: dict) -> dict:
        """Newton direction for complementarity targets ``s z + rc_shift`` (``rc``)."""
        l1m, hd = pb["l1m"], pb["hd"]
        rho = {}
        for k in rc:
            rho[k] = (-rc[k] + st["z" + k] * res[k]) / st["s" + k]
        rab = (rho["a"] - rho["b"]) * l1m
        gw = -rho["l"] + rab - _shift_next(rab)
        if "u" in rc:
            gw = gw + rho["u"]
        rhs_w = -res["w"] - gw
        gt = -rho["a"] - rho["b"]
        gt = torch.cat([(gt[:, 0] + (rho["d"] * hd).unsqueeze(-1)).unsqueeze(1), gt[:, 1:]], 1)
        rhs_t = (-res["t"] - gt) * l1m
        g = self.beta * self.minv(rhs_t)
        rhs = rhs_w - g + _shift_next(g)
        X0 = _block_solve(self.chols, self.off, rhs.unsqueeze(-1))
        border = self._border(X0)
        border[:, :-1] += res["p"].unsqueeze(-1)
        dy = torch.cholesky_solve(border, self.sch_chol)
        dw = (X0 - self.X1 @ dy.unsqueeze(1)).squeeze(-1)
        dd = dw - _shift_prev(dw, None)
        dt = self.minv(rhs_t - self.beta * dd)
        ds = {
            "l": -res["l"] + dw,
            "a": (-res["a"] - dd + dt) * l1m,
            "b": (-res["b"] + dd + dt) * l1m,
            "d": torch.where(hd, -res["d"] - dt[:, 0].sum(-1), torch.zeros_like(res["d"])),
        }
        if "u" in rc:
            ds["u"] = -res["u"] - dw
        out = {"w": dw, "t": dt, "y": dy[:, :-1, 0]}
        for k in rc:
            out["s" + k] = ds[k]
            out["z" + k] = (-rc[k] - st["z" + k] * ds[k]) / st["s" + k]
        return out


def _residuals(st: dict, pb: dict) -> dict:
    w, t = st["w"], st["t"]
    l1m, hd = pb["l1m"], pb["hd"]
    Sw = (pb["Sig"] @ w.unsqueeze(-1)).squeeze(-1)
    zab = (st["za"] - st["zb"]) * l1m
    rw = Sw + pb["q"] + st["y"].unsqueeze(-1) - st["zl"] + zab - _shift_next(zab)
    if "zu" in st:
        rw = rw + st["zu"]
    rt = pb["gamma"][:, None, None] - st["za"] - st["zb"]
    rt = torch.cat([(rt[:, 0] + (st["zd"] * hd).unsqueeze(-1)).unsqueeze(1), rt[:, 1:]], 1)
    d = w - _shift_prev(w, pb["wp"])
    res = {
        "w": rw,
        "t": rt * l1m,
        "p": w.sum(-1) - 1.0,
        "l": st["sl"] - w,
        "a": (st["sa"] + d - t) * l1m,
        "b": (st["sb"] - d - t) * l1m,
        "d": torch.where(hd, st["sd"] + t[:, 0].sum(-1) - pb["delta"], torch.zeros_like(st["sd"])),
    }
    if "su" in st:
        res["u"] = st["su"] + w - pb["wmax"]
    return res


def _pairs(st: dict) -> list[str]:
    return [k for k in ("l", "u", "a", "b", "d") if "s" + k in st]


def _max_comp(st: dict, pb: dict) -> torch.Tensor:
    """Largest complementarity product per sample."""
    out = torch.zeros_like(pb["delta"])
    for k in _pairs(st):
        prod = st["s" + k] * st["z" + k]
        if k in ("a", "b"):
            prod = prod * pb["l1m"]
        elif k == "d":
            prod = torch.where(pb["hd"], prod, torch.zeros_like(prod))
        out = torch.maximum(out, prod if k == "d" else prod.amax((1, 2)))
    return out


def _comp(st: dict, pb: dict, ds: dict | None = None, alpha: torch.Tensor | None = None):
    """Sum of complementarity products per sample, optionally at a trial step."""
    total = torch.zeros_like(pb["delta"])
    for k in _pairs(st):
        s, z = st["s" + k], st["z" + k]
        if ds is not None:
            a = alpha if k == "d" else alpha[:, None, None]
            s = s + a * ds["s" + k]
            z = z + a * ds["z" + k]
        prod = s * z
        if k in ("a", "b"):
            prod = prod * pb["l1m"]
        elif k == "d":
            prod = torch.where(pb["hd"], prod, torch.zeros_like(prod))
        total = total + (prod if k == "d" else prod.sum((1, 2)))
    return total


def _max_step(st: dict, ds: dict) -> torch.Tensor:
    step = torch.ones_like(st["sd"])
    for k in _pairs(st):
        for v in ("s", "z"):
            x, dx = st[v + k], ds[v + k]
            ratio = torch.where(
                dx < 0,
                -x / dx.clamp(max=-torch.finfo(x.dtype).tiny),
                torch.full_like(x, torch.finfo(x.dtype).max),
            )
            step = torch.minimum(step, ratio if k == "d" else ratio.amin((1, 2)))
    return step


def _init_state(pb: dict, n: int, H: int) -> dict:
    B = pb["q"].shape[0]
    like = pb["q"]
    l1m, hd = pb["l1m"], pb["hd"]
    w = torch.full_like(like, 1.0 / n)
    d = w - _shift_prev(w, pb["wp"])
    floor = 1.0 / n
    t = d.abs() + floor
    ones = torch.ones_like(like)
    st = {
        "w": w,
        "t": t,
        "y": torch.zeros(B, H, dtype=like.dtype, device=like.device),
        "sl": w.clamp(min=floor),
        "zl": ones.clone(),
        "sa": torch.where(l1m > 0, (t - d).clamp(min=floor), ones),
        "za": ones * l1m,
        "sb": torch.where(l1m > 0, (t + d).clamp(min=floor), ones),
        "zb": ones * l1m,
    }
    sd = pb["delta"] - t[:, 0].sum(-1)
    st["sd"] = torch.where(hd, sd.clamp(min=1.0), torch.ones_like(sd))
    st["zd"] = hd.to(like.dtype)
    if pb["wmax"] is not None:
        st["su"] = (pb["wmax"] - w).clamp(min=floor)
        st["zu"] = ones.clone()
    return st


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

    Returns
    -------
    IPMResult
        Final iterate for every sample (converged or not).
    """
    B, H, n = q.shape
    with torch.no_grad():
        diag_max = Sig.diagonal(dim1=-2, dim2=-1).amax((1, 2))
        scale = torch.maximum(torch.maximum(diag_max, q.abs().amax((1, 2))), gamma)
        scale = scale.clamp(min=torch.finfo(q.dtype).tiny)
        hd = torch.isfinite(delta)
        has_l1 = (gamma > 0).unsqueeze(1).expand(B, H).clone()
        has_l1[:, 0] |= hd
        pb = {
            "Sig": Sig / scale[:, None, None, None],
            "q": q / scale[:, None, None],
            "wp": w_prev,
            "gamma": gamma / scale,
            "delta": torch.where(hd, delta, torch.zeros_like(delta)),
            "hd": hd,
            "l1m": has_l1.to(q.dtype).unsqueeze(-1),
            "wmax": w_max,
        }
        if start is None:
            st = _init_state(pb, n, H)
            done_iters = torch.zeros(B, dtype=torch.long, device=q.device)
        else:
            st = {k: v.clone() for k, v in start.state.items()}
            done_iters = start.iterations
        return _iterate(pb, st, scale, tol, max_iter, done_iters)


def _iterate(
    pb: dict, st: dict, scale: torch.Tensor, tol: float, max_iter: int, iters: torch.Tensor
) -> IPMResult:
    B = pb["q"].shape[0]
    l1mask = pb["l1m"]
    like = pb["delta"]
    out_st = {k: v.clone() for k, v in st.items()}
    out_iters = torch.zeros(B, dtype=torch.long, device=like.device)
    out_pres = torch.full_like(like, float("inf"))
    out_dres = torch.full_like(like, float("inf"))
    out_gap = torch.full_like(like, float("inf"))
    out_conv = torch.zeros(B, dtype=torch.bool, device=like.device)
    idx = torch.arange(B, device=like.device)
    m = _count_pairs(st, pb)
    done = torch.zeros(B, dtype=torch.bool, device=like.device)
    iters = iters.clone()
    max_iter = max_iter - int(iters.min()) if B > 0 else 0
    failed = torch.zeros(B, dtype=torch.bool, device=like.device)
    for it in range(max_iter + 1):
        res = _residuals(st, pb)
        pres = torch.stack(
            [
                r.abs().reshape(r.shape[0], -1).amax(-1)
                for k, r in res.items()
                if k not in ("w", "t")
            ]
        ).amax(0)
        dres = torch.maximum(res["w"].abs().amax((1, 2)), res["t"].abs().amax((1, 2)))
        mu = _comp(st, pb) / m
        resid = torch.maximum(pres, dres)
        conv = (resid <= tol) & (mu <= tol) & (_max_comp(st, pb) <= _MAX_COMP * tol)
        stalled = mu <= _STALL * tol
        conv = conv | (stalled & (resid <= _STALL_RESID * tol))
        bad = ~torch.isfinite(resid + mu) | stalled | failed
        newly = (conv | bad) & ~done
        if bool(newly.any()) or it == max_iter:
            _write_back(out_st, st, idx, newly if it < max_iter else ~done)
            sel = idx[newly if it < max_iter else ~done]
            keep_rows = newly if it < max_iter else ~done
            out_iters[sel] = iters[keep_rows]
            out_pres[sel] = pres[keep_rows]
            out_dres[sel] = dres[keep_rows]
            out_gap[sel] = mu[keep_rows]
            out_conv[sel] = conv[keep_rows]
            done = done | newly
        if it == max_iter or bool(done.all()):
            break
        if int(done.sum()) * 2 >= done.numel() and done.numel() > 4:
            keep = ~done
            st = {k: v[keep] for k, v in st.items()}
            pb = {k: (v[keep] if isinstance(v, torch.Tensor) else v) for k, v in pb.items()}
            res = {k: v[keep] for k, v in res.items()}
            idx, m, mu, iters = idx[keep], m[keep], mu[keep], iters[keep]
            done, failed = done[keep], failed[keep]
        newton = _Newton(pb["Sig"], st, pb)
        rc = {k: st["s" + k] * st["z" + k] for k in _pairs(st)}
        _mask_rc(rc, pb)
        aff = newton.direction(st, pb, res, rc)
        a_aff = _max_step(st, aff)
        mu_aff = _comp(st, pb, aff, a_aff) / m
        sigma = (mu_aff / mu).clamp(min=0.0, max=1.0) ** 3
        target = sigma * mu
        for k in rc:
            shift = aff["s" + k] * aff["z" + k]
            tgt = target if k == "d" else target[:, None, None]
            rc[k] = rc[k] + shift - tgt
        _mask_rc(rc, pb)
        dirn = newton.direction(st, pb, res, rc)
        step = (_STEP_FRACTION * _max_step(st, dirn)).clamp(max=1.0)
        frozen = done | newton.failed
        for k, v in dirn.items():
            shape = (-1,) + (1,) * (v.dim() - 1)
            upd = st[k] + step.reshape(shape) * v
            st[k] = torch.where(frozen.reshape(shape), st[k], upd)
        failed = newton.failed & ~done
        iters = iters + (~frozen).long()
    return IPMResult(
        w=out_st["w"],
        t=out_st["t"],
        slack={k: out_st["s" + k] for k in ("l", "u", "a", "b", "d") if "s" + k in out_st},
        dual={k: out_st["z" + k] for k in ("l", "u", "a", "b", "d") if "z" + k in out_st},
        y=out_st["y"],
        scale=scale,
        iterations=out_iters,
        primal_residual=out_pres,
        dual_residual=out_dres,
        gap=out_gap,
        converged=out_conv,
        l1mask=l1mask,
        state=out_st,
    )


def _mask_rc(rc: dict, pb: dict) -> None:
    for k in ("a", "b"):
        rc[k] = rc[k] * pb["l1m"]
    rc["d"] = torch.where(pb["hd"], rc["d"], torch.zeros_like(rc["d"]))


def _count_pairs(st: dict, pb: dict) -> torch.Tensor:
    H, n = st["w"].shape[1:]
    m = torch.full_like(pb["delta"], float(H * n))
    if "su" in st:
        m = m + H * n
    m = m + 2.0 * n * pb["l1m"].sum((1, 2)) + pb["hd"].to(m.dtype)
    return m


def _write_back(out: dict, st: dict, idx: torch.Tensor, rows: torch.Tensor) -> None:
    sel = idx[rows]
    for k, v in st.items():
        out[k][sel] = v[rows]

"""Problem assembly of the interior point: scaled data and the stacked inequalities.

The L1 terms are written with epigraph variables ``t_tau >= |w_tau - w_{tau-1}|``; the
turnover limit becomes ``1' t_1 <= delta``. All inequalities are stacked into one slack
vector ``s = g(w, t) >= 0`` of length ``m = G H n + 1`` per sample, in the order

    [w - lo  (lower bounds),  t - d  ("a"),  t + d  ("b"),  hi - w  (upper, optional),
     delta - 1't_1  (turnover)],        d_tau = w_tau - w_{tau-1},  w_0 = w_prev,

so that every vector operation of an iteration (ratios, complementarity, step lengths,
residuals) is one torch call on a ``(B, m)`` tensor. Inequalities that a sample does not
have (L1 rows of a period without L1 term, the turnover row when ``delta = inf``) are
inert placeholders (``s = 1``, ``z = 0``, never moved). Internal to
:mod:`mpo.learn.qp.ipm`.
"""

from __future__ import annotations

import torch

from mpo.learn.qp.active import RiskOperator, as_bounds

__all__ = ["GROUPS", "IPMProblem", "split_groups"]

#: Inequality groups in stacking order (the turnover row ``"d"`` comes last).
GROUPS = ("l", "a", "b", "u")


class IPMProblem:
    """Scaled problem data of one batch plus the layout of the stacked inequalities."""

    def __init__(
        self, Sig, q, w_prev, gamma, delta, w_max, scale, factor=None, refine=False
    ) -> None:
        B, H, n = q.shape
        self.refine = refine
        self.B, self.H, self.n = B, H, n
        self.hn = H * n
        self.lo, self.hi = as_bounds(w_max).values()  # hi: float, (B, H, n) or None
        self.has_u = self.hi is not None
        self.G = 4 if self.has_u else 3
        self.m = self.G * self.hn + 1
        self._buffers: tuple[list, list, torch.Tensor] | None = None
        if factor is None:
            # Sigma stays unscaled (no extra n x n pass); 1/scale is applied when the
            # Newton matrix is built into a reused buffer and after products with Sigma.
            self.Sig, self.F, self.dd = Sig, None, None
            self.inv_scale = scale.reciprocal()
        else:
            # Sigma = F F' + diag(dd): kept factored (Woodbury Newton steps).
            F, dd = factor
            self.Sig = None
            self.F = F / scale.sqrt()[:, None, None, None]
            self.dd = dd / scale[:, None, None]
        self.q = q / scale[:, None, None]
        self.wp = w_prev
        self.gamma = (gamma / scale)[:, None, None]
        self.hd = torch.isfinite(delta)
        self.delta = torch.where(self.hd, delta, torch.zeros_like(delta))
        has_l1 = (gamma > 0).unsqueeze(1).expand(B, H).clone()
        has_l1[:, 0] |= self.hd
        self.l1m = has_l1.to(q.dtype).unsqueeze(-1)
        # Inert placeholder rows: only built when some sample has one.
        self.dummy = not (bool(has_l1.all()) and bool(self.hd.all()))
        cmask = torch.ones(B, self.m, dtype=q.dtype, device=q.device)
        if self.dummy:
            grp = self.groups(cmask)
            grp[:, 1:3] = self.l1m.unsqueeze(1).expand(B, 2, H, n)
            cmask[:, -1] = self.hd.to(q.dtype)
        self.cmask = cmask
        self.zsafe = 1.0 - cmask  # added to z in ratio tests so placeholders give 0 / 1
        self.count = cmask.sum(-1)
        # Border columns: the H budget rows (the turnover column is filled per iteration).
        C = torch.zeros(B, H, n, H + 1, dtype=q.dtype, device=q.device)
        C[..., :H] = torch.eye(H, dtype=q.dtype, device=q.device).reshape(1, H, 1, H)
        self.C = C.reshape(B, self.hn, H + 1)
        # ``e e'`` of the border Schur complement (the turnover row's own unit entry)
        ee = torch.zeros(B, H + 1, H + 1, dtype=q.dtype, device=q.device)
        ee[:, H, H] = 1.0
        self.ee = ee

    def subset(self, keep: torch.Tensor) -> IPMProblem:
        """The samples ``keep`` (boolean mask) of this problem."""
        out = object.__new__(IPMProblem)
        for k, v in self.__dict__.items():
            out.__dict__[k] = v[keep] if isinstance(v, torch.Tensor) else v
        out.B = int(out.q.shape[0])
        out._buffers = None
        return out

    def buffers(self) -> tuple[list, list, torch.Tensor]:
        """Reused ``n x n`` work buffers (``K_tau``, factors) and the LAPACK info vector.

        Allocating fresh ``(B, n, n)`` tensors every iteration costs page faults that,
        at ``n = 100``, took as long as the Cholesky factorisation itself.
        """
        if self._buffers is None:
            B, H, n = self.B, self.H, self.n
            like = self.q
            K = [like.new_empty(B, n, n) for _ in range(H)]
            U = [like.new_empty(B, n, n) for _ in range(H - 1)]
            info = torch.empty(B, dtype=torch.int32, device=like.device)
            self._buffers = (K, U, info)
        return self._buffers

    def groups(self, x: torch.Tensor) -> torch.Tensor:
        """View ``(B, m)`` stacked values as ``(B, G, H, n)`` (turnover row excluded)."""
        return x[:, :-1].view(x.shape[0], self.G, self.H, self.n)

    def sig_mul(self, w: torch.Tensor) -> torch.Tensor:
        """``Sigma_tau w_tau`` for ``w`` of shape ``(B, H, n)``."""
        if self.F is None:
            return RiskOperator(dense=self.Sig).mul(w) * self.inv_scale[:, None, None]
        return RiskOperator(F=self.F, dd=self.dd).mul(w)

    def prev(self, w: torch.Tensor) -> torch.Tensor:
        """``w_{tau-1}`` with ``w_{-1} = w_prev``."""
        if self.H == 1:
            return self.wp.unsqueeze(1)
        return torch.cat([self.wp.unsqueeze(1), w[:, :-1]], 1)

    def diff0(self, dw: torch.Tensor) -> torch.Tensor:
        """``D dw``: ``dw_tau - dw_{tau-1}`` with ``dw_{-1} = 0``."""
        if self.H == 1:
            return dw
        out = dw.clone()
        out[:, 1:] -= dw[:, :-1]
        return out

    def diff_t(self, v: torch.Tensor) -> torch.Tensor:
        """``D' v``: ``v_tau - v_{tau+1}`` with ``v_H = 0``."""
        if self.H == 1:
            return v
        out = v.clone()
        out[:, :-1] -= v[:, 1:]
        return out

    def stack(self, lw, a, b, tsum) -> torch.Tensor:
        """Stack per-group values ``(B, H, n)`` and the turnover row ``(B,)`` into ``(B, m)``."""
        B = lw.shape[0]
        parts = [lw.reshape(B, -1), a.reshape(B, -1), b.reshape(B, -1)]
        if self.has_u:
            parts.append(lw.neg().reshape(B, -1))
        parts.append(tsum.unsqueeze(-1))
        return torch.cat(parts, 1)

    def slack_of(self, w: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``g(w, t)``: the slacks implied by the primal variables, ``(B, m)``."""
        d = w - self.prev(w)
        g = self.stack(w, t - d, t + d, self.delta - t[:, 0].sum(-1))
        if self.has_u:
            self.groups(g)[:, 3] += self.hi
        if isinstance(self.lo, torch.Tensor):
            self.groups(g)[:, 0] -= self.lo
        return g


def split_groups(pb: IPMProblem, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Stacked ``(B, m)`` values as a dict of groups ``(B, H, n)`` and ``"d"`` ``(B,)``."""
    g = pb.groups(x)
    out = {k: g[:, i] for i, k in enumerate(GROUPS[: pb.G])}
    out["d"] = x[:, -1]
    return out

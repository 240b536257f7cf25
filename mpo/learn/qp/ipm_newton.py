"""Newton systems of the interior point: factorisation and solves of the reduced KKT matrix.

Each Mehrotra predictor-corrector iteration eliminates slacks, duals and ``t``
analytically, which leaves one symmetric ``(H n) x (H n)`` block-tridiagonal system per
sample (dense ``n x n`` diagonal blocks, diagonal off-diagonal blocks) bordered by the
``H`` budget rows and the rank-one turnover term; :class:`NewtonSystem` factors it
(block Cholesky, or Woodbury for a factored ``Sigma``). See ``README.md`` next to this
file for the algebra. Internal to :mod:`mpo.learn.qp.ipm`.
"""

from __future__ import annotations

import torch

from mpo.learn.qp.ipm_problem import IPMProblem

__all__ = ["NewtonSystem", "tri_solve"]


def tri_solve(U: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Solve ``U' U x = b`` for an upper Cholesky factor ``U`` (two triangular solves)."""
    y = torch.linalg.solve_triangular(U.mT, b, upper=False)
    return torch.linalg.solve_triangular(U, y, upper=True)


class NewtonSystem:
    """Factorised reduced Newton system of one iteration."""

    def __init__(self, pb: IPMProblem, s: torch.Tensor, z: torch.Tensor) -> None:
        self.pb = pb
        H, n = pb.H, pb.n
        W = z / s
        Wg = pb.groups(W)
        Wa, Wb = Wg[:, 1], Wg[:, 2]
        alpha = Wa + Wb
        if pb.dummy:
            alpha = alpha + (1.0 - pb.l1m)
        uinv = alpha.reciprocal()
        if pb.dummy:
            uinv = uinv * pb.l1m
        self.uinv = uinv
        self.u0 = uinv[:, 0]
        self.beta = Wb - Wa
        E = (Wa * Wb).mul_(uinv).mul_(4.0)
        Wd = W[:, -1]
        self.kappa = Wd / (1.0 + Wd * self.u0.sum(-1))
        self.kappa_col = self.kappa.unsqueeze(-1)
        V = (self.kappa.sqrt().unsqueeze(-1) * self.beta[:, 0]).mul_(self.u0)
        C = pb.C.clone()
        C[:, :n, H] = V
        self.C = C
        self.E = E
        if pb.F is not None:
            # Diagonal part without the couplings between periods (added exactly, no
            # cancellation of large kink weights); E_0 couples to the constant w_prev.
            base = Wg[:, 0] + pb.dd
            if pb.has_u:
                base = base + Wg[:, 3]
            base[:, 0] += E[:, 0]
            self._factor_woodbury(base)
            return
        diag = Wg[:, 0] + E
        if pb.has_u:
            diag = diag + Wg[:, 3]
        if H > 1:
            diag[:, :-1] += E[:, 1:]
        self.diag = diag
        self._factor(diag)

    def set_border(self, X1: torch.Tensor) -> None:
        """Store ``X1 = K^{-1} C`` and invert the border Schur complement ``C' X1 + e e'``."""
        sch = torch.baddbmm(self.pb.ee, self.C.mT, X1)
        self.sch_chol, info = torch.linalg.cholesky_ex(sch)
        self.failed = self.failed | (info != 0)
        self.X1 = X1

    def _factor(self, diag: torch.Tensor) -> None:
        """Cholesky factors of the block-tridiagonal matrix (Schur complements)."""
        pb = self.pb
        Ks, Us, info = pb.buffers()
        chols = []
        failed = None
        prev = None
        inv_scale = pb.inv_scale[:, None, None]
        for tau in range(pb.H):
            K = torch.mul(pb.Sig[:, min(tau, pb.Sig.shape[1] - 1)], inv_scale, out=Ks[tau])
            K.diagonal(dim1=-2, dim2=-1).add_(diag[:, tau])
            if tau > 0:
                # S = K - E S_prev^{-1} E written as K - E + E S_prev^{-1} (S_prev - E), which
                # avoids cancelling two huge terms when a kink weight E explodes.
                e = self.E[:, tau]
                prev.diagonal(dim1=-2, dim2=-1).sub_(e)
                # in place: the previous K is not needed again (its factor is in Us)
                U_prev = chols[-1]
                torch.linalg.solve_triangular(U_prev.mT, prev, upper=False, out=prev)
                torch.linalg.solve_triangular(U_prev, prev, upper=True, out=prev)
                T = prev.mul_(e.unsqueeze(-1))
                K.add_(T, alpha=0.5).add_(T.mT, alpha=0.5)
                K.diagonal(dim1=-2, dim2=-1).sub_(e)
            # The last period's K is factored in place; earlier ones are still needed for
            # the next Schur complement, so they are copied first.
            U = K if tau == pb.H - 1 else Us[tau].copy_(K)
            # K is symmetric: its transpose view is column-major, which LAPACK factors in
            # place; the buffer then holds U = L', the upper factor.
            torch.linalg.cholesky_ex(U.mT, out=(U.mT, info))
            bad = info != 0
            failed = bad if failed is None else failed | bad
            chols.append(U)
            prev = K
        if bool(failed.any()):
            eye = torch.eye(pb.n, dtype=diag.dtype, device=diag.device)
            chols = [torch.where(failed[:, None, None], eye, U) for U in chols]
        self.chols = chols
        self.failed = failed

    def _factor_woodbury(self, base: torch.Tensor) -> None:
        """Factor ``K = T + G G'`` for a factored ``Sigma_tau = F_tau F_tau' + diag(dd)``.

        ``T`` (the diagonals and the kink couplings ``-E`` between periods) is one
        ``H x H`` tridiagonal matrix per coordinate; its pivots are formed as
        ``p_tau = a_tau + E_{tau+1}``, ``a_tau = base_tau + E_tau a_{tau-1} / (a_{tau-1} +
        E_tau)``, sums of positive terms, so huge kink weights never cancel. ``G`` is
        ``blockdiag(F_tau)`` (rank ``H k``), and the Woodbury identity leaves one
        ``H k x H k`` capacitance matrix ``I + G' T^{-1} G`` to factor per sample:
        ``O(n (H k)^2)`` work instead of ``O(H n^3)``.
        """
        pb = self.pb
        B, H, n = pb.B, pb.H, pb.n
        E = self.E
        self.base = base
        a = [base[:, 0]]
        for tau in range(1, H):
            e = E[:, tau]
            a.append(base[:, tau] + e * a[-1] / (a[-1] + e))
        piv = torch.stack(a, 1)
        if H > 1:
            piv[:, :-1] += E[:, 1:]
        self.piv = piv
        k = pb.F.shape[-1]
        Fs = pb.F.expand(B, H, n, k)
        G = torch.zeros(B, H, n, H, k, dtype=base.dtype, device=base.device)
        for tau in range(H):
            G[:, tau, :, tau] = Fs[:, tau]
        self.G = G.reshape(B, H * n, H * k)
        self.TG = self._tsolve(self.G)
        cap = self.G.mT @ self.TG
        cap.diagonal(dim1=-2, dim2=-1).add_(1.0)
        self.cap_chol, info = torch.linalg.cholesky_ex(cap)
        self.failed = (info != 0) | ~torch.isfinite(piv).all(-1).all(-1)

    def _woodbury(self, rhs: torch.Tensor) -> torch.Tensor:
        u = self._tsolve(rhs)
        v = torch.cholesky_solve(self.G.mT @ u, self.cap_chol)
        return u - self.TG @ v

    def _kmul(self, x: torch.Tensor) -> torch.Tensor:
        """``K x = T x + G G' x`` for ``x`` of shape ``(B, H n, r)`` (factored form)."""
        pb = self.pb
        B, H, n = pb.B, pb.H, pb.n
        xr = x.reshape(B, H, n, -1)
        y = self.base.unsqueeze(-1) * xr
        if H > 1:
            # kink couplings E_tau (w_tau - w_{tau-1}), written as differences
            c = self.E[:, 1:].unsqueeze(-1) * (xr[:, 1:] - xr[:, :-1])
            y[:, 1:] += c
            y[:, :-1] -= c
        return y.reshape(B, H * n, -1) + self.G @ (self.G.mT @ x)

    def _tsolve(self, rhs: torch.Tensor) -> torch.Tensor:
        """Solve with the per-coordinate tridiagonal ``T``; ``rhs`` is ``(B, H n, r)``."""
        pb = self.pb
        B, H, n = pb.B, pb.H, pb.n
        piv = self.piv.unsqueeze(-1)
        if H == 1:
            return rhs / piv[:, 0]
        r = rhs.reshape(B, H, n, -1)
        E = self.E.unsqueeze(-1)
        y = [r[:, 0]]
        for tau in range(1, H):
            y.append(r[:, tau] + E[:, tau] / piv[:, tau - 1] * y[-1])
        x = [y[-1] / piv[:, -1]]
        for tau in range(H - 2, -1, -1):
            x.append((y[tau] + E[:, tau + 1] * x[-1]) / piv[:, tau])
        return torch.stack(x[::-1], 1).reshape(B, H * n, -1)

    def solve(self, rhs: torch.Tensor) -> torch.Tensor:
        """Solve with the block-tridiagonal matrix; ``rhs`` is ``(B, H n, r)``."""
        pb = self.pb
        if pb.F is not None:
            # Woodbury, plus one step of iterative refinement: with kink and bound weights
            # spanning many orders of magnitude the plain formula loses digits that the
            # interior point needs near the end (its dual residual stalled at 1e-7).
            x = self._woodbury(rhs)
            return x + self._woodbury(rhs - self._kmul(x))
        x = self._block_solve(rhs)
        if pb.refine:
            x = x + self._block_solve(rhs - self._kmul_dense(x))
        return x

    def _kmul_dense(self, x: torch.Tensor) -> torch.Tensor:
        """``K x`` with the dense ``Sigma`` (the block-tridiagonal Newton matrix)."""
        pb = self.pb
        B, H, n = pb.B, pb.H, pb.n
        xr = x.reshape(B, H, n, -1)
        y = (pb.Sig @ xr) * pb.inv_scale[:, None, None, None] + self.diag.unsqueeze(-1) * xr
        if H > 1:
            e = self.E[:, 1:].unsqueeze(-1)
            y[:, 1:] -= e * xr[:, :-1]
            y[:, :-1] -= e * xr[:, 1:]
        return y.reshape(B, H * n, -1)

    def _block_solve(self, rhs: torch.Tensor) -> torch.Tensor:
        pb = self.pb
        if pb.H == 1:
            return tri_solve(self.chols[0], rhs)
        B, H, n = pb.B, pb.H, pb.n
        r = rhs.reshape(B, H, n, -1)
        Z = []
        for tau in range(H):
            Y = r[:, tau] if tau == 0 else r[:, tau] + self.E[:, tau].unsqueeze(-1) * Z[-1]
            Z.append(tri_solve(self.chols[tau], Y))
        X = [Z[-1]]
        for tau in range(H - 2, -1, -1):
            X.append(Z[tau] + tri_solve(self.chols[tau], self.E[:, tau + 1].unsqueeze(-1) * X[-1]))
        return torch.stack(X[::-1], dim=1).reshape(B, H * n, -1)

    def minv(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the inverse of the ``t`` block (diagonal plus rank one in period 1)."""
        out = self.uinv * x
        head = out[:, 0]
        head.addcmul_(self.kappa_col * head.sum(-1, keepdim=True), self.u0, value=-1.0)
        return out

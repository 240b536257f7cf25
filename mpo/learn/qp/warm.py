"""Warm starts of the fast QP backend: active sets of earlier solves, by sample key.

Training solves the same windows every epoch, and between two epochs the encoder's
views move little, so the optimal active set of a window (which weights sit at 0 or
``w_max``, which are not traded, the L1 signs, whether the turnover limit binds) is
usually the one of its previous solve. :class:`ActiveSetCache` keeps the last accepted
active set of every key; the fast backend (``FastBackend(warm_start=True)``, given
``keys``) first solves the equality-constrained QP on the cached set and repairs it for
a few rounds with the corrections of the KKT check, and only the samples that still
fail the check of the full QP's KKT conditions go to the interior point. The check is
the same one that accepts the interior point's polished solutions, so a warm start
changes the cost of a solve, never its result beyond rounding.
"""

from __future__ import annotations

import torch

from mpo.learn.qp.active import ActiveSet

__all__ = ["ActiveSetCache"]


class ActiveSetCache:
    """The last accepted active set per non-negative integer key, for one QP structure.

    Stored as dense tables indexed by key (grown by doubling), so lookups and stores
    are one gather/scatter per field: ``H n`` bytes per mask and key. The counters
    ``hits`` (solved from the cache), ``misses`` (had an entry, went to the interior
    point) and ``cold`` (no entry) describe how well warm starts work for a run.
    """

    def __init__(self) -> None:
        self._known = torch.zeros(0, dtype=torch.bool)
        self._tables: dict[str, torch.Tensor] = {}
        self._shape: tuple[int, int] | None = None
        self.hits = 0
        self.misses = 0
        self.cold = 0

    def __len__(self) -> int:
        return int(self._known.sum())

    def __repr__(self) -> str:
        return (
            f"ActiveSetCache(entries={len(self)}, hits={self.hits}, misses={self.misses}, "
            f"cold={self.cold})"
        )

    @property
    def hit_rate(self) -> float:
        """Share of lookups with an entry that were solved from it (NaN before any)."""
        tried = self.hits + self.misses
        return self.hits / tried if tried else float("nan")

    def clear(self) -> None:
        """Forget every entry and reset the counters."""
        self.__init__()

    def known(self, keys: torch.Tensor) -> torch.Tensor:
        """``(B,)`` mask: which keys have an entry."""
        inside = keys < self._known.shape[0]
        out = torch.zeros(keys.shape, dtype=torch.bool)
        out[inside] = self._known[keys[inside]]
        return out

    def lookup(self, keys: torch.Tensor) -> ActiveSet:
        """Cached active sets of ``keys`` (every one must be :meth:`known`), on the CPU."""
        if not bool(self.known(keys).all()):
            raise KeyError("ActiveSetCache.lookup: some keys have no entry (check known()).")
        t = {k: v[keys] for k, v in self._tables.items()}
        return ActiveSet(
            lower=t["lower"],
            upper=t["upper"],
            kink=t["kink"],
            sign=t["sign"].to(torch.float64),
            turnover=t["turnover"],
        )

    def store(self, keys: torch.Tensor, act: ActiveSet, ok: torch.Tensor) -> None:
        """Remember ``act`` for the keys whose solve was accepted (``ok``); forget the
        entries of the others (their cached set was wrong for the current problem)."""
        B, H, n = act.lower.shape
        if self._shape != (H, n):
            self.clear()
            self._shape = (H, n)
        need = int(keys.max()) + 1 if B else 0
        if need > self._known.shape[0]:
            self._grow(max(need, 2 * self._known.shape[0]), H, n)
        ok = ok.detach().cpu()
        good = keys[ok]
        self._known[keys[~ok]] = False
        self._known[good] = True
        rows = {
            "lower": act.lower,
            "upper": act.upper,
            "kink": act.kink,
            "sign": act.sign.to(torch.int8),
            "turnover": act.turnover,
        }
        for name, value in rows.items():
            self._tables[name][good] = value.detach().cpu()[ok]

    def _grow(self, size: int, H: int, n: int) -> None:
        old = self._known.shape[0]
        known = torch.zeros(size, dtype=torch.bool)
        known[:old] = self._known
        self._known = known
        specs = {"lower": torch.bool, "upper": torch.bool, "kink": torch.bool, "sign": torch.int8}
        for name, dtype in specs.items():
            table = torch.zeros(size, H, n, dtype=dtype)
            if name in self._tables:
                table[:old] = self._tables[name]
            self._tables[name] = table
        turnover = torch.zeros(size, dtype=torch.bool)
        if "turnover" in self._tables:
            turnover[:old] = self._tables["turnover"]
        self._tables["turnover"] = turnover

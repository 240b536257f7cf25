"""Typed errors raised by mpo.

Every message says what was wrong, where (ticker, date, field, sample index)
and how to fix it.
"""

from __future__ import annotations

__all__ = [
    "MpoError",
    "DataError",
    "DownloadError",
    "SpecError",
    "InfeasibleError",
    "ConvergenceError",
    "CheckpointError",
    "TuningError",
    "SolverError",
]


class MpoError(Exception):
    """Base class of every error raised on purpose by mpo."""


class DataError(MpoError, ValueError):
    """Market data is malformed, inconsistent or too short."""


class DownloadError(MpoError):
    """A data download failed (network, rate limit, unknown ticker)."""

    def __init__(self, message: str, failed_tickers: tuple[str, ...] = ()):
        super().__init__(message)
        self.failed_tickers = tuple(failed_tickers)


class SpecError(MpoError, ValueError):
    """A policy or run specification is invalid."""


class InfeasibleError(MpoError, ValueError):
    """An optimisation problem has no feasible point for the given inputs."""


class ConvergenceError(MpoError, RuntimeError):
    """A solver did not reach the requested accuracy."""


class CheckpointError(MpoError):
    """A checkpoint is missing, corrupted or incompatible with the data."""


class TuningError(MpoError, ValueError):
    """A tuning study is misconfigured."""


class SolverError(MpoError, RuntimeError):
    """A policy's optimisation failed at some date (solver failure, not infeasibility).

    The message names the policy, the date and the solver's status; see the
    spec's ``[backtest] solver`` and ``solver_options``.
    """


class ResearchError(MpoError, ValueError):
    """Walk-forward studies: fold schedule, purge, universes, the Dask cluster."""

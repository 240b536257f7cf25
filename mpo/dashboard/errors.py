"""The dashboard's errors (``MpoError`` subclasses: the CLI prints ``error: ...``, exit 2)."""

from __future__ import annotations

from mpo.errors import MpoError

__all__ = ["DashboardError", "RunFolderError"]


class DashboardError(MpoError, RuntimeError):
    """``mpo dashboard`` cannot start: streamlit is missing, a bad port or runs folder."""


class RunFolderError(DashboardError, ValueError):
    """A run folder, or a file in it, is missing, unreadable or not what its kind writes."""

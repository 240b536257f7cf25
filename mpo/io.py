"""Atomic file writes and run metadata.

Every result, cache, study or checkpoint file is written to a temporary file in
the destination directory, flushed to disk and then renamed over the target, so
a crash or Ctrl-C never leaves a half-written file behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import tempfile
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import pandas as pd

__all__ = ["atomic_path", "package_versions", "write_json", "write_parquet"]

_PACKAGES = (
    "mpo",
    "cvxportfolio",
    "cvxpy",
    "clarabel",
    "numpy",
    "pandas",
    "scipy",
    "torch",
    "cvxpylayers",
    "optuna",
    "yfinance",
    "skfolio",
    "scikit-learn",
)


@contextlib.contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``target``; on success fsync and rename it to ``target``."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, target)
        _fsync_directory(target.parent)
    finally:
        tmp_path.unlink(missing_ok=True)


def _fsync_directory(directory: Path) -> None:
    """Persist the rename itself (POSIX); skipped where directories cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_json(obj: Any, target: str | Path) -> None:
    """Write JSON atomically (NaN and numpy scalars are handled)."""
    with atomic_path(target) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, default=_json_default, allow_nan=True))


def write_parquet(frame: pd.DataFrame | pd.Series, target: str | Path) -> None:
    """Write a DataFrame (or Series) to parquet atomically."""
    if isinstance(frame, pd.Series):
        frame = frame.to_frame()
    frame = frame.copy()
    frame.columns = [str(c) for c in frame.columns]
    with atomic_path(target) as tmp:
        frame.to_parquet(tmp)


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "item"):  # numpy scalars
        return obj.item()
    if hasattr(obj, "isoformat"):  # timestamps, dates
        return obj.isoformat()
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, set | tuple):
        return list(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def package_versions() -> dict[str, str]:
    """Versions of Python and of the packages that decide our numbers."""
    out = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out

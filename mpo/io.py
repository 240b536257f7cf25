"""Atomic file writes and run metadata.

Every result, cache, study or checkpoint file is written to a temporary file in
the destination directory, flushed to disk and then renamed over the target, so
a crash or Ctrl-C never leaves a half-written file behind.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import platform
import re
import tempfile
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import pandas as pd

from mpo.errors import MpoError

__all__ = [
    "DiskFullError",
    "atomic_path",
    "check_name",
    "inside",
    "new_run_dir",
    "package_versions",
    "remove_stale_temps",
    "write_json",
    "write_parquet",
]

logger = logging.getLogger(__name__)

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


class DiskFullError(MpoError, OSError):
    """A write failed because the disk (or quota) is full; the file it was to replace is intact.

    An :class:`OSError` (``errno`` ``ENOSPC``, ``filename`` the target) and an
    :class:`~mpo.errors.MpoError`: every ``mpo`` command prints it as one line.
    """

    def __str__(self) -> str:
        return (
            f"no space left on device writing {self.filename}: free space and rerun (a "
            "previous version of the file, if any, is unchanged)."
        )


@contextlib.contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``target``; on success fsync and rename it to ``target``.

    The temporary file is hidden and named after the target (``.<name>.<random>.tmp``);
    it is removed on any error, so ``target`` is either its old content or the new one,
    never a partial file. A write that fails because the disk (or quota) is full, from
    any writer (Python, pyarrow, torch), is raised as :class:`DiskFullError` (an
    ``OSError`` with ``errno.ENOSPC``) naming ``target``. Only a process killed mid-write can leave the temporary file behind.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp_path, _file_mode())  # mkstemp creates 0600; honour the umask instead
        os.replace(tmp_path, target)
        _fsync_directory(target.parent)
    except (OSError, RuntimeError) as exc:
        if not _disk_full(exc, target.parent):
            raise
        tmp_path.unlink(missing_ok=True)
        raise DiskFullError(errno.ENOSPC, "No space left on device", str(target)) from exc
    finally:
        tmp_path.unlink(missing_ok=True)


#: Free bytes below which a failed write (of a writer that hides its errno) is a full disk.
_LOW_SPACE = 1 << 20


def _disk_full(exc: BaseException, directory: Path) -> bool:
    """Whether ``exc`` (or an exception it came from) reports a full disk or quota.

    torch's and pyarrow's writers do not always keep the errno (``file write
    failed``); for those, a directory with less than 1 MiB free counts as full.
    """
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if any(m in str(seen) for m in ("No space left on device", "Disk quota exceeded")):
            return True
        seen = seen.__cause__ or seen.__context__
    try:
        st = os.statvfs(directory)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < _LOW_SPACE


def _file_mode() -> int:
    """``0o666`` less the process umask: the mode ``open()`` would give a new file."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


#: Characters allowed in names that become path components (policy, study and run names).
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


def check_name(name: str, what: str = "name") -> str:
    """``name`` if it is safe as one path component, else :class:`~mpo.errors.SpecError`.

    Safe: 1-100 characters of letters, digits, ``.``, ``_`` and ``-``, starting
    with a letter or digit (no ``/``, no ``..``, not empty, no spaces).
    """
    from mpo.errors import SpecError

    if not isinstance(name, str) or not _SAFE_NAME.match(name) or ".." in name:
        raise SpecError(
            f"{what} {name!r} cannot name a folder: use 1-100 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit (no '/', '..' or spaces)."
        )
    return name


def new_run_dir(parent: str | Path, name: str) -> Path:
    """Create and return a fresh folder ``parent/<timestamp>-<name>`` (never an existing one).

    Two runs started in the same second get ``...-2``, ``...-3``; the folder is
    created atomically (``mkdir`` without ``exist_ok``), so concurrent runs never
    share one. The result is checked to lie inside ``parent``.
    """
    import pandas as pd

    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    stamp = pd.Timestamp.now().strftime("%Y%m%d-%H%M%S")
    base = f"{stamp}-{name}"
    for i in range(1, 10_000):
        candidate = parent / (base if i == 1 else f"{base}-{i}")
        inside(candidate, parent)
        try:
            candidate.mkdir()
        except FileExistsError:
            continue
        return candidate
    raise OSError(f"cannot create a new run folder under {parent} for {name!r}")


def inside(path: str | Path, root: str | Path) -> Path:
    """``path`` resolved, if it lies inside ``root``; :class:`~mpo.errors.SpecError` if not."""
    from mpo.errors import SpecError

    resolved = Path(path).resolve()
    base = Path(root).resolve()
    if resolved != base and base not in resolved.parents:
        raise SpecError(f"{str(path)!r} lies outside the output folder {str(root)!r}.")
    return resolved


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


def remove_stale_temps(folder: str | Path, older_than: float = 3600.0) -> list[Path]:
    """Delete the hidden temporary files (``.<name>.<random>.tmp``) a killed writer left in
    ``folder``, if older than ``older_than`` seconds (a live writer's are younger).

    :func:`atomic_path` removes its temporary file on every error, but not when
    the process is killed mid-write. Returns the paths removed.
    """
    import time

    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    now = time.time()
    for tmp in folder.glob(".*.tmp"):
        try:
            if tmp.is_file() and now - tmp.stat().st_mtime > older_than:
                tmp.unlink()
                removed.append(tmp)
        except OSError:  # another process removed it, or no permission: leave it
            continue
    if removed:
        logger.info("removed %d temporary file(s) left by a killed writer in %s", len(removed),
                    folder)  # fmt: skip
    return removed


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

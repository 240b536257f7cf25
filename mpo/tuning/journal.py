"""Journal-file studies survive a crash mid-write: a broken tail is backed up and repaired.

Optuna's journal storage appends one JSON record per line. A process killed
(or a disk filled) in the middle of a write leaves a last line without its
newline or with truncated JSON; the next append would glue a new record onto
it and make the whole study unreadable. :func:`repair_journal`, called before
every journal is opened, holds the journal's own lock (so no writer is
mid-append), and if the tail is broken copies the file to
``<name>.broken-<timestamp>`` and truncates it after the last complete record:
every finished trial before the break survives. A broken record in the
*middle* (not a crash signature) is refused with the line number instead of
being guessed at.

:class:`SafeJournalFileBackend` makes a failed append (a full disk, a quota) leave
no partial record: the file is cut back to its length before the write, under the
same lock, and the error names the journal. Only a process killed mid-write can
leave a broken tail, and that is what :func:`repair_journal` repairs.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import time
from pathlib import Path

import optuna

from mpo.errors import MpoError, TuningError

__all__ = ["JournalWriteError", "SafeJournalFileBackend", "journal_write_error", "repair_journal"]

logger = logging.getLogger(__name__)


def _valid(line: bytes) -> bool:
    try:
        json.loads(line)
    except ValueError:
        return False
    return True


def repair_journal(path: str | Path) -> Path | None:
    """Repair a journal whose last record is incomplete; return the backup's path (or None).

    Raises
    ------
    TuningError
        If ``path`` is a directory, or a record before the last one is corrupt.
    """
    path = Path(path)
    if path.is_dir():
        raise TuningError(
            f"the journal storage {str(path)!r} is a directory; give a file path such as "
            f"{str(path / 'studies.journal')!r} with --storage."
        )
    if not path.is_file() or path.stat().st_size == 0:
        return None
    lock = optuna.storages.journal.JournalFileOpenLock(str(path))
    lock.acquire()
    try:
        data = path.read_bytes()
        lines = data.split(b"\n")
        tail = lines[-1]  # after the last newline: b"" when the file ends cleanly
        complete = lines[:-1]
        bad_tail = tail != b""
        if complete and not _valid(complete[-1]):
            bad_tail = True
            tail = complete.pop() + (b"\n" + tail if tail else b"")
        for number, line in enumerate(complete, start=1):
            if line and not _valid(line):
                raise TuningError(
                    f"journal {str(path)!r}: record {number} of {len(complete)} is corrupt (not "
                    "an interrupted write at the end). Restore the file from a backup, or start "
                    "a new study with --storage NEW_FILE."
                )
        if not bad_tail:
            return None
        backup = path.with_name(f"{path.name}.broken-{time.strftime('%Y%m%d-%H%M%S')}")
        shutil.copy2(path, backup)
        keep = sum(len(x) + 1 for x in complete)
        with open(path, "r+b") as fh:
            fh.truncate(keep)
            fh.flush()
            os.fsync(fh.fileno())
        logger.warning(
            "journal %s ended with an incomplete record (%d bytes, an interrupted write): backed "
            "up to %s and truncated after the last complete record (%d records kept)",
            path,
            len(tail),
            backup,
            len(complete),
        )
        return backup
    finally:
        lock.release()


class JournalWriteError(MpoError, OSError):
    """An append to a journal file failed (full disk, quota); the journal is unchanged.

    An :class:`OSError` (``errno``, ``filename`` the journal) and an
    :class:`~mpo.errors.MpoError`: ``mpo tune`` prints it as one line.
    """

    def __str__(self) -> str:
        return (
            f"{self.strerror} appending to the tuning journal {self.filename}: free space and "
            "rerun the same command to resume (the records written before are kept)."
        )


def journal_write_error(exc: BaseException) -> JournalWriteError | None:
    """The :class:`JournalWriteError` that ``exc`` is, or came from, if any.

    Optuna turns a storage error during a trial's bookkeeping into an
    ``AssertionError("Should not reach.")`` raised while the storage error
    propagates; the storage error is then the assertion's ``__context__``.
    """
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, JournalWriteError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


class SafeJournalFileBackend(optuna.storages.journal.JournalFileBackend):
    """Optuna's journal file, but a failed append is undone instead of left half-written.

    Records are appended with one ``os.write`` loop and ``fsync`` while holding the
    journal's lock; on an error (``ENOSPC``, ``EDQUOT``, ``EIO``) the file is truncated
    back to its size before the append and an :class:`OSError` naming the journal is
    raised, so the journal stays readable and the next append does not glue onto a
    partial record.
    """

    def append_logs(self, logs: list[dict]) -> None:
        data = ("\n".join(json.dumps(log, separators=(",", ":")) for log in logs) + "\n").encode()
        self._lock.acquire()
        try:
            fd = os.open(self._file_path, os.O_WRONLY | os.O_APPEND)
            try:
                start = os.fstat(fd).st_size
                try:
                    _write_all(fd, data)
                    os.fsync(fd)
                except OSError as exc:
                    with contextlib.suppress(OSError):
                        os.ftruncate(fd, start)
                        os.fsync(fd)
                    raise JournalWriteError(
                        exc.errno, exc.strerror or str(exc), self._file_path
                    ) from exc
            finally:
                os.close(fd)
        finally:
            self._lock.release()


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]

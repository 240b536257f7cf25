"""Durable training runs: progress files, their identity, and the run folder's life cycle.

Every model trained by ``mpo train`` writes ``<kind>-progress.pt`` in the run folder at
the end of every epoch (atomically, :func:`mpo.io.atomic_path` + ``torch.save``): the
:func:`~mpo.learn.fitting.fit` state (model, optimiser, scheduler, the owned generator
and the forked torch RNG, epoch, history, best weights and score, early-stopping
counter) with the run's identity (spec, data fingerprint, seed). A rerun of the same
command continues from the last completed epoch and ends with the same weights; a
rerun with another spec, data or seed is refused naming the field. ``results.json`` is
written last: a folder holding it is a finished run (refused unless ``force``).
"""

from __future__ import annotations

import logging
import pickle
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch

from mpo.errors import CheckpointError
from mpo.io import atomic_path

__all__ = [
    "PROGRESS_VERSION",
    "RunIdentity",
    "clean_leftovers",
    "find_unfinished",
    "load_progress",
    "prepare_run_dir",
    "progress_path",
    "save_progress",
    "saved_identity",
]

logger = logging.getLogger(__name__)

#: Bumped when the progress layout changes; other versions are ignored with a warning.
PROGRESS_VERSION = 1

#: Files ``mpo train`` writes in a run folder (what ``force`` removes).
_OURS = re.compile(r"^(dmpo|two_stage|direct)(-[a-z0-9_]+)?(-progress|-interrupted)?\.pt$")
_LEFTOVER = re.compile(r"^.+-(progress|interrupted)\.pt$|^\..+\.tmp$")


@dataclass(frozen=True)
class RunIdentity:
    """What a resumed run must share with the interrupted one."""

    spec: dict
    fingerprint: str
    seed: int

    def to_dict(self) -> dict:
        return {"spec": self.spec, "fingerprint": self.fingerprint, "seed": int(self.seed)}

    def differences(self, saved: RunIdentity) -> list[str]:
        """Human-readable differences, ``saved`` (on disk) against ``self`` (now)."""
        out = []
        if saved.fingerprint != self.fingerprint:
            out.append(f"data fingerprint: saved {saved.fingerprint}, now {self.fingerprint}")
        if int(saved.seed) != int(self.seed):
            out.append(f"seed: saved {saved.seed}, now {self.seed}")
        a, b = _flatten(saved.spec), _flatten(self.spec)
        for key in sorted(set(a) | set(b)):
            if key == "train.seed" or _same_field(a, b, key):
                continue
            if a.get(key, "<absent>") != b.get(key, "<absent>"):
                out.append(f"spec field {key}: saved {a.get(key, '<absent>')!r}, now "
                           f"{b.get(key, '<absent>')!r}")  # fmt: skip
        return out

    def check(self, saved: RunIdentity, where: Path) -> None:
        """Raise :class:`CheckpointError` naming every field in which ``saved`` differs."""
        diffs = self.differences(saved)
        if diffs:
            raise CheckpointError(
                f"{str(where)!r} belongs to a run with another spec, data or seed; it is not "
                "resumed:\n  - " + "\n  - ".join(diffs) + "\nRerun with the same spec, data "
                "and seed to resume it, or pass --force to start that run folder over."
            )


def _same_field(a: dict, b: dict, key: str) -> bool:
    """A field absent on one side and ``None`` (a new optional field unset) on the other is
    the same setting: adding an optional spec field does not orphan interrupted runs."""
    return (key not in a and b.get(key, 0) is None) or (key not in b and a.get(key, 0) is None)


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(_flatten(value, name + "."))
        else:
            out[name] = list(value) if isinstance(value, tuple) else value
    return out


def progress_path(run_dir: Path, kind: str) -> Path:
    """``run_dir / "<kind>-progress.pt"``."""
    return Path(run_dir) / f"{kind}-progress.pt"


def save_progress(path: Path, kind: str, identity: RunIdentity, state: dict) -> None:
    """Write the training ``state`` of ``kind`` with the run ``identity``, atomically."""
    payload = {"progress_version": PROGRESS_VERSION, "kind": kind, **identity.to_dict(),
               "state": state}  # fmt: skip
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    logger.debug("%s progress (epoch %d) written to %s", kind, state["epoch"], path)


def load_progress(path: Path, kind: str, identity: RunIdentity) -> dict | None:
    """The training state saved in ``path``, ``None`` if absent or unusable.

    An unreadable (truncated, corrupted) file or another layout is logged as a warning
    and ``None`` is returned: training of ``kind`` starts from scratch (the file is
    overwritten at the end of the first epoch).

    Raises
    ------
    CheckpointError
        If the file belongs to a run with another spec, data fingerprint or seed.
    """
    path = Path(path)
    if not path.is_file():
        return None
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile,
            pickle.UnpicklingError) as exc:  # fmt: skip
        first = str(exc).splitlines()[0] if str(exc) else ""
        logger.warning(
            "progress file %s is unreadable (%s: %s); training %s starts from scratch.",
            path, type(exc).__name__, first, kind,
        )  # fmt: skip
        return None
    fields = ("progress_version", "kind", "spec", "fingerprint", "seed", "state")
    if not isinstance(raw, dict) or any(k not in raw for k in fields):
        logger.warning("progress file %s is not an mpo progress file; training %s starts "
                       "from scratch.", path, kind)  # fmt: skip
        return None
    if raw["progress_version"] != PROGRESS_VERSION or raw["kind"] != kind:
        logger.warning("progress file %s has version %s of kind %r (expected %s, %r); "
                       "training %s starts from scratch.", path, raw["progress_version"],
                       raw["kind"], PROGRESS_VERSION, kind, kind)  # fmt: skip
        return None
    identity.check(RunIdentity(raw["spec"], raw["fingerprint"], raw["seed"]), path)
    logger.info("%s resumes from %s (epoch %d done).", kind, path, raw["state"]["epoch"])
    return raw["state"]


def prepare_run_dir(run_dir: Path, *, force: bool = False) -> None:
    """Create ``run_dir``; refuse a finished run in it unless ``force`` (then clear it).

    A folder holding only progress files or some final checkpoints is an interrupted
    run and is kept (resumed). ``force`` removes ``results.json``, ``curves.png`` and
    every checkpoint, progress or interrupt file ``mpo train`` writes, and nothing else.

    Raises
    ------
    CheckpointError
        If ``run_dir`` holds ``results.json`` and ``force`` is false.
    """
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise CheckpointError(f"run folder {str(run_dir)!r} exists and is not a folder.")
    if (run_dir / "results.json").exists() and not force:
        raise CheckpointError(
            f"run folder {str(run_dir)!r} already holds a finished training run "
            "(results.json and its checkpoints); pass --force to overwrite it, or choose "
            "another --run-dir."
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    if force:
        for f in sorted(run_dir.iterdir()):
            if f.is_file() and (f.name in ("results.json", "curves.png")
                                or _OURS.match(f.name) or _LEFTOVER.match(f.name)):  # fmt: skip
                f.unlink()
                logger.info("--force: removed %s", f)


def clean_leftovers(run_dir: Path) -> list[Path]:
    """Remove progress, interrupt and temporary files from ``run_dir`` (after success)."""
    gone = [f for f in Path(run_dir).iterdir() if f.is_file() and _LEFTOVER.match(f.name)]
    for f in gone:
        f.unlink(missing_ok=True)
    return gone


def saved_identity(path: Path) -> RunIdentity | None:
    """The identity stored in a progress file or final checkpoint, ``None`` if unreadable."""
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
        if "state" in raw:  # a progress file
            return RunIdentity(raw["spec"], raw["fingerprint"], int(raw["seed"]))
        return RunIdentity(raw["extra"]["spec"], raw["fingerprint"], int(raw["seed"]))
    except Exception:  # any unreadable file: not this run's
        return None


def find_unfinished(candidates: list[Path], identity: RunIdentity) -> Path | None:
    """The newest of ``candidates`` (run folders) that is unfinished and of ``identity``."""
    for run_dir in sorted(candidates, reverse=True):
        if not run_dir.is_dir() or (run_dir / "results.json").exists():
            continue
        for name in ("dmpo-progress.pt", "dmpo.pt"):
            saved = saved_identity(run_dir / name)
            if saved is not None:
                if not identity.differences(saved):
                    return run_dir
                break
    return None

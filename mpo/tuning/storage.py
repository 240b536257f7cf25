"""Optuna storages of tuning studies: opening them, recovering dead workers' trials,
and refusing to resume a study under another configuration.

A local journal file is the default (no server, safe for several processes);
any SQLAlchemy URL works too (e.g. PostgreSQL for workers on many machines).
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import warnings
from pathlib import Path

import optuna
from optuna.trial import TrialState

from mpo.errors import TuningError
from mpo.tuning.job import TuningJob

__all__ = [
    "FINISHED",
    "check_config",
    "count_trials",
    "leaf_diff",
    "open_storage",
    "pid_alive",
    "recover_stale_trials",
    "redact",
    "study_config",
]

logger = logging.getLogger(__name__)

#: Trial states that count towards a study's target number of trials.
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


def open_storage(storage: str | Path, *, heartbeat: bool = True) -> optuna.storages.BaseStorage:
    """An Optuna storage from a journal file path or an SQLAlchemy URL.

    Parameters
    ----------
    storage
        * a path (any string without ``://``), or ``journal:PATH``: a journal
          file, created if missing; safe for several processes on one machine
          (or a shared file system with working locks);
        * ``sqlite:///file.db``: one worker at a time;
        * ``postgresql://user:pw@host/db`` (or any SQLAlchemy URL): many
          workers, many machines.
    heartbeat
        For RDB storages other than SQLite: fail and retry the trials of dead
        workers by heartbeat.

    Raises
    ------
    TuningError
        When the journal cannot be written, the database driver is missing
        or the server cannot be reached (the message hides the password).
    """
    s = str(storage)
    if "://" not in s:
        path = Path(s.removeprefix("journal:")).expanduser()
        from mpo.tuning.journal import SafeJournalFileBackend, repair_journal

        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            repair_journal(path)
            backend = SafeJournalFileBackend(
                str(path), lock_obj=optuna.storages.journal.JournalFileOpenLock(str(path))
            )
        except OSError as exc:
            raise TuningError(
                f"cannot open the journal storage {str(path)!r}: {exc}. Give a writable path with "
                "--storage."
            ) from None
        return optuna.storages.JournalStorage(backend)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            kwargs: dict = {}
            if heartbeat and not s.startswith("sqlite"):
                kwargs = {
                    "heartbeat_interval": 30,
                    "grace_period": 120,
                    "heartbeat_stale_trial_callback": (
                        optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=2)
                    ),
                }
            return optuna.storages.RDBStorage(
                s, engine_kwargs={"pool_pre_ping": True}, skip_table_creation=False, **kwargs
            )
    except ImportError as exc:
        raise TuningError(
            f"storage URL {redact(s)!r} needs a database driver that is not installed ({exc}); "
            "for PostgreSQL: pip install 'psycopg[binary]'."
        ) from None
    except Exception as exc:  # sqlalchemy errors: unreachable host, bad credentials, bad URL
        raise TuningError(
            f"cannot reach storage {redact(s)!r}: {type(exc).__name__}: "
            f"{scrub(str(exc).splitlines()[0] if str(exc) else '', s)}. Check that the server "
            "is running "
            "and the URL (host, port, user, password, database) is right; for one machine, omit "
            "--storage to use a local journal file."
        ) from None


def scrub(text: str, url: str) -> str:
    """``text`` (e.g. a driver's error) with ``url``'s password, and its pieces, masked.

    A driver may echo part of a badly parsed URL (``failed to resolve host
    'rest-of-password@host'``), so every piece of the password between ``@``,
    ``:`` or ``/`` of 3 or more characters is masked too.
    """
    m = re.search(r"://[^:/@]+:([^/]*)@", str(url))
    if not m or not m.group(1):
        return text
    password = m.group(1)
    pieces = {password, *(p for p in re.split(r"[@:/]", password) if len(p) >= 3)}
    for piece in sorted(pieces, key=len, reverse=True):
        text = text.replace(piece, "***")
    return text


def redact(url: str) -> str:
    """``url`` with its password replaced by ``***`` (``user:***@host``)."""
    # up to the LAST '@' of the authority: a password may itself contain '@'
    return re.sub(r"(://[^:/@]+):[^/]*@", r"\1:***@", str(url))


def count_trials(study: optuna.Study) -> tuple[int, int]:
    """Numbers of finished (completed or pruned) and of failed trials of ``study``."""
    trials = study.get_trials(deepcopy=False)
    return sum(t.state in FINISHED for t in trials), sum(t.state == TrialState.FAIL for t in trials)


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` of this host is alive (a zombie counts as dead)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a killed child not yet reaped is a zombie: dead
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def recover_stale_trials(study: optuna.Study, storage, *, every: bool = False) -> list[int]:
    """Fail the running trials of dead workers on this host and queue their parameters again.

    A worker killed with ``kill -9`` leaves its trial RUNNING forever in a
    journal file; so does a ``tune`` call of this very process that failed (a full
    disk) before it could record the trial's end. Trials of live workers, and of other hosts (whose liveness
    we cannot see; RDB storages fail those by heartbeat), are left alone.

    Returns
    -------
    list of int
        The numbers of the recovered trials.
    """
    host = socket.gethostname()
    study_id = storage.get_study_id_from_name(study.study_name)
    from mpo.tuning.trial import running_here

    recovered = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = t.user_attrs.get("worker", "")
        if not every and not _abandoned(worker, study.study_name, t.number, host, running_here):
            continue
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, t.number)
        storage.set_trial_user_attr(trial_id, "fail_reason", f"worker {worker} died")
        storage.set_trial_state_values(trial_id, TrialState.FAIL)
        if t.params:
            study.enqueue_trial(t.params, user_attrs={"retry_of": t.number})
        recovered.append(t.number)
        logger.warning(
            "trial %d of study %r was left running by dead worker %s: marked failed, its "
            "parameters are queued again",
            t.number,
            study.study_name,
            worker,
        )
    return recovered


def _abandoned(worker: str, study_name: str, number: int, host: str, running_here) -> bool:
    """Whether trial ``number``'s ``worker`` (``host:pid``) is a dead process of this host,
    or this process no longer evaluating it."""
    w_host, _, pid = worker.rpartition(":")
    if w_host != host or not pid.isdigit():
        return False
    if int(pid) == os.getpid():
        return not running_here(study_name, number)
    return not pid_alive(int(pid))


def study_config(job: TuningJob, objective_settings: dict | None = None) -> dict:
    """The settings a study must keep to be resumed (spec, search space, windows, data).

    ``objective_settings`` are the ``[tuning]`` fields the objective reads
    (:meth:`mpo.tuning.objective.TuningObjective.settings`), e.g. ``risk_cap``.
    """
    spec = job.spec.model_dump()
    spec.pop("tuning")
    spec.pop("description", None)
    return {
        "spec": spec,
        "search_space": {k: v.model_dump() for k, v in job.spec.tuning.params.items()},
        "objective": job.objective,
        "risk_cap": None,
        **(objective_settings or {}),
        "windows": job.windows.describe(),
        "train_data_fingerprint": job.market.fingerprint(),
        "prune": job.prune,
        "sub_periods": job.sub_periods,
    }


def check_config(study: optuna.Study, config: dict) -> None:
    """Record ``config`` in a new study; refuse to resume one created with another.

    Raises
    ------
    TuningError
        Listing the differing settings (``windows.train: study has ..., now ...``).
    """
    old = study.user_attrs.get("mpo_config")
    if old is None:
        study.set_user_attr("mpo_config", json.loads(json.dumps(config, default=str)))
        return
    new = json.loads(json.dumps(config, default=str))
    diff = leaf_diff(old, new)
    if diff:
        shown = "; ".join(diff[:8]) + (f"; and {len(diff) - 8} more" if len(diff) > 8 else "")
        raise TuningError(
            f"study {study.study_name!r} was created with a different configuration ({shown}). "
            "Resume it with the original settings, or start a new study with --study NAME."
        )


def leaf_diff(old, new, prefix: str = "") -> list[str]:
    """``'a.b: study has X, now Y'`` for every differing leaf of two JSON-like dicts."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for k in sorted(set(old) | set(new), key=str):
            out += leaf_diff(old.get(k), new.get(k), f"{prefix}{k}.")
        return out
    if old != new:
        return [f"{prefix.rstrip('.')}: study has {old!r}, now {new!r}"]
    return []

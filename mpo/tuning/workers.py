"""Running a study's trials: samplers, pruners, stop rule and worker processes.

With one worker and no timeout, trials run in this process; otherwise every
worker is a spawned process sharing the study through its storage.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import time
import warnings

import optuna
from optuna.trial import TrialState
from tqdm.auto import tqdm

from mpo.tuning.job import TuningJob
from mpo.tuning.journal import journal_write_error
from mpo.tuning.objective import get_objective
from mpo.tuning.sampler import ProgressSeededSampler
from mpo.tuning.storage import FINISHED, count_trials, open_storage, recover_stale_trials
from mpo.tuning.trial import TrialFailure, TrialRunner

__all__ = ["StopAt", "make_pruner", "make_sampler", "run_workers", "work"]

logger = logging.getLogger(__name__)


def make_sampler(job: TuningJob, worker: int) -> optuna.samplers.BaseSampler:
    """A TPE sampler for ``worker``, told of the objective's constraints, seeded per trial.

    Every trial's draw is seeded by (run seed, worker, finished trials)
    (:class:`~mpo.tuning.sampler.ProgressSeededSampler`): a resumed study samples
    what an uninterrupted one would have, and parallel workers never share a stream.
    """
    kwargs = {}
    objective = get_objective(job.objective)
    if objective.constrained:
        tuning = job.spec.tuning
        kwargs["constraints_func"] = lambda t: objective.constraints(t.user_attrs, tuning)
    n_startup = min(10, max(job.n_trials // 3, 1))

    def tpe(seed: int) -> optuna.samplers.BaseSampler:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.samplers.TPESampler(seed=seed, n_startup_trials=n_startup, **kwargs)

    return ProgressSeededSampler(tpe, job.seed, worker)


def make_pruner(job: TuningJob) -> optuna.pruners.BasePruner:
    """Median pruning at the sub-period checkpoints, or none."""
    if not job.prune:
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(n_startup_trials=8, n_warmup_steps=0)


class StopAt:
    """Stops a worker once the study has ``n`` finished trials (or ``max(n, 5)`` failures)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __call__(self, study: optuna.Study, trial) -> None:
        trials = study.get_trials(deepcopy=False, states=(*FINISHED, TrialState.FAIL))
        done = sum(t.state in FINISHED for t in trials)
        failed = len(trials) - done
        if done >= self.n or failed >= max(self.n, 5):
            study.stop()


def _load(job: TuningJob, storage, worker: int) -> optuna.Study:
    return optuna.load_study(
        study_name=job.study_name,
        storage=storage,
        sampler=make_sampler(job, worker),
        pruner=make_pruner(job),
    )


def _exit_with_parent(poll: float = 1.0) -> None:
    """Make this worker process exit soon after its parent dies (even by ``kill -9``).

    A daemon thread polls the parent pid; when the process was re-parented (the
    parent is gone) it exits at once. The trial it was running stays RUNNING in
    the storage and is recovered (failed and re-queued) by the next ``mpo tune``.
    """
    import threading

    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(poll)
            if os.getppid() != parent:
                logger.warning("worker %d: parent %d is gone; exiting", os.getpid(), parent)
                os._exit(3)

    threading.Thread(target=watch, name="mpo-parent-watch", daemon=True).start()


def work(job: TuningJob, worker: int) -> None:
    """Body of one worker (a separate process when ``workers > 1``)."""
    _exit_with_parent()
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = _load(job, open_storage(job.storage), worker)
    if count_trials(study)[0] >= job.n_trials:
        return
    try:
        _optimize(study, job, [StopAt(job.n_trials)])
    except OSError as exc:  # the journal's disk is full: one line, not a worker traceback
        logger.error("worker %d stops: %s", worker, exc)
        raise SystemExit(2) from None


class _FailureWithoutTraceback(logging.Filter):
    """Optuna logs a failed trial with its traceback; a :class:`TrialFailure` (a named solver
    failure, an infeasible policy) is one line: optuna's message names it, no stack."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, TrialFailure):  # optuna's message already holds repr(exc)
            record.exc_info, record.exc_text = None, None
        return True


_OPTUNA_TRIALS = logging.getLogger("optuna.study._optimize")
if not any(isinstance(f, _FailureWithoutTraceback) for f in _OPTUNA_TRIALS.filters):
    _OPTUNA_TRIALS.addFilter(_FailureWithoutTraceback())


def _optimize(study: optuna.Study, job: TuningJob, callbacks: list) -> None:
    """``study.optimize`` with TrialRunner; a failed journal write is raised as itself.

    Optuna reports a storage error in a trial's bookkeeping as ``AssertionError("Should
    not reach.")``; the :class:`~mpo.tuning.journal.JournalWriteError` (an ``OSError``
    naming the journal) behind it is raised instead.
    """
    try:
        study.optimize(TrialRunner(job), catch=(TrialFailure,), callbacks=callbacks)
    except Exception as exc:
        cause = journal_write_error(exc)
        if cause is None or cause is exc:
            raise
        raise cause from None


def run_workers(job: TuningJob, workers: int, progress: bool, timeout: float | None) -> None:
    """Run trials until the study has ``job.n_trials`` finished ones (or ``timeout`` seconds).

    Worker processes left behind by a timeout are terminated and their
    running trials recovered (:func:`recover_stale_trials`).
    """
    storage = open_storage(job.storage)
    study = optuna.load_study(study_name=job.study_name, storage=storage)
    done0, _ = count_trials(study)
    bar = tqdm(
        total=job.n_trials, initial=min(done0, job.n_trials), desc="trials", disable=not progress
    )
    try:
        if workers == 1 and timeout is None:
            study = _load(job, storage, 0)

            def tick(study, trial):
                bar.update(count_trials(study)[0] - bar.n)

            _optimize(study, job, [StopAt(job.n_trials), tick])
            return
        _run_processes(job, workers, study, storage, bar, timeout)
    finally:
        bar.close()


def _run_processes(job: TuningJob, workers: int, study, storage, bar, timeout) -> None:
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=work, args=(job, i), daemon=True) for i in range(workers)]
    for p in procs:
        p.start()
    start = time.monotonic()
    try:
        while any(p.is_alive() for p in procs):
            time.sleep(0.5)
            bar.update(min(count_trials(study)[0], job.n_trials) - bar.n)
            if timeout is not None and time.monotonic() - start > timeout:
                logger.warning("timeout of %.0f s reached; stopping the workers", timeout)
                break
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
            p.join()
        recover_stale_trials(study, storage)
    codes = [p.exitcode for p in procs]
    if any(c not in (0, None, -15) for c in codes):
        logger.warning("worker exit codes: %s", codes)

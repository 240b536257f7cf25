"""``mpo walkforward`` on a local cluster killed with SIGKILL at a seeded random point (the
driver and its local workers, as a crash of the machine's job would): the rerun of the same
command skips what was finished and ends bit-identical to an uninterrupted run.

tests/test_walkforward_dask.py kills the driver alone at one chosen point (after the first
fit) on a real scheduler; this test draws the kill point from the whole run.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
from _faults import ENV, mpo, rng, run, timed_run
from test_walkforward_dask import N_TEST, OPTIONS, POLICIES, SPEC, _folds


def _command(spec: Path, out: Path) -> list[str]:
    return mpo("walkforward", spec, *OPTIONS, "--workers", 1, "--out", out, "--no-progress")


class Killed(BaseException):
    """Stands for SIGKILL in-process: escapes Optuna without recording the trial's end."""


def test_an_interrupted_fold_study_is_resumed_and_keeps_its_finished_trials(tmp_path, monkeypatch):
    """A tuning task killed in its second trial: the rerun keeps trial 0, runs the trial
    left running again, and its result equals an uninterrupted task's."""
    import optuna
    from optuna.trial import TrialState
    from test_walkforward import tuned_spo

    from mpo.data.synthetic import make_synthetic
    from mpo.research import make_folds
    from mpo.research.tasks import FitTask, run_fit
    from mpo.tuning import TrialRunner, open_storage

    market = make_synthetic(n_assets=4, n_periods=420, seed=3)
    fold = make_folds(market.calendar, train="80d", test="60d", purge=6, history=40)[0]

    def task(root: Path) -> FitTask:
        return FitTask(universe="main", spec=tuned_spo(), fold=fold, root=str(root),
                       fingerprint=market.fingerprint(), storage=str(root / "s.journal"),
                       trials=2, seed=0)  # fmt: skip

    whole = run_fit(task(tmp_path / "whole"), market)
    real, calls = TrialRunner.evaluate, []

    def evaluate(self, params, trial=None):
        calls.append(params)
        if len(calls) == 2:
            raise Killed
        return real(self, params, trial)

    killed = task(tmp_path / "killed")
    with monkeypatch.context() as m, pytest.raises(Killed):
        m.setattr(TrialRunner, "evaluate", evaluate)
        run_fit(killed, market)
    store = open_storage(killed.storage)
    study = optuna.load_study(study_name=killed.study_name, storage=store)
    (first,) = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(study.get_trials(states=(TrialState.RUNNING,))) == 1

    resumed = run_fit(killed, market)
    study = optuna.load_study(study_name=killed.study_name, storage=store)
    kept = study.trials[first.number]
    assert kept.state == TrialState.COMPLETE and kept.value == first.value
    assert kept.datetime_start == first.datetime_start  # the same trial: kept, not rerun
    strip = lambda f: {k: v for k, v in f.items() if k not in ("identity", "study")}  # noqa: E731
    assert strip(resumed) == strip(whole)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[Path, Path, float]:
    folder = tmp_path_factory.mktemp("walkforward")
    spec = folder / "spo.toml"
    spec.write_text(SPEC)
    seconds = timed_run(_command(spec, folder / "whole"), timeout=600)
    return spec, folder / "whole", seconds


def _kill_group_after(cmd: list[str], delay: float) -> None:
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)  # fmt: skip
    end = time.monotonic() + delay
    while proc.poll() is None and time.monotonic() < end:
        time.sleep(0.01)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(3))
def test_walkforward_killed_at_a_random_point_resumes_bit_identically(reference, tmp_path, seed):
    spec, whole, seconds = reference
    killed = tmp_path / "killed"
    _kill_group_after(_command(spec, killed), rng(seed).uniform(2.0, seconds))
    run(_command(spec, killed), timeout=600)
    for policy in POLICIES:
        for name in ("returns", "weights"):
            a = pd.read_parquet(killed / policy / f"{name}.parquet")
            b = pd.read_parquet(whole / policy / f"{name}.parquet")
            assert len(a) == N_TEST and a.equals(b), (policy, name)
    assert _folds(killed).equals(_folds(whole))
    sa, sb = (json.loads((r / "summary.json").read_text()) for r in (killed, whole))
    assert sa["universes"] == sb["universes"] and sa["trials"] == sb["trials"]

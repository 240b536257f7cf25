"""Processes of a tuning run: no overshoot of the trial target, no orphan workers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from test_tuning import TEST, TRAIN, _write_kill_spec, tiny_spec

from mpo.tuning import TrialFailure, open_storage, resolve_windows, tune
from mpo.tuning.job import TuningJob
from mpo.tuning.trial import TrialRunner


def test_a_trial_beyond_the_target_is_refused_unevaluated(market, tmp_path):
    storage = str(tmp_path / "s.journal")
    spec = tiny_spec(prune=False)
    tune(spec, market, trials=2, train=TRAIN, test=TEST, storage=storage, study_name="s",
         evaluate=False, progress=False)  # fmt: skip
    windows = resolve_windows(spec, market, train=TRAIN, test=TEST)
    job = TuningJob(spec=spec, market=market.slice(end=windows.train_end), windows=windows,
                    objective="sharpe", storage=storage, study_name="s", n_trials=2, seed=0,
                    prune=False, sub_periods=1)  # fmt: skip
    study = optuna.load_study(study_name="s", storage=open_storage(storage))
    trial = study.ask()  # e.g. a second `mpo tune` starting a trial at the same moment
    with pytest.raises(TrialFailure, match="surplus"):
        TrialRunner(job)(trial)
    assert trial.user_attrs["surplus"] is True


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_workers_exit_when_the_parent_is_killed(tmp_path):
    spec_path = _write_kill_spec(tmp_path)
    storage = str(tmp_path / "k.journal")
    cmd = [sys.executable, "-m", "mpo", "tune", str(spec_path), "--trials", "40", "--workers",
           "2", "--storage", storage, "--study", "k", "--out", str(tmp_path / "runs"),
           "--no-progress"]  # fmt: skip
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    workers: set[int] = set()
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and len(workers) < 2:
            time.sleep(0.5)
            if proc.poll() is not None:
                pytest.fail(f"tune exited early: {proc.stderr.read().decode()[-2000:]}")
            if not Path(storage).exists():
                continue
            try:
                study = optuna.load_study(study_name="k", storage=open_storage(storage))
            except KeyError:
                continue
            for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
                pid = t.user_attrs.get("worker", "").rpartition(":")[2]
                if pid.isdigit():
                    workers.add(int(pid))
        assert len(workers) == 2, "two workers should be running trials"
        os.kill(proc.pid, signal.SIGKILL)  # kill -9 of the parent only
        proc.wait()
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and any(_alive(p) for p in workers):
            time.sleep(0.2)
        assert not any(_alive(p) for p in workers), "orphan workers kept running"
    finally:
        proc.kill()
        for pid in workers:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)

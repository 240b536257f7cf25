"""``mpo tune`` killed with SIGKILL at a seeded random point after a finished trial: every
finished trial survives, the rerun reaches exactly ``--trials``, and its finished trials,
winner and test-window results equal an uninterrupted run's (same seed).

Why bit-identical: every trial's draw is seeded by the finished trials before it
(:class:`mpo.tuning.sampler.ProgressSeededSampler`), and the trial running at the kill is
failed and its parameters queued again, so the resumed study evaluates the same points
in the same order; only the failed trial (and its number) is extra.
"""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from _faults import invoke, kill_when, rng
from _tune import SAME, completed, finished, reference, spec_copy, summary, tune_command
from optuna.trial import TrialState

from mpo.tuning import open_storage


def _kill_and_resume(specs, uninterrupted, folder: Path, trials: int, seed: int) -> None:
    want_trials, want, _ = uninterrupted
    r = rng(seed)
    after = r.randint(1, trials - 1)  # finished trials before the kill point
    cmd = tune_command(spec_copy(specs, folder), folder, trials)
    journal = folder / "s.journal"
    killed = kill_when(cmd, lambda: completed(journal) >= after, r.uniform(0.0, 2.0))
    before = finished(folder)
    if killed:
        assert after <= len(before) <= trials
        assert not list((folder / "runs").glob("*-tune-spo/tuning.json"))
    # the finished trials before the kill are the uninterrupted run's first ones
    assert before == want_trials[: len(before)]

    invoke(cmd)  # the same command again
    study = optuna.load_study(study_name="s", storage=open_storage(journal))
    done = study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))
    assert len(done) == trials  # exactly --trials: never exceeded
    assert not study.get_trials(states=(TrialState.RUNNING,))
    got = finished(folder)
    assert got[: len(before)] == before  # nothing finished was lost or rerun
    assert got == want_trials  # the same trials as the uninterrupted run
    got_summary = summary(folder)
    for key in SAME:
        assert got_summary[key] == want[key], key
    assert got_summary["test_metrics"] == want["test_metrics"]


def test_tune_killed_after_a_trial_resumes_to_the_uninterrupted_result(
    specs, tune_reference, tmp_path
):
    _kill_and_resume(specs, tune_reference, tmp_path, trials=3, seed=0)


@pytest.fixture(scope="module")
def reference6(specs, tmp_path_factory):
    return reference(specs, tmp_path_factory.mktemp("tune-ref6"), 6)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(6))
def test_tune_killed_at_random_points(specs, reference6, tmp_path, seed):
    _kill_and_resume(specs, reference6, tmp_path, trials=6, seed=seed)

"""``mpo compare`` killed with SIGKILL at a seeded random point: whatever the killed run left
is complete and equal to an uninterrupted run's files, earlier run folders are untouched,
and a rerun writes a new folder identical to the uninterrupted run's."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from _faults import (
    check_partial,
    check_same,
    invoke,
    kill_when,
    mpo,
    rng,
    run,
    snapshot,
    timed_run,
)

#: The default run's short variant: one policy beside Hold, no report.
SHORT = ("backtest", "{spo}", "--no-report", "--backtest-start", "2017-07-03")
#: The slow loop's: two policies beside Hold, with the HTML report.
LONG = ("compare", "{spo}", "{equal_weight}")


def _command(specs: dict[str, Path], out: Path, args=SHORT) -> list[str]:
    args = [a.format(**specs) for a in args]
    return mpo(*args, "--out", out, "--no-progress")


@pytest.fixture(scope="module")
def short_reference(specs, tmp_path_factory) -> tuple[Path, float]:
    """An uninterrupted short run's folder (run in this process: no start-up time)."""
    out = tmp_path_factory.mktemp("backtest-short")
    invoke(_command(specs, out))
    (run_dir,) = out.iterdir()
    return run_dir, 0.0


@pytest.fixture(scope="module")
def reference(specs, tmp_path_factory) -> tuple[Path, float]:
    """An uninterrupted long run's folder and how long the command took."""
    out = tmp_path_factory.mktemp("backtest-reference")
    seconds = timed_run(_command(specs, out, LONG))
    (run_dir,) = out.iterdir()
    return run_dir, seconds


def _kill_and_rerun(specs, reference, tmp_path: Path, seed: int, mode: str, args=LONG) -> None:
    ref_dir, seconds = reference
    r = rng(seed)
    out = tmp_path / "runs"
    earlier = out / "20000101-000000-earlier"
    shutil.copytree(ref_dir, earlier)
    before = snapshot(earlier)
    cmd = _command(specs, out, args)
    if mode == "anytime":  # from the start of the process to its expected end
        kill_when(cmd, lambda: True, r.uniform(0.0, seconds))
    else:  # while the results are saved: the run folder exists
        kill_when(cmd, lambda: len(list(out.iterdir())) > 1, r.uniform(0.0, 0.6))
    assert snapshot(earlier) == before, "an earlier run folder was touched"
    killed = [d for d in out.iterdir() if d != earlier]
    assert len(killed) <= 1
    for folder in killed:  # every file there is complete and equals the reference's
        check_partial(ref_dir, folder)

    (run if args is LONG else invoke)(cmd)  # the same command again
    (rerun,) = [d for d in out.iterdir() if d != earlier and d not in killed]
    check_same(ref_dir, rerun)
    assert snapshot(earlier) == before
    for folder in killed:  # the rerun never reuses (or writes into) the killed run's folder
        check_partial(ref_dir, folder)


def test_backtest_killed_while_saving_loses_nothing_and_reruns_identically(
    specs, short_reference, tmp_path
):
    _kill_and_rerun(specs, short_reference, tmp_path, seed=3, mode="saving", args=SHORT)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("mode", ["anytime", "saving"])
def test_backtest_killed_at_random_points(specs, reference, tmp_path, seed, mode):
    _kill_and_rerun(specs, reference, tmp_path, seed=seed, mode=mode)

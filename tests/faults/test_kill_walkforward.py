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

pytestmark = pytest.mark.slow


def _command(spec: Path, out: Path) -> list[str]:
    return mpo("walkforward", spec, *OPTIONS, "--workers", 1, "--out", out, "--no-progress")


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

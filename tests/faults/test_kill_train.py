"""``mpo train`` killed with SIGKILL at a seeded random epoch (any of the 3 + 2 + 1 epochs of
the three models, at a random moment inside it): the rerun of the same command resumes
and ends with the uninterrupted run's weights, metrics and histories."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from _faults import invoke, kill_when, mpo, rng

from mpo.learn.checkpoint import load_checkpoint

KINDS = ("dmpo", "two_stage", "direct")
EPOCHS = 3 + 2 + 1  # [train] epochs, two_stage_epochs, direct_epochs of the spec


def _command(spec: Path, run_dir: Path) -> list[str]:
    return mpo("train", spec, "--run-dir", run_dir, "--no-progress")


@pytest.fixture(scope="module")
def reference(specs, tmp_path_factory) -> Path:
    torch.set_num_threads(1)
    run_dir = tmp_path_factory.mktemp("train-reference") / "run"
    invoke(_command(specs["train"], run_dir))
    return run_dir


class _Writes:
    """Counts progress-file writes seen by polling their modification times."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir, self.seen = run_dir, set()

    def __call__(self) -> int:
        for p in self.run_dir.glob("*-progress.pt"):
            try:
                self.seen.add((p.name, p.stat().st_mtime_ns))
            except FileNotFoundError:  # renamed or removed meanwhile
                pass
        return len(self.seen)


def _strip(history: dict) -> dict:
    return {m: [{k: v for k, v in e.items() if k != "seconds"} for e in es]
            for m, es in history.items()}  # fmt: skip


def _assert_same(reference: Path, run_dir: Path) -> None:
    for kind in KINDS:
        a = load_checkpoint(reference / f"{kind}.pt").state_dict
        b = load_checkpoint(run_dir / f"{kind}.pt").state_dict
        assert a.keys() == b.keys(), kind
        for k in a:
            np.testing.assert_array_equal(b[k].numpy(), a[k].numpy(), err_msg=f"{kind}.{k}")
    ra, rb = (json.loads((d / "results.json").read_text()) for d in (reference, run_dir))
    assert rb["metrics"] == ra["metrics"]
    assert _strip(rb["history"]) == _strip(ra["history"])
    names = {p.name for p in run_dir.iterdir()}
    assert not [n for n in names if n.endswith(("-progress.pt", "-interrupted.pt", ".tmp"))]


def _kill_and_resume(specs, reference: Path, tmp_path: Path, seed: int) -> None:
    r = rng(seed)
    epoch = r.randint(0, EPOCHS - 1)  # progress writes before the kill
    run_dir = tmp_path / "run"
    cmd = _command(specs["train"], run_dir)
    writes = _Writes(run_dir)
    kill_when(cmd, lambda: writes() >= epoch, r.uniform(0.0, 0.4))
    assert not (run_dir / "results.json").exists() or writes() >= EPOCHS
    invoke(cmd)  # the same command again
    _assert_same(reference, run_dir)


@pytest.mark.slow  # the default run has tests/learn/test_resume.py's real SIGKILL
def test_train_killed_at_a_random_epoch_resumes_to_the_same_weights(specs, reference, tmp_path):
    _kill_and_resume(specs, reference, tmp_path, seed=2)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(8))
def test_train_killed_at_random_epochs(specs, reference, tmp_path, seed):
    _kill_and_resume(specs, reference, tmp_path, seed=seed)


def test_an_optional_spec_field_added_since_the_kill_does_not_orphan_the_run():
    """A spec field added to mpo after the kill (absent in the progress file, ``None`` now) is
    the same setting; a field set to a value still refuses the resume."""
    from mpo.learn.progress import RunIdentity

    saved = RunIdentity({"data": {"n_assets": 4}}, "abc", 0)
    assert RunIdentity({"data": {"n_assets": 4, "new": None}}, "abc", 0).differences(saved) == []
    assert RunIdentity({"data": {"n_assets": 4, "new": 2}}, "abc", 0).differences(saved) == [
        "spec field data.new: saved '<absent>', now 2"
    ]

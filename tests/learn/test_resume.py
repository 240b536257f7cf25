"""Durable training (issue 15): progress files at every epoch, resume after a kill with the
same final weights, corrupted progress files, changed specs, finished run folders."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import _helpers  # noqa: F401  (one torch thread)
import numpy as np
import pytest
import torch
import typer
from _helpers import tiny_data, tiny_spec
from cli_helpers import subcommand_app
from typer.testing import CliRunner

import mpo.learn.progress as progress_mod
from mpo.learn.checkpoint import load_checkpoint
from mpo.learn.cli import register
from mpo.learn.progress import RunIdentity, load_progress, progress_path, save_progress
from mpo.learn.train import train_dmpo

runner = CliRunner()
KINDS = ("dmpo", "two_stage", "direct")

SPEC = """
name = "tiny"
[data]
source = "synthetic"
n_assets = 4
n_periods = 300
predictability = 0.5
[features]
window = 5
[split]
val = 0.2
test = 0.2
[encoder]
hidden = 8
rank = 2
mu_scale = 0.01
[qp]
delta = 0.2
w_max = 0.6
[train]
epochs = 2
batch_size = 32
max_batches = 2
patience = 5
[baselines]
two_stage_epochs = 2
direct_epochs = 1
lw_lookback = 60
"""


class Killed(Exception):
    """Stands for SIGKILL in-process: raised right after a progress file is written."""


def _app() -> typer.Typer:
    return subcommand_app(register)


def _train(spec: Path, *args: str):
    return runner.invoke(_app(), ["train", str(spec), "--no-progress", *args])


def _kill_after(monkeypatch, n_writes: int) -> None:
    """Make the ``n_writes``-th progress write 'kill' the process once the file is on disk."""
    real, count = progress_mod.save_progress, [0]

    def save(*args, **kwargs):
        real(*args, **kwargs)
        count[0] += 1
        if count[0] == n_writes:
            raise Killed(f"killed after progress write {n_writes}")

    monkeypatch.setattr(progress_mod, "save_progress", save)


def _assert_same_models(a: Path, b: Path) -> None:
    for kind in KINDS:
        sa, sb = (
            load_checkpoint(a / f"{kind}.pt").state_dict,
            load_checkpoint(b / f"{kind}.pt").state_dict,
        )
        assert sa.keys() == sb.keys(), kind
        for k in sa:
            np.testing.assert_allclose(
                sb[k].numpy(), sa[k].numpy(), rtol=0, atol=1e-12, err_msg=f"{kind}.{k}"
            )
    ra, rb = (json.loads((d / "results.json").read_text()) for d in (a, b))
    assert ra["metrics"] == rb["metrics"]

    def strip(h: dict) -> dict:  # the same histories but for the timings
        return {
            m: [{k: v for k, v in e.items() if k != "seconds"} for e in es] for m, es in h.items()
        }

    assert strip(ra["history"]) == strip(rb["history"])


def _assert_clean(run_dir: Path) -> None:
    names = sorted(f.name for f in run_dir.iterdir())
    assert not [n for n in names if n.endswith(("-progress.pt", "-interrupted.pt", ".tmp"))], names
    assert {"dmpo.pt", "two_stage.pt", "direct.pt", "results.json", "curves.png"} <= set(names)


@pytest.fixture(scope="module")
def spec_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("spec") / "tiny.toml"
    path.write_text(SPEC)
    return path


@pytest.fixture(scope="module")
def reference(spec_file, tmp_path_factory) -> Path:
    """An uninterrupted run of the spec (seed from the spec)."""
    run_dir = tmp_path_factory.mktemp("ref") / "run"
    result = _train(spec_file, "--run-dir", str(run_dir))
    assert result.exit_code == 0, result.output
    _assert_clean(run_dir)
    return run_dir


def test_fit_killed_after_epoch_k_resumes_to_the_same_weights(tmp_path):
    spec = tiny_spec(train={"epochs": 3, "patience": 10})
    ds, (train, val, _) = tiny_data(spec)
    identity = RunIdentity(spec.model_dump(), ds.fingerprint, spec.train.seed)
    path = progress_path(tmp_path, "dmpo")
    full = train_dmpo(spec, ds, train, val, progress=False)

    def kill(epoch, log):
        if epoch == 1:
            raise Killed

    with pytest.raises(Killed):
        train_dmpo(spec, ds, train, val, progress=False, on_epoch_end=kill,
                   checkpoint=lambda st: save_progress(path, "dmpo", identity, st))  # fmt: skip
    state = load_progress(path, "dmpo", identity)
    assert state["epoch"] == 2 and len(state["history"]) == 2
    resumed = train_dmpo(spec, ds, train, val, progress=False, resume=state)
    for k, v in full.model.state_dict().items():
        np.testing.assert_allclose(
            resumed.model.state_dict()[k].numpy(), v.numpy(), rtol=0, atol=1e-12
        )
    assert [h["loss"] for h in resumed.fit.history] == [h["loss"] for h in full.fit.history]
    assert resumed.fit.best_epoch == full.fit.best_epoch


@pytest.mark.parametrize("n_writes", [1, 3, 5])  # mid-DMPO, mid-two-stage, after direct
def test_mpo_train_killed_at_any_epoch_resumes_to_the_same_run(
    spec_file, reference, tmp_path, monkeypatch, n_writes
):
    out = tmp_path / "runs"
    with monkeypatch.context() as m:
        _kill_after(m, n_writes)
        killed = _train(spec_file, "--out", str(out))
    assert isinstance(killed.exception, Killed), killed.output
    (run_dir,) = out.iterdir()
    assert not (run_dir / "results.json").exists()
    assert any(f.name.endswith("-progress.pt") for f in run_dir.iterdir())
    again = _train(spec_file, "--out", str(out))  # the same command
    assert again.exit_code == 0, again.output
    assert "resuming the interrupted run" in again.output
    assert [run_dir] == list(out.iterdir())
    _assert_clean(run_dir)
    _assert_same_models(reference, run_dir)


def test_sigkill_of_a_real_process_loses_no_epoch(spec_file, reference, tmp_path):
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "mpo", "train", str(spec_file), "--run-dir", str(run_dir),
           "--no-progress"]  # fmt: skip
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not (run_dir / "dmpo-progress.pt").exists() and proc.poll() is None:
        assert time.monotonic() < deadline, "no progress file appeared"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    result = _train(spec_file, "--run-dir", str(run_dir))
    assert result.exit_code == 0, result.output
    _assert_clean(run_dir)
    _assert_same_models(reference, run_dir)


@pytest.mark.parametrize("cut", [0, 1, 37, 0.5, -1])
def test_a_truncated_progress_file_is_a_warning_and_training_restarts(tmp_path, caplog, cut):
    path = tmp_path / "dmpo-progress.pt"
    identity = RunIdentity({"train": {"seed": 0}}, "abc", 0)
    save_progress(path, "dmpo", identity, {"epoch": 1, "w": torch.arange(1000.0)})
    data = path.read_bytes()
    offset = int(cut * len(data)) if isinstance(cut, float) else cut % len(data)
    path.write_bytes(data[:offset])
    with caplog.at_level(logging.WARNING, logger="mpo.learn.progress"):
        assert load_progress(path, "dmpo", identity) is None
    assert "unreadable" in caplog.text and "starts from scratch" in caplog.text


def test_mpo_train_over_a_corrupted_progress_file_warns_and_ends_the_same(
    spec_file, reference, tmp_path, monkeypatch, caplog
):
    run_dir = tmp_path / "run"
    with monkeypatch.context() as m:
        _kill_after(m, 2)
        assert isinstance(_train(spec_file, "--run-dir", str(run_dir)).exception, Killed)
    path = run_dir / "dmpo-progress.pt"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])
    with caplog.at_level(logging.WARNING, logger="mpo.learn.progress"):
        result = _train(spec_file, "--run-dir", str(run_dir))
    assert result.exit_code == 0, result.output
    assert "dmpo-progress.pt is unreadable" in caplog.text
    _assert_clean(run_dir)
    _assert_same_models(reference, run_dir)


@pytest.mark.parametrize(
    ("args", "field"), [(["--epochs", "3"], "spec field train.epochs"), (["--seed", "4"], "seed")]
)
def test_resuming_with_another_spec_or_seed_is_refused_naming_the_field(
    spec_file, tmp_path, monkeypatch, args, field
):
    run_dir = tmp_path / "run"
    with monkeypatch.context() as m:
        _kill_after(m, 1)
        assert isinstance(_train(spec_file, "--run-dir", str(run_dir)).exception, Killed)
    result = _train(spec_file, "--run-dir", str(run_dir), *args)
    assert result.exit_code == 2, result.output
    assert field in result.output and "dmpo-progress.pt" in result.output
    assert "Traceback" not in result.output
    assert (run_dir / "dmpo-progress.pt").exists()  # nothing was overwritten


def test_a_finished_run_dir_is_refused_and_force_leaves_no_stale_file(
    spec_file, reference, tmp_path
):
    run_dir = tmp_path / "run"
    shutil.copytree(reference, run_dir)
    before = (run_dir / "results.json").read_bytes()
    refused = _train(spec_file, "--run-dir", str(run_dir))
    assert refused.exit_code == 2
    assert str(run_dir) in refused.output and "--force" in refused.output
    assert (run_dir / "results.json").read_bytes() == before
    # stale files of another run: a remedy checkpoint, a progress file; and a user's file
    shutil.copy(run_dir / "dmpo.pt", run_dir / "dmpo-l1_penalty.pt")
    (run_dir / "two_stage-progress.pt").write_bytes(b"junk")
    (run_dir / "notes.txt").write_text("mine")
    forced = _train(spec_file, "--run-dir", str(run_dir), "--force", "--epochs", "1")
    assert forced.exit_code == 0, forced.output
    names = {f.name for f in run_dir.iterdir()}
    assert names == {"dmpo.pt", "two_stage.pt", "direct.pt", "results.json", "curves.png",
                     "notes.txt"}  # fmt: skip
    res = json.loads((run_dir / "results.json").read_text())
    assert res["spec"]["train"]["epochs"] == 1 and len(res["history"]["dmpo"]) == 1
    assert load_checkpoint(run_dir / "dmpo.pt").extra["spec"]["train"]["epochs"] == 1


def test_finished_models_of_an_interrupted_run_are_not_retrained(
    spec_file, reference, tmp_path, monkeypatch
):
    run_dir = tmp_path / "run"
    shutil.copytree(reference, run_dir)
    (run_dir / "results.json").unlink()  # killed during the evaluation
    calls = []
    with monkeypatch.context() as m:
        real = progress_mod.save_progress
        m.setattr(
            progress_mod, "save_progress", lambda *a, **k: (calls.append(a[1]), real(*a, **k))
        )
        result = _train(spec_file, "--run-dir", str(run_dir))
    assert result.exit_code == 0, result.output
    assert calls == []  # no epoch trained
    _assert_same_models(reference, run_dir)


def test_ctrl_c_says_how_to_resume_and_resume_names_the_folder(
    spec_file, reference, tmp_path, monkeypatch
):
    run_dir = tmp_path / "run"
    real = progress_mod.save_progress

    def ctrl_c(*args, **kwargs):
        real(*args, **kwargs)
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(progress_mod, "save_progress", ctrl_c)
        result = _train(spec_file, "--run-dir", str(run_dir))
    assert result.exit_code == 130
    assert f"kept in {run_dir}" in result.output and "rerun the same command" in result.output
    resumed = _train(spec_file, "--resume", str(run_dir / "dmpo-progress.pt"))
    assert resumed.exit_code == 0, resumed.output
    _assert_clean(run_dir)
    _assert_same_models(reference, run_dir)

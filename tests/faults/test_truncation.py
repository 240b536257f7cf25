"""Journals, progress files and checkpoints cut at arbitrary byte offsets (seeded sweeps):
the next run repairs the file or refuses it with a clear MpoError (never another
exception, never a silently wrong result), and every complete trial / epoch survives."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import optuna
import pytest
import torch
from _faults import invoke, rng
from _tune import SAME, finished, summary, tune_command
from optuna.trial import TrialState

from mpo.errors import CheckpointError, MpoError
from mpo.learn.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from mpo.learn.progress import RunIdentity, load_progress, save_progress
from mpo.tuning import open_storage

IDENTITY = RunIdentity({"train": {"seed": 0}}, "abc", 0)


def _offsets(size: int, seed: int, n: int) -> list[int]:
    """``n`` seeded offsets in ``[0, size)`` plus both ends and the middle."""
    r = rng(seed)
    return sorted({0, 1, size // 2, size - 1, *(r.randrange(size) for _ in range(n))})


def _complete_trials(path: Path) -> list[tuple[int, dict, float]]:
    try:
        study = optuna.load_study(study_name="s", storage=open_storage(path))
    except KeyError:  # cut inside the study's first record: no study yet
        return []
    return [(t.number, t.params, t.value) for t in study.get_trials(states=(TrialState.COMPLETE,))]


# --------------------------------------------------------------------- journals
@pytest.fixture(scope="module")
def journal(tmp_path_factory) -> bytes:
    """A journal of 6 finished trials (Optuna only: the sweep is about the file)."""
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    path = tmp_path_factory.mktemp("journal") / "s.journal"
    study = optuna.create_study(study_name="s", storage=open_storage(path))
    study.optimize(lambda t: t.suggest_float("x", 0, 1) ** 2, n_trials=6)
    return path.read_bytes()


def test_a_journal_cut_anywhere_keeps_every_complete_trial_and_goes_on(journal, tmp_path):
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    for cut in _offsets(len(journal), seed=11, n=40):
        path = tmp_path / f"cut{cut}.journal"
        path.write_bytes(journal[:cut])
        reference = tmp_path / f"ref{cut}.journal"  # what the complete records hold
        reference.write_bytes(journal[: journal[:cut].rfind(b"\n") + 1])
        want = _complete_trials(reference)
        got = _complete_trials(path)  # opening repairs
        assert got == want, cut
        assert path.read_bytes() == reference.read_bytes(), cut  # cut after the last record
        study = optuna.create_study(study_name="s", storage=open_storage(path),
                                    load_if_exists=True)  # fmt: skip
        study.optimize(lambda t: t.suggest_float("x", 0, 1) ** 2, n_trials=1)
        after = _complete_trials(path)
        assert after[: len(want)] == want and len(after) == len(want) + 1, cut


def test_a_tuning_journal_cut_in_the_last_trial_resumes_to_the_uninterrupted_result(
    tune_reference, tmp_path
):
    """``mpo tune`` over a journal cut at a seeded offset inside its last trial's records
    ends with the uninterrupted study's trials, winner and test results."""
    want_trials, want, ref_dir = tune_reference
    data = (ref_dir / "s.journal").read_bytes()
    second_done = [i for i in range(len(data)) if data.startswith(b'"state":1', i)][1]
    start = data.rfind(b"\n", 0, second_done) + 1  # after the second trial's end
    cut = rng(5).randrange(start + 1, len(data))
    shutil.copy(ref_dir / "spo.toml", tmp_path / "spo.toml")
    (tmp_path / "s.journal").write_bytes(data[:cut])
    invoke(tune_command(tmp_path / "spo.toml", tmp_path, 3))
    assert list(tmp_path.glob("s.journal.broken-*"))  # the cut file was backed up
    assert finished(tmp_path) == want_trials
    got = summary(tmp_path)
    for key in SAME:
        assert got[key] == want[key], key
    assert got["test_metrics"] == want["test_metrics"]


# ------------------------------------------------------ progress files, checkpoints
def test_a_progress_file_cut_anywhere_restarts_training_with_a_warning(tmp_path, caplog):
    path = tmp_path / "dmpo-progress.pt"
    save_progress(path, "dmpo", IDENTITY, {"epoch": 3, "w": torch.arange(3000.0)})
    data = path.read_bytes()
    for cut in _offsets(len(data), seed=12, n=40):
        path.write_bytes(data[:cut])
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="mpo.learn.progress"):
            assert load_progress(path, "dmpo", IDENTITY) is None, cut
        assert "starts from scratch" in caplog.text, cut
    path.write_bytes(data)
    assert load_progress(path, "dmpo", IDENTITY)["epoch"] == 3


def test_a_checkpoint_cut_anywhere_is_a_checkpoint_error(tmp_path):
    ckpt = Checkpoint(kind="dmpo", state_dict={"w": torch.arange(3000.0)}, encoder_config={},
                      feature_config={}, qp_config={}, tickers=["A", "B"],
                      train_window=["2020-01-01", "2020-06-30"], fingerprint="abc", seed=0)  # fmt: skip
    path = save_checkpoint(ckpt, tmp_path / "dmpo.pt")
    data = path.read_bytes()
    for cut in _offsets(len(data), seed=13, n=40):
        path.write_bytes(data[:cut])
        with pytest.raises(CheckpointError, match="dmpo.pt"):
            load_checkpoint(path)
    path.write_bytes(data)
    assert torch.equal(load_checkpoint(path).state_dict["w"], torch.arange(3000.0))


@pytest.mark.slow
def test_mpo_train_over_a_cut_final_checkpoint_retrains_it_to_the_same_weights(
    specs, tmp_path, caplog
):
    from test_kill_train import _assert_same, _command

    reference = tmp_path / "reference"
    invoke(_command(specs["train"], reference))
    run_dir = tmp_path / "run"
    shutil.copytree(reference, run_dir)
    (run_dir / "results.json").unlink()  # killed before the evaluation
    data = (run_dir / "dmpo.pt").read_bytes()
    (run_dir / "dmpo.pt").write_bytes(data[: rng(7).randrange(len(data))])
    with caplog.at_level(logging.WARNING):
        invoke(_command(specs["train"], run_dir))
    assert "training dmpo again" in caplog.text
    _assert_same(reference, run_dir)


def test_a_backtest_of_a_cut_checkpoint_is_one_clear_error(tmp_path):
    """A dmpo_qp policy whose checkpoint is cut: exit code 2, the file named, no traceback."""
    from typer.testing import CliRunner

    from mpo.cli import app

    ckpt = tmp_path / "dmpo.pt"
    ckpt.write_bytes(b"PK\x03\x04" + bytes(100))
    spec = tmp_path / "qp.toml"
    spec.write_text(f'name = "qp"\nkind = "dmpo_qp"\n[learned]\ncheckpoint = "{ckpt}"\n'
                    '[data]\nsource = "synthetic"\n')  # fmt: skip
    result = CliRunner().invoke(app, ["backtest", str(spec), "--no-progress", "--no-report",
                                      "--out", str(tmp_path / "runs")])  # fmt: skip
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and "dmpo.pt" in result.output
    assert issubclass(CheckpointError, MpoError)


@pytest.mark.slow
def test_a_lock_left_by_a_kill_mid_append_delays_the_next_run_but_loses_nothing(journal, tmp_path):
    """SIGKILL inside an append leaves ``<journal>.lock``; the next open waits for Optuna's
    grace period (30 s), takes the lock over, and the study goes on."""
    import time

    path = tmp_path / "s.journal"
    path.write_bytes(journal)
    (tmp_path / "s.journal.lock").touch()
    tic = time.monotonic()
    got = _complete_trials(path)
    assert time.monotonic() - tic < 120
    assert len(got) == 6 and not (tmp_path / "s.journal.lock").exists()

"""``mpo tune`` runs of the fault suite: command line, the study's finished trials, the
run folder's summary (shared by the kill, truncation and full-disk tests)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import optuna
from _faults import invoke, mpo
from optuna.trial import TrialState

from mpo.tuning import open_storage

#: Keys of tuning.json that must equal an uninterrupted run's.
SAME = ("best_params", "best_train_value", "train_metrics", "deflated_sharpe", "n_finished")


def tune_command(spec: Path, folder: Path, trials: int, seed: int = 1) -> list[str]:
    return mpo("tune", spec, "--trials", trials, "--storage", folder / "s.journal", "--study",
               "s", "--out", folder / "runs", "--seed", seed, "--no-progress")  # fmt: skip


def finished(folder: Path) -> list[tuple[dict, float]]:
    """(params, value) of the study's completed trials, in trial order."""
    study = optuna.load_study(study_name="s", storage=open_storage(folder / "s.journal"))
    return [(t.params, t.value) for t in study.get_trials(states=(TrialState.COMPLETE,))]


def summary(folder: Path) -> dict:
    """``tuning.json`` of the one tuning run folder, without the timings."""
    (run_dir,) = (folder / "runs").glob("*-tune-spo")
    out = json.loads((run_dir / "tuning.json").read_text())
    for metrics in (out["test_metrics"] or {}).values():
        metrics.pop("ms_per_period", None)
    return out


def completed(journal: Path) -> int:
    """Trials completed so far, read from the journal's bytes (no Optuna replay)."""
    try:
        return journal.read_bytes().count(b'"state":1')
    except FileNotFoundError:
        return 0


def spec_copy(specs, folder: Path) -> Path:
    """The spo spec copied into ``folder`` (tune writes ``spo.tuned.json`` beside it)."""
    folder.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copy(specs["spo"], folder / "spo.toml"))


def reference(specs, folder: Path, trials: int) -> tuple[list, dict, Path]:
    """An uninterrupted study of ``trials`` trials in ``folder``: its trials, summary, folder."""
    invoke(tune_command(spec_copy(specs, folder), folder, trials))
    return finished(folder), summary(folder), folder

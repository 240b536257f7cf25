"""A journal truncated at any byte offset loses no finished trial and the study goes on."""

from __future__ import annotations

import optuna
import pytest

from mpo.errors import TuningError
from mpo.tuning import open_storage
from mpo.tuning.journal import repair_journal


def _study(path, n):
    storage = open_storage(str(path))
    study = optuna.create_study(study_name="s", storage=storage, load_if_exists=True)
    study.optimize(lambda t: t.suggest_float("x", 0, 1) ** 2, n_trials=n)
    return study


def test_truncated_journal_keeps_every_complete_trial_and_resumes(tmp_path):
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    full = tmp_path / "full.journal"
    _study(full, 6)
    data = full.read_bytes()
    line_ends = [i + 1 for i, b in enumerate(data) if b == ord("\n")]
    # every cut inside the last few records, plus cuts at record boundaries
    cuts = sorted({*range(line_ends[-4] + 1, len(data), 7), *line_ends[-4:-1]})
    for cut in cuts:
        path = tmp_path / f"cut{cut}.journal"
        path.write_bytes(data[:cut])
        complete = data[:cut].rfind(b"\n") + 1
        reference = tmp_path / f"ref{cut}.journal"
        reference.write_bytes(data[:complete])
        want = [
            (t.number, t.value)
            for t in optuna.load_study(study_name="s", storage=open_storage(str(reference))).trials
            if t.state.is_finished()
        ]
        study = _study(path, 2)  # opens (repairing), then runs two more trials
        got = [(t.number, t.value) for t in study.trials if t.state.is_finished()]
        assert got[: len(want)] == want, cut
        assert len(got) >= len(want) + 2, cut
        backups = list(tmp_path.glob(f"cut{cut}.journal.broken-*"))
        assert len(backups) == (0 if cut == complete else 1), cut


def test_corrupt_middle_record_is_refused(tmp_path):
    path = tmp_path / "j.journal"
    _study(path, 3)
    lines = path.read_bytes().split(b"\n")
    lines[1] = b'{"broken'
    path.write_bytes(b"\n".join(lines))
    with pytest.raises(TuningError, match="record 2 of .* is corrupt"):
        repair_journal(path)


def test_directory_as_storage_is_a_clear_error(tmp_path):
    with pytest.raises(TuningError, match="is a directory"):
        open_storage(str(tmp_path))

"""A full disk (ENOSPC from the writer, its fsync or the rename): the previous file stays
intact and readable, no partial or temporary file takes its place, the error names the
file, and the CLI prints one ``error:`` line with exit code 2 and no traceback.

In-process tests fake the failure in each writer (Python, pyarrow, torch); the
``real_disk`` tests run ``mpo`` on a tiny tmpfs (a private mount namespace), where the
kernel itself refuses the writes.
"""

from __future__ import annotations

import errno
import json
import os
import shlex
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
from _faults import TEMP, fill_disk, invoke, mpo, tmpfs_script
from typer.testing import CliRunner

import mpo.io as mio
from mpo.data.cache import CachedHistory, PriceCache
from mpo.io import DiskFullError, write_json, write_parquet
from mpo.learn.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from mpo.learn.progress import RunIdentity, load_progress, save_progress

IDENTITY = RunIdentity({"train": {"seed": 0}}, "abc", 0)


def _history(n: int) -> CachedHistory:
    days = pd.bdate_range("2020-01-01", periods=n)
    frame = pd.DataFrame(
        {c: np.linspace(1.0, 2.0, n) for c in ("Open", "High", "Low", "Close", "Volume")},
        index=days,
    )
    return CachedHistory(frame, days[0], days[-1] + pd.Timedelta(days=1))


def _ckpt(scale: float) -> Checkpoint:
    return Checkpoint(kind="dmpo", state_dict={"w": torch.full((500,), scale)},
                      encoder_config={}, feature_config={}, qp_config={}, tickers=["A"],
                      train_window=["2020-01-01", "2020-06-30"], fingerprint="abc", seed=0)  # fmt: skip


#: name -> (file name, write version k to path, read path -> comparable content)
WRITERS = {
    "json": (
        "run.json",
        lambda p, k: write_json({"v": k, "x": list(range(2000 * k))}, p),
        lambda p: json.loads(p.read_text())["v"],
    ),
    "parquet": (
        "returns.parquet",
        lambda p, k: write_parquet(pd.DataFrame({"r": np.arange(1000.0 * k)}), p),
        lambda p: len(pd.read_parquet(p)) // 1000,
    ),
    "cache": (
        "AAPL.parquet",
        lambda p, k: PriceCache(p.parent).write("AAPL", _history(100 * k)),
        lambda p: len(PriceCache(p.parent).read("AAPL").frame) // 100,
    ),
    "checkpoint": (
        "dmpo.pt",
        lambda p, k: save_checkpoint(_ckpt(float(k)), p),
        lambda p: float(load_checkpoint(p).state_dict["w"][0]),
    ),
    "progress": (
        "dmpo-progress.pt",
        lambda p, k: save_progress(p, "dmpo", IDENTITY, {"epoch": k, "w": torch.ones(500 * k)}),
        lambda p: load_progress(p, "dmpo", IDENTITY)["epoch"],
    ),
}


def _half_then(real, error: Exception, path_arg: int = 1):
    """A writer that writes half of what ``real`` writes, then fails with ``error``."""

    def write(*args, **kwargs):
        real(*args, **kwargs)
        if not isinstance(args[path_arg], str | os.PathLike):  # pandas -> pyarrow: once
            return
        path = Path(args[path_arg])
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
        raise error

    return write


def _no_space_left(monkeypatch, mode: str) -> None:
    """Make the next atomic write fail as a full disk does, at ``mode``."""
    enospc = OSError(errno.ENOSPC, "No space left on device")
    if mode == "write":  # each writer's own error: Python's, pyarrow's, torch's (no errno)
        import pathlib

        monkeypatch.setattr(pathlib.Path, "write_text", _half_then(pathlib.Path.write_text,
                            enospc, 0))  # fmt: skip
        arrow = OSError(errno.ENOSPC, "Error writing bytes to file. Detail: [errno 28] No "
                        "space left on device")  # fmt: skip
        monkeypatch.setattr(pd.DataFrame, "to_parquet",
                            _half_then(pd.DataFrame.to_parquet, arrow))  # fmt: skip
        monkeypatch.setattr(pq, "write_table", _half_then(pq.write_table, arrow))
        monkeypatch.setattr(torch, "save", _half_then(torch.save, RuntimeError(
            "[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")))  # fmt: skip
        real_statvfs = os.statvfs

        class Full:  # what statvfs says of a full disk
            def __init__(self, st):
                self.f_frsize, self.f_bavail = st.f_frsize, 0

        monkeypatch.setattr(os, "statvfs", lambda p: Full(real_statvfs(p)))
    elif mode == "fsync":  # delayed allocation: the data only fail to fit at fsync
        monkeypatch.setattr(mio.os, "fsync", lambda fd: (_ for _ in ()).throw(enospc))
    else:  # the rename needs a new directory block
        monkeypatch.setattr(mio.os, "replace", lambda a, b: (_ for _ in ()).throw(enospc))


@pytest.mark.parametrize("mode", ["write", "fsync", "rename"])
@pytest.mark.parametrize("writer", sorted(WRITERS))
def test_a_full_disk_keeps_the_previous_file_and_leaves_no_partial_one(
    tmp_path, monkeypatch, writer, mode
):
    name, write, read = WRITERS[writer]
    path = tmp_path / name
    write(path, 1)
    before = path.read_bytes()
    with monkeypatch.context() as m:
        _no_space_left(m, mode)
        with pytest.raises(OSError) as info:
            write(path, 2)
    assert isinstance(info.value, DiskFullError) and info.value.errno == errno.ENOSPC
    assert info.value.filename == str(path)  # the error names the file
    assert path.read_bytes() == before and read(path) == 1  # the old file, intact
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]  # no temporary file
    write(path, 3)  # space freed: the next write works
    assert read(path) == 3


def test_other_errors_are_not_reported_as_a_full_disk(tmp_path):
    with pytest.raises(TypeError):
        write_json({"x": object()}, tmp_path / "r.json")
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------- the CLI
def _cli(*args):
    from mpo.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


def _assert_one_message(result, path_part: str) -> None:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.output
    assert "no space left on device" in lines[0].lower() and path_part in lines[0], lines[0]
    assert "free space and rerun" in lines[0], lines[0]


def test_backtest_on_a_full_disk_is_one_message_and_saves_no_partial_file(
    specs, tmp_path, monkeypatch
):
    calls = []
    real = mio.write_parquet

    def third_fails(frame, target):
        calls.append(target)
        if len(calls) == 3:
            with monkeypatch.context() as m:
                _no_space_left(m, "write")
                return real(frame, target)
        return real(frame, target)

    monkeypatch.setattr("mpo.backtest.write_parquet", third_fails)
    out = tmp_path / "runs"
    result = _cli("backtest", specs["spo"], "--no-report", "--backtest-start", "2017-08-01",
                  "--out", out, "--no-progress")  # fmt: skip
    _assert_one_message(result, str(calls[2]))
    (run_dir,) = out.iterdir()
    for p in run_dir.rglob("*"):
        assert not TEMP.match(p.name), p
        if p.suffix == ".parquet":
            pd.read_parquet(p)  # complete
    assert not Path(calls[2]).exists()


def test_tune_on_a_full_disk_keeps_every_finished_trial(specs, tmp_path, monkeypatch, capfd):
    """ENOSPC in the middle of a journal append: no partial record, the error names the
    journal, and the rerun completes the study to exactly --trials."""
    import optuna
    from optuna.trial import TrialState

    import mpo.tuning.journal as journal_mod
    from mpo.tuning import open_storage

    spec = tmp_path / "spo.toml"
    spec.write_text(specs["spo"].read_text())
    storage = tmp_path / "s.journal"
    args = ("tune", spec, "--trials", 2, "--storage", storage, "--study", "s", "--out",
            tmp_path / "runs", "--no-progress")  # fmt: skip
    real, after = journal_mod._write_all, []

    def write_all(fd, data):
        if after or b'"state":1' in data:  # the first trial has completed
            after.append(data)
        if len(after) == 4:  # in the second trial: half a record fits
            os.write(fd, data[: len(data) // 2])
        if len(after) >= 4:  # and from then on nothing
            raise OSError(errno.ENOSPC, "No space left on device")
        real(fd, data)

    with monkeypatch.context() as m:
        m.setattr(journal_mod, "_write_all", write_all)
        result = _cli(*args)
    _assert_one_message(result, str(storage))
    assert "Traceback" not in capfd.readouterr().err
    data = storage.read_bytes()
    assert data.endswith(b"\n")  # the failed append was cut back
    assert all(json.loads(line) for line in data.splitlines())
    study = optuna.load_study(study_name="s", storage=open_storage(storage))
    done = {t.number: t.value for t in study.get_trials(states=(TrialState.COMPLETE,))}
    assert len(done) >= 1

    invoke(mpo(*args))  # space freed: the same command resumes (in the same process)
    study = optuna.load_study(study_name="s", storage=open_storage(storage))
    finished = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(finished) == 2
    assert {t.number: t.value for t in finished if t.number in done} == done


# -------------------------------------------------------------- a real full disk
def test_backtest_on_a_real_full_disk(specs, tmp_path):
    """``mpo backtest --out`` on a tmpfs: once with room for nothing, once with room for
    part of the results; an earlier run on the disk is untouched each time."""
    with tmpfs_script(tmp_path) as (disk, launch):
        cmd = shlex.join(mpo("backtest", specs["spo"], "--backtest-start", "2017-08-01",
                             "--out", disk / "runs", "--no-progress"))  # fmt: skip
        earlier = disk / "runs" / "20000101-000000-earlier" / "run.json"
        script = (
            f"mkdir -p {earlier.parent} && echo '{{\"v\": 1}}' > {earlier} && "
            f"{fill_disk(disk, 24)} && {cmd}"
        )
        proc = launch(script, size_kb=512)
        assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
        assert "Traceback" not in proc.stderr
        (line,) = [x for x in proc.stderr.splitlines() if x.startswith("error:")]
        assert "no space left on device" in line.lower() and str(disk / "runs") in line, line
        assert json.loads(earlier.read_text()) == {"v": 1}
        for p in (disk / "runs").rglob("*"):
            assert not TEMP.match(p.name), p
            if p.suffix == ".parquet":
                pd.read_parquet(p)
            elif p.suffix == ".json":
                json.loads(p.read_text())


@pytest.mark.slow
def test_tune_on_a_real_full_disk_keeps_the_journal_and_resumes(specs, tmp_path):
    """A study with one finished trial on a tmpfs that then fills up: ``mpo tune`` stops with
    one message, the journal stays valid, and a rerun with room completes the study."""
    import optuna
    from optuna.trial import TrialState

    from mpo.tuning import open_storage

    with tmpfs_script(tmp_path) as (disk, launch):
        spec = disk / "spo.toml"

        def cmd(trials: int) -> str:
            return shlex.join(mpo("tune", spec, "--trials", trials, "--storage",
                                  disk / "s.journal", "--study", "s", "--out", disk / "runs",
                                  "--no-progress"))  # fmt: skip

        script = (f"cp {specs['spo']} {spec} && {cmd(1)} > /dev/null && "
                  f"{fill_disk(disk, 0)} && {cmd(3)}")  # fmt: skip
        proc = launch(script, size_kb=8192)
        assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-3000:]
        assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
        (line,) = [x for x in proc.stderr.splitlines() if x.startswith("error:")]
        assert "no space left on device" in line.lower(), line
        data = (disk / "s.journal").read_bytes()
        assert data.endswith(b"\n") and all(json.loads(x) for x in data.splitlines())
        (disk / ".filler").unlink()
        for p in disk.rglob("*"):
            assert not TEMP.match(p.name), p
        storage = open_storage(disk / "s.journal")
        first = optuna.load_study(study_name="s", storage=storage).get_trials(
            states=(TrialState.COMPLETE,)
        )
        assert 1 <= len(first) < 3  # what fitted in the journal's last page was written
        invoke(mpo("tune", spec, "--trials", 3, "--storage", disk / "s.journal", "--study", "s",
                   "--out", tmp_path / "runs", "--no-progress"))  # fmt: skip
        study = optuna.load_study(study_name="s", storage=open_storage(disk / "s.journal"))
        done = study.get_trials(states=(TrialState.COMPLETE,))
        assert len(done) == 3
        assert [(t.params, t.value) for t in done[: len(first)]] == [
            (t.params, t.value) for t in first
        ]


@pytest.mark.slow
def test_train_on_a_real_full_disk_resumes_to_the_same_weights(specs, tmp_path):
    """``mpo train`` on a tmpfs with room for a few epochs: one message, exit code 2, the
    last progress file intact; a rerun with room ends with the uninterrupted weights."""
    from test_kill_train import _assert_same, _command

    reference = tmp_path / "reference"
    invoke(_command(specs["train"], reference))
    with tmpfs_script(tmp_path) as (disk, launch):
        run_dir = disk / "run"
        script = f"{fill_disk(disk, 150)} && {shlex.join(_command(specs['train'], run_dir))}"
        proc = launch(script, size_kb=4096)
        assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-3000:]
        assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
        (line,) = [x for x in proc.stderr.splitlines() if x.startswith("error:")]
        assert "no space left on device" in line.lower() and str(run_dir) in line, line
        assert not [p for p in run_dir.iterdir() if TEMP.match(p.name)]
        progress = list(run_dir.glob("*-progress.pt"))
        assert progress, sorted(p.name for p in run_dir.iterdir())
        for p in progress:
            torch.load(p, weights_only=True)  # complete
        (disk / ".filler").unlink()
        invoke(_command(specs["train"], run_dir))
        _assert_same(reference, run_dir)

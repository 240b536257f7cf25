"""``mpo walkforward`` on a real Dask cluster: a driver killed with ``kill -9`` resumes to the
same bits as an uninterrupted run; an unreachable scheduler is one clear error.

The cluster is a ``dask scheduler`` and two ``dask worker`` processes started from the venv's
command-line tools, as the README tells users to start them; the driver is the ``mpo``
command in its own process, so that the kill is a real one.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from mpo.cli import app

BIN = Path(sys.executable).parent
ENV = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
POLICIES = ("hold", "equal_weight", "spo")
#: 3 folds (144 training, 80 + 80 + 49 test periods) on 5 synthetic assets; SPO tuned with 2
#: trials a fold: 3 fit and 3 stitched tasks.
OPTIONS = ["--train", "150d", "--test", "80d", "--end", "2011-08-12", "--trials", "2"]
N_TEST = 209
N_TASKS = 6
SPEC = """
name = "spo"
kind = "spo"
[data]
source = "synthetic"
tickers = ["S00", "S01", "S02", "S03", "S04"]
[forecast]
kind = "rolling_mean"
lookback = 60
[risk]
kind = "full"
lookback = 60
[objective]
gamma_risk = 5.0
gamma_trade = 1.0
planning_horizon = 1
[constraints]
long_only = true
max_weight = 0.3
leverage = 1.0
[costs]
half_spread = 0.0005
impact = 1.0
[tuning]
trials = 2
prune = false
[tuning.params.gamma_risk]
low = 0.1
high = 100.0
log = true
"""
SKIPPED = re.compile(r"^(\d+) task\(s\) finished in an earlier run were skipped$", re.M)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(args: list[str]) -> subprocess.Popen:
    """A dask command-line tool in its own session (so teardown can reach its children)."""
    return subprocess.Popen(
        [str(BIN / "dask"), *args],
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL to the process group after a grace period; reaped either way."""
    if proc.poll() is None:
        proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        pass
    with contextlib.suppress(ProcessLookupError):  # a nanny's worker child, if left behind
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=15)


@pytest.fixture
def dask_cluster():
    """``tcp://127.0.0.1:PORT`` of a running scheduler with two single-threaded workers."""
    from distributed import Client

    address = f"tcp://127.0.0.1:{_free_port()}"
    port = address.rsplit(":", 1)[1]
    procs = [
        _start(
            ["scheduler", "--host", "127.0.0.1", "--port", port, "--no-dashboard"]
            + ["--dashboard-address", "127.0.0.1:0"]
        )
    ]
    try:
        for _ in range(2):
            procs.append(
                _start(
                    ["worker", address, "--nthreads", "1", "--nworkers", "1", "--no-dashboard"]
                    + ["--death-timeout", "60"]
                )
            )
        with Client(address, timeout=60) as client:
            client.wait_for_workers(2, timeout=90)
            assert len(client.scheduler_info()["workers"]) == 2
        yield address
    finally:
        for proc in reversed(procs):
            _stop(proc)
        assert all(p.poll() is not None for p in procs)


def _command(spec: Path, out: Path, address: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "mpo",
        "walkforward",
        str(spec),
        *OPTIONS,
        "--scheduler",
        address,
        "--out",
        str(out),
        "--no-progress",
    ]


def _finished(root: Path) -> tuple[int, int]:
    """(fit results, all task results) written under ``root/tasks``."""
    fits = len(list(root.glob("tasks/main/spo/fold*/result.json")))
    return fits, fits + len(list(root.glob("tasks/main/*/stitched.json")))


def _kill_after_first_fit(cmd: list[str], root: Path, timeout: float = 240) -> tuple[int, int]:
    """Start the driver, ``kill -9`` it once a fit is written and a task is still unfinished."""
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"the driver ended before the kill: {proc.stderr.read().decode()}")
            fits, done = _finished(root)
            if fits >= 1 and done < N_TASKS:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)
                return fits, done
            time.sleep(0.05)
        pytest.fail("no fit task finished in time")
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        proc.stderr.close()


def _folds(root: Path) -> pd.DataFrame:
    df = pd.read_csv(root / "folds.csv")
    timing = [c for c in df.columns if re.search(r"second|time|created|duration", c)]
    return df.drop(columns=timing)


def test_real_scheduler_two_workers_kill_and_resume(dask_cluster, tmp_path):
    spec = tmp_path / "spo.toml"
    spec.write_text(SPEC)
    killed, whole = tmp_path / "killed", tmp_path / "whole"

    fits, done = _kill_after_first_fit(_command(spec, killed, dask_cluster), killed)
    assert fits >= 1 and done < N_TASKS
    assert not (killed / "summary.json").exists()  # the driver died before the statistics

    # the same command again; tasks the workers still run for the dead driver are waited for
    resumed = subprocess.run(
        _command(spec, killed, dask_cluster), env=ENV, capture_output=True, text=True, timeout=300
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    (skipped,) = SKIPPED.findall(resumed.stdout)
    assert 1 <= int(skipped) <= N_TASKS
    assert f"{skipped} of {N_TASKS} tasks finished in an earlier run: skipped" in resumed.stderr
    assert (killed / "summary.json").is_file()

    once = subprocess.run(
        _command(spec, whole, dask_cluster), env=ENV, capture_output=True, text=True, timeout=300
    )
    assert once.returncode == 0, once.stderr[-3000:]
    assert not SKIPPED.search(once.stdout)

    for policy in POLICIES:
        for name in ("returns", "weights"):
            a = pd.read_parquet(killed / policy / f"{name}.parquet")
            b = pd.read_parquet(whole / policy / f"{name}.parquet")
            assert len(a) == N_TEST and a.equals(b), (policy, name)  # bit-identical floats
    a, b = _folds(killed), _folds(whole)
    assert len(a) == 3 * len(POLICIES) and a["param_gamma_risk"].notna().sum() == 3
    assert a.equals(b)
    sa, sb = (json.loads((r / "summary.json").read_text()) for r in (killed, whole))
    assert sa["universes"] == sb["universes"] and sa["trials"] == sb["trials"]
    assert sa["tasks"]["skipped"] == int(skipped) and sb["tasks"] == {"skipped": 0, "ran": 6}


# -------------------------------------------------------------- unreachable scheduler
def test_unreachable_scheduler_is_a_clear_error(tmp_path, monkeypatch):
    import mpo.research.engine as engine

    monkeypatch.setattr(engine, "CONNECT_TIMEOUT", 2)  # a refused port is retried until then
    spec = tmp_path / "spo.toml"
    spec.write_text(SPEC)
    closed = f"tcp://127.0.0.1:{_free_port()}"  # bound and released: nothing listens there
    runner = CliRunner()
    cases = (
        (closed, closed, "cannot reach the Dask scheduler"),
        ("tcp://user:secret@127.0.0.1:1", "user:***@", "is not an address Dask reads"),
    )
    for address, shown, says in cases:
        args = ["walkforward", str(spec), *OPTIONS, "--scheduler", address]
        result = runner.invoke(app, [*args, "--out", str(tmp_path / "run"), "--no-progress"])
        assert result.exit_code == 2, result.output
        assert isinstance(result.exception, SystemExit)
        assert says in result.stderr and shown in result.stderr
        assert "Traceback" not in result.output
        assert "secret" not in result.output  # stdout and stderr
    assert not (tmp_path / "run" / "tasks").exists()

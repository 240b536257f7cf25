"""Helpers of the fault suite: real ``mpo`` processes killed with SIGKILL at seeded random
points, a real full disk (a small tmpfs in a private mount namespace), and comparisons of
run folders file by file."""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd

ENV = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}

#: What an interrupted atomic write may leave behind (mpo.io.atomic_path): hidden, ``.tmp``.
TEMP = re.compile(r"^\..+\.tmp$")

#: Keys of JSON files that differ between two identical runs (time stamps, folders).
VOLATILE = {"created", "seconds", "run_dir", "seconds_per_period", "ms_per_period"}


def mpo(*args: str) -> list[str]:
    """The command line of ``python -m mpo ARGS``."""
    return [sys.executable, "-m", "mpo", *map(str, args)]


def run(cmd: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``cmd`` to its end; fail the test with its stderr if it fails."""
    proc = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{cmd}\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return proc


def invoke(cmd: list[str]) -> None:
    """Run an ``mpo(...)`` command line in this process (no interpreter start-up)."""
    from typer.testing import CliRunner

    from mpo.cli import app

    assert cmd[:3] == mpo()
    result = CliRunner().invoke(app, cmd[3:], catch_exceptions=False)
    assert result.exit_code == 0, f"{cmd}\n{result.output[-4000:]}"


def timed_run(cmd: list[str], timeout: float = 300) -> float:
    """Seconds ``cmd`` takes to run to its end (the span a random kill point is drawn from)."""
    tic = time.monotonic()
    run(cmd, timeout)
    return time.monotonic() - tic


def kill_when(
    cmd: list[str],
    ready: Callable[[], bool],
    delay: float,
    timeout: float = 240,
) -> bool:
    """Start ``cmd``; once ``ready()`` holds, wait ``delay`` seconds and SIGKILL it.

    Returns whether the process was killed (``False``: it finished first, which a
    random kill point late in the run may do; the caller then checks a finished run).
    """
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + timeout
        while not ready():
            if proc.poll() is not None:
                break
            assert time.monotonic() < deadline, f"{cmd}: the kill point never came"
            time.sleep(0.02)
        end = time.monotonic() + delay
        while proc.poll() is None and time.monotonic() < end:
            time.sleep(0.005)
        if proc.poll() is not None:
            err = proc.stderr.read().decode()
            assert proc.returncode == 0, f"{cmd} failed before the kill:\n{err[-4000:]}"
            return False
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        return True
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        proc.stderr.close()


def rng(seed: int) -> random.Random:
    """The test's own random stream (kill points, offsets)."""
    return random.Random(seed)


# ----------------------------------------------------------------------- run folders
def files(folder: Path) -> dict[str, Path]:
    """Relative path -> file, for every file under ``folder``."""
    return {str(p.relative_to(folder)): p for p in sorted(folder.rglob("*")) if p.is_file()}


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file's bytes under ``folder`` (to check that nothing touched it)."""
    return {k: p.read_bytes() for k, p in files(folder).items()}


def _strip(obj):
    if isinstance(obj, dict):
        return {k: _strip(v) for k, v in obj.items() if k not in VOLATILE}
    if isinstance(obj, list):
        return [_strip(v) for v in obj]
    if isinstance(obj, float) and obj != obj:
        return "NaN"  # NaN == NaN
    return obj


def _diff(a, b, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        return [
            d for k in sorted(set(a) | set(b)) for d in _diff(a.get(k), b.get(k), f"{prefix}.{k}")
        ]
    return [] if a == b else [f"{prefix}: {str(a)[:80]} != {str(b)[:80]}"]


def _html(text: str) -> str:
    """A report without what differs between identical runs (folder names, times)."""
    text = re.sub(r"\d{8}-\d{6}[-\w.]*", "<run>", text)
    text = re.sub(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", "<time>", text)
    return re.sub(r"<td>[0-9.]+</td>(\s*</tr>)", r"<td>ms</td>\1", text)  # ms/period


def same_file(a: Path, b: Path) -> None:
    """``b`` is complete, readable and holds what ``a`` holds (parquet, JSON, CSV, HTML, PNG)."""
    if a.suffix == ".parquet":
        pd.testing.assert_frame_equal(pd.read_parquet(b), pd.read_parquet(a), check_exact=True)
    elif a.suffix == ".json":
        want, got = _strip(json.loads(a.read_text())), _strip(json.loads(b.read_text()))
        assert got == want, (b, _diff(want, got)[:5])
    elif a.suffix == ".html":
        text = b.read_text()
        assert text.rstrip().endswith("</html>"), f"{b} is cut"
        assert _html(text) == _html(a.read_text()), b
    elif a.suffix == ".png":
        assert b.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and b.read_bytes().endswith(
            b"IEND\xaeB`\x82"
        ), f"{b} is cut"
    else:
        assert b.read_bytes() == a.read_bytes(), b


def check_partial(reference: Path, partial: Path) -> list[str]:
    """Every file in ``partial`` (a killed run's folder) is complete and equals the reference's.

    Returns the names of the temporary files left by the kill (hidden ``.tmp`` files, the
    only thing a killed atomic write may leave).
    """
    ref = files(reference)
    leftovers = []
    for name, path in files(partial).items():
        if TEMP.match(path.name):
            leftovers.append(name)
            continue
        assert name in ref, f"{name}: a file the uninterrupted run does not write"
        same_file(ref[name], path)
    return leftovers


def check_same(reference: Path, other: Path) -> None:
    """Two run folders hold the same files with the same content, and no temporary file."""
    a, b = files(reference), files(other)
    assert sorted(b) == sorted(a), (sorted(a), sorted(b))
    for name in a:
        same_file(a[name], b[name])


# ------------------------------------------------------------------------ full disk
@contextlib.contextmanager
def tmpfs_script(tmp_path: Path):
    """Yield ``(disk, launch)``: ``launch(script)`` runs bash ``script`` with a small tmpfs
    mounted on ``disk`` in a private mount namespace and copies the disk's files back to
    ``disk`` when it ends. Skips the test where user namespaces are unavailable."""
    unshare = shutil.which("unshare")
    if unshare is None or sys.platform != "linux":
        import pytest

        pytest.skip("needs util-linux unshare (Linux) for a real full disk")
    probe = subprocess.run(
        [unshare, "--user", "--map-root-user", "--mount", "true"], capture_output=True
    )
    if probe.returncode != 0:
        import pytest

        pytest.skip(f"user namespaces unavailable: {probe.stderr.decode()[:200]}")
    disk = tmp_path / "disk"
    disk.mkdir()
    back = tmp_path / "disk-back"

    def launch(script: str, size_kb: int, timeout: float = 300) -> subprocess.CompletedProcess:
        shutil.rmtree(back, ignore_errors=True)
        back.mkdir()
        seed_dir = tmp_path / "disk-seed"  # files to put on the disk first
        body = (
            f"set -u\nmount -t tmpfs -o size={size_kb}k tmpfs {disk}\n"
            f"[ -d {seed_dir} ] && cp -a {seed_dir}/. {disk}/\n"
            f"( {script} )\nrc=$?\ncp -a {disk}/. {back}/\nexit $rc\n"
        )
        proc = subprocess.run(
            [unshare, "--user", "--map-root-user", "--mount", "bash", "-c", body],
            env=ENV,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        shutil.rmtree(disk)
        shutil.copytree(back, disk)
        return proc

    yield disk, launch


FILL = (
    f'{sys.executable} -c "import os,sys\nfd=os.open(sys.argv[1],os.O_WRONLY|os.O_CREAT)\n'
    "try:\n    while True: os.write(fd, b'x'*4096)\nexcept OSError: pass\""
)


def fill_disk(path: Path, leave_kb: int = 0) -> str:
    """Shell lines that fill the disk holding ``path`` up to ``leave_kb`` KiB of free space."""
    return (
        f'{FILL} {path}/.filler && {sys.executable} -c "import os; '
        f"os.truncate('{path}/.filler', max(0, os.path.getsize('{path}/.filler') - "
        f'{leave_kb} * 1024))"'
    )

"""The README's synthetic training command shows DMPO learning (slow: a few minutes).

It runs exactly ``mpo train policies/dmpo.toml --data synthetic`` (as the README
writes it, only the run folder's parent moved under ``tmp_path``) and pins DMPO's
out-of-sample test Sharpe ratio at least 0.5 above equal weight's.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
COMMAND = "mpo train policies/dmpo.toml --data synthetic"


@pytest.mark.slow
def test_readme_synthetic_training_beats_equal_weight(tmp_path):
    readme = (ROOT / "README.md").read_text()
    assert COMMAND in readme, f"the README no longer shows {COMMAND!r}"
    args = shlex.split(COMMAND)[1:] + ["--out", str(tmp_path), "--no-progress"]
    env = {"OPENBLAS_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "mpo", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1800,
        env={**os.environ, **env},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (run,) = tmp_path.glob("*-train-dmpo")
    metrics = json.loads((run / "results.json").read_text())["metrics"]
    dmpo, ew = metrics["dmpo"]["test"]["sharpe"], metrics["equal_weight"]["test"]["sharpe"]
    assert dmpo >= ew + 0.5, proc.stdout
    assert metrics["dmpo"]["test"]["max_violation"] <= 1e-8

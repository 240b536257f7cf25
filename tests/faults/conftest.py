"""Small specs for the fault suite: each command runs in seconds on the bundled sp20 data."""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from pathlib import Path

import pytest

DATA = """
[data]
source = "sp20"
tickers = ["AAPL", "JNJ", "JPM", "KO"]
adv = 1e8
start = "2017-01-01"
end = "2017-12-31"
"""

SPO = (
    """
name = "spo"
kind = "spo"
"""
    + DATA
    + """
[forecast]
lookback = 40
[risk]
lookback = 40
[objective]
gamma_risk = 5.0
gamma_trade = 0.2
[constraints]
max_weight = 0.5
[backtest]
start = "2017-06-01"
end = "2017-08-31"
[tuning]
trials = 3
train_start = "2017-03-15"
train_end = "2017-06-30"
test_start = "2017-10-02"
test_end = "2017-11-15"
prune = false
"""
)

EW = (
    """
name = "equal_weight"
kind = "equal_weight"
rebalance_every = 5
"""
    + DATA
    + """
[backtest]
start = "2017-06-01"
end = "2017-08-31"
"""
)

#: The training spec of tests/learn/test_resume.py: 2 + 2 + 1 epochs on 4 synthetic assets.
TRAIN = """
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
epochs = 3
batch_size = 32
max_batches = 2
patience = 5
[baselines]
two_stage_epochs = 2
direct_epochs = 1
lw_lookback = 60
"""


@pytest.fixture(scope="session")
def specs(tmp_path_factory) -> dict[str, Path]:
    """Spec files: ``spo`` (backtest and tune), ``equal_weight``, ``train``."""
    folder = tmp_path_factory.mktemp("specs")
    out = {}
    for name, text in (("spo", SPO), ("equal_weight", EW), ("train", TRAIN)):
        out[name] = folder / f"{name}.toml"
        out[name].write_text(text)
    return out


@pytest.fixture(scope="session")
def tune_reference(specs, tmp_path_factory) -> tuple[list, dict, Path]:
    """An uninterrupted 3-trial study (seed 1): its finished trials, tuning.json, folder."""
    from _tune import reference

    return reference(specs, tmp_path_factory.mktemp("tune-reference"), 3)

"""scripts/tune_mpo.py end to end on recorded yfinance responses (no network)."""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

import optuna

ROOT = Path(__file__).parents[2]


def test_tune_script_on_recorded_yfinance(fake_yahoo, tmp_path, monkeypatch, capsys):
    spec = tmp_path / "mpo_small.toml"
    spec.write_text(
        """
name = "mpo_small"
kind = "mpo"
[forecast]
lookback = 10
[risk]
lookback = 10
[objective]
planning_horizon = 2
[constraints]
max_weight = 0.6
[tuning]
prune = false
"""
    )
    argv = [
        "tune_mpo.py",
        str(spec),
        "--tickers",
        "AAPL,MSFT,JPM",
        "--start",
        "2022-01-01",
        "--end",
        "2022-04-30",
        "--train",
        "2022-01-20",
        "2022-02-24",
        "--test",
        "2022-03-15",
        "2022-04-28",
        "--trials",
        "3",
        "--cache-dir",
        str(tmp_path / "cache"),
        "--out",
        str(tmp_path / "runs"),
    ]
    monkeypatch.setattr(sys, "argv", argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        runpy.run_path(str(ROOT / "scripts" / "tune_mpo.py"), run_name="__main__")
    except SystemExit as exc:
        assert exc.code == 0, capsys.readouterr().out
    out = capsys.readouterr().out
    assert fake_yahoo.calls, "the script must go through yfinance.download"
    assert "observed dollar volumes" in out  # real volumes from the recorded responses
    assert "deflated Sharpe ratio" in out
    for name in ("hold", "equal_weight", "mpo_small-untuned", "mpo_small-tuned"):
        assert f"\n{name} " in out, out
    tuned = json.loads((tmp_path / "mpo_small.tuned.json").read_text())
    assert set(tuned["params"]) == {"gamma_risk", "gamma_trade"}
    assert tuned["windows"]["test"] == ["2022-03-15", "2022-04-28"]

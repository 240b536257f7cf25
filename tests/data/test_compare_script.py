"""scripts/compare_yfinance.py end to end on recorded yfinance responses (no network)."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

ROOT = Path(__file__).parents[2]

SMALL = {
    "spo.toml": """
name = "spo"
kind = "spo"
[forecast]
lookback = 10
[risk]
lookback = 10
[constraints]
max_weight = 0.6
""",
    "mpo.toml": """
name = "mpo"
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
""",
    "dmpo.toml": """
name = "dmpo"
[features]
window = 3
features = ["returns"]
[split]
val = 0.25
test = 0.25
[encoder]
hidden = 4
rank = 1
[qp]
horizon = 2
w_max = 0.6
delta = 0.5
[train]
epochs = 1
batch_size = 8
[baselines]
two_stage_epochs = 1
direct_epochs = 1
lw_lookback = 20
""",
    "dmpo_mpo.toml": """
name = "dmpo_mpo"
kind = "dmpo_mpo"
[learned]
checkpoint = "set-by-the-script.pt"
[objective]
gamma_risk = 0.5
planning_horizon = 2
[constraints]
max_weight = 0.6
""",
}


def test_compare_script_on_recorded_yfinance(fake_yahoo, tmp_path, monkeypatch, capsys):
    policies = tmp_path / "policies"
    policies.mkdir()
    for name, text in SMALL.items():
        (policies / name).write_text(text)
    argv = [
        "compare_yfinance.py", "--tickers", "AAPL,MSFT,JPM", "--start", "2022-01-01",
        "--end", "2022-04-30", "--backtest-start", "2022-03-25", "--gap", "3",
        "--trials", "2", "--policies", str(policies), "--cache-dir", str(tmp_path / "cache"),
        "--out", str(tmp_path / "runs"),
    ]  # fmt: skip
    monkeypatch.setattr(sys, "argv", argv)
    try:
        runpy.run_path(str(ROOT / "scripts" / "compare_yfinance.py"), run_name="__main__")
    except SystemExit as exc:
        assert exc.code == 0, capsys.readouterr().out
    out = capsys.readouterr().out
    assert fake_yahoo.calls
    for name in ("hold", "equal_weight", "spo", "mpo-tuned", "two_stage", "dmpo_qp", "dmpo_mpo"):
        assert f"\n{name} " in out, out
    (run_dir,) = (tmp_path / "runs").iterdir()
    for rel in ("dmpo/dmpo.pt", "dmpo/two_stage.pt", "report.html", "compare/run.json",
                "tuning/tuning.json", "studies.journal"):  # fmt: skip
        assert (run_dir / rel).exists(), rel

"""The ``mpo`` command line, as the README uses it."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from plugins.fixtures import example_plugin  # noqa: F401  (a fixture)
from typer.testing import CliRunner

from mpo.cli import app

ROOT = Path(__file__).parents[1]
runner = CliRunner()


def _readme_compare_specs() -> list[str]:
    """The spec files named by the README's main command."""
    text = (ROOT / "scripts" / "setup_and_run.sh").read_text()
    line = next(ln for ln in text.splitlines() if ln.startswith("mpo compare"))
    return [tok for tok in line.split() if tok.endswith(".toml")]


def test_readme_main_job_short_window(tmp_path):
    """The main job's comparison, classic policies only (the learned ones need the checkpoints
    that its `mpo train` step writes; tests/test_learned.py covers them)."""
    specs = _readme_compare_specs()
    learned = {"policies/two_stage.toml", "policies/dmpo_qp.toml", "policies/dmpo_mpo.toml"}
    assert learned <= set(specs)
    specs = [s for s in specs if s not in learned]
    assert len(specs) == 4
    result = runner.invoke(
        app,
        [
            "compare",
            *specs,
            "--backtest-start",
            "2022-10-03",
            "--no-progress",
            "--out",
            str(tmp_path),
        ],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    out = result.output
    assert "ASSUMED constant average daily volume" in out  # sp20 has no volumes: stated
    for name in ("hold", "equal_weight", "spo", "mpo"):
        assert re.search(rf"^{name}\s", out, flags=re.M), out
    (run_dir,) = tmp_path.iterdir()
    meta = json.loads((run_dir / "run.json").read_text())
    assert set(meta["metrics"]) == {"hold", "equal_weight", "spo", "mpo"}
    assert meta["window"]["start"] == "2022-10-03"
    assert "<table" in (run_dir / "report.html").read_text()


def test_backtest_on_dow30_with_observed_volumes(tmp_path):
    result = runner.invoke(
        app,
        [
            "backtest",
            str(ROOT / "policies" / "equal_weight.toml"),
            "--data",
            "dow30-2014",
            "--no-progress",
            "--out",
            str(tmp_path),
        ],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    assert "observed dollar volumes" in result.output
    assert "replaces the specs' default data" in result.output


def test_backtest_on_a_plugin_data_source(example_plugin, tmp_path):  # noqa: F811
    """``--data`` finds sources that installed packages declare as entry points."""
    result = runner.invoke(
        app,
        [
            "backtest",
            str(ROOT / "policies" / "hold.toml"),
            "--data",
            "example_market",
            "--no-report",
            "--no-progress",
            "--out",
            str(tmp_path / "runs"),
        ],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    assert "data: example_market, 4 assets" in result.output
    assert re.search(r"^hold\s", result.output, flags=re.M), result.output
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert (run_dir / "run.json").is_file() and not (run_dir / "report.html").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["backtest", "policies/nope.toml"], "does not exist"),
        (["backtest", "policies/spo.toml", "--data", "nasdaq"], "sp20"),
        (["backtest", "policies/spo.toml", "--tickers", "AAPL,ZZZZ"], "ZZZZ"),
        (["backtest", "policies/spo.toml", "--backtest-start", "2011-06-01"], "history"),
    ],
)
def test_bad_input_exits_with_specific_message(args, message, monkeypatch):
    monkeypatch.chdir(ROOT)
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert "error:" in result.output and message in result.output


def test_plugin_policy_kind_and_data_source_from_a_toml_spec(example_plugin, tmp_path):  # noqa: F811
    """An installed plugin adds a policy kind (with its own [params]) and a data source."""
    spec = tmp_path / "invvol.toml"
    spec.write_text(
        'name = "invvol"\nkind = "example_kind"\n[params]\nlookback = 40\nevery = 10\n'
        '[data]\nsource = "example_market"\n'
    )
    out = tmp_path / "runs"
    result = runner.invoke(
        app, ["backtest", str(spec), "--no-report", "--no-progress", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert "invvol" in result.output and "example_market" in result.output
    (run_dir,) = list(out.iterdir())
    import pandas as pd

    w = pd.read_parquet(run_dir / "invvol" / "weights.parquet")
    assert (w.iloc[:, :-1] > 0).all().all()  # inverse volatility holds every asset
    assert w.iloc[:, :-1].std().max() > 0  # and rebalances
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "b"\nkind = "example_kind"\n[params]\nlookback = 1\n')
    result = runner.invoke(app, ["backtest", str(bad), "--data", "example_market"])
    assert result.exit_code == 2 and "params.lookback" in result.output

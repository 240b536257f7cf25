"""``mpo train``: the table, the run folder, the shipped spec, and spec errors."""

from __future__ import annotations

import json
import re
from pathlib import Path

import _helpers  # noqa: F401  (one torch thread)
import typer
from cli_helpers import subcommand_app
from typer.testing import CliRunner

from mpo.learn.checkpoint import check_compatible, load_checkpoint
from mpo.learn.cli import register
from mpo.learn.config import load_train_spec
from mpo.learn.options import QPOptions

ROOT = Path(__file__).parents[2]
runner = CliRunner()

SPEC = """
name = "tiny"
[data]
source = "synthetic"
n_assets = 5
n_periods = 360
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
w_max = 0.5
[train]
epochs = 2
batch_size = 32
max_batches = 2
[baselines]
two_stage_epochs = 1
direct_epochs = 1
lw_lookback = 60
"""


def _app() -> typer.Typer:
    return subcommand_app(register)


def test_train_prints_the_table_and_writes_the_run_folder(tmp_path):
    spec = tmp_path / "tiny.toml"
    spec.write_text(SPEC)
    out = tmp_path / "runs"
    result = runner.invoke(
        _app(), ["train", str(spec), "--out", str(out), "--seed", "3", "--no-progress"],
        catch_exceptions=False,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    for name in ("dmpo", "two_stage", "direct", "equal_weight"):
        assert re.search(rf"^{name}\s+[+-]\d", result.output, flags=re.M), result.output
    assert "val Sharpe" in result.output and "test turnover/yr" in result.output
    (run_dir,) = out.iterdir()
    for f in ("dmpo.pt", "two_stage.pt", "direct.pt", "results.json", "curves.png"):
        assert (run_dir / f).stat().st_size > 0, f
    res = json.loads((run_dir / "results.json").read_text())
    assert res["seed"] == 3 and res["spec"]["train"]["seed"] == 3
    assert res["data"]["fingerprint"] and res["versions"]["torch"]
    assert set(res["metrics"]) == {"dmpo", "two_stage", "direct", "equal_weight"}
    for by_split in res["metrics"].values():
        assert by_split["test"]["max_violation"] <= 1e-8
    ck = load_checkpoint(run_dir / "dmpo.pt")
    assert ck.tickers == res["data"]["tickers"] and ck.seed == 3
    # the QP options alone in qp_config; the costs (the policy [costs] + value) in the spec
    assert set(ck.qp_config) == set(QPOptions().to_dict())
    assert ck.extra["spec"]["costs"] == res["spec"]["costs"]
    assert res["spec"]["costs"]["spread"] == {"half_spread": 0.002}  # a policy spec's default
    assert "impact at a portfolio value of $1,000,000" in result.output
    check_compatible(ck, tickers=res["data"]["tickers"], fingerprint=res["data"]["fingerprint"])
    assert (run_dir / "curves.png").read_bytes()[:4] == b"\x89PNG"


def test_bad_spec_field_is_named(tmp_path):
    spec = tmp_path / "bad.toml"
    spec.write_text(SPEC.replace("delta = 0.2", "delta = -1").replace("hidden = 8", "hiden = 8"))
    result = runner.invoke(_app(), ["train", str(spec), "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert "qp.delta" in result.output and "encoder.hiden" in result.output


def test_shipped_spec_loads():
    spec = load_train_spec(ROOT / "policies" / "dmpo.toml")
    assert spec.data.source == "sp20" and spec.data.adv is not None
    assert spec.costs.half_spread == 0.001 == spec.qp_options().gamma
    assert spec.train.remedy in ("l1_penalty", "larger_delta", "learned_delta", "curriculum")


def test_old_kappa_spec_loads_with_the_same_meaning(tmp_path):
    """``kappa`` (older training specs) is the L1 cost per unit traded: ``half_spread``."""
    old, new = tmp_path / "old.toml", tmp_path / "new.toml"
    old.write_text(SPEC + "[costs]\nkappa = 0.001\nimpact = 0.0\n")
    new.write_text(SPEC + "[costs]\nhalf_spread = 0.001\nimpact = 0.0\n")
    a, b = load_train_spec(old), load_train_spec(new)
    assert a == b and a.costs.spread.half_spread == 0.001 and a.costs.impact.b == 0.0
    assert a.qp_options().gamma == 0.001


def test_a_cost_term_without_training_formula_is_a_named_spec_error(tmp_path):
    spec = tmp_path / "fee.toml"
    spec.write_text(SPEC + "[costs]\nshort_fee = 1.0\n")
    result = runner.invoke(_app(), ["train", str(spec), "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert "costs" in result.output and "'holding' has no training formula" in result.output


def test_an_os_error_is_one_message(tmp_path, monkeypatch):
    """A read-only or unwritable --run-dir is `error: ...` with exit code 2, no traceback."""
    import mpo.learn.cli as cli

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(tmp_path / "ro" / "dmpo.pt"))

    monkeypatch.setattr(cli, "run_experiment", denied)
    spec = tmp_path / "tiny.toml"
    spec.write_text(SPEC)
    result = runner.invoke(_app(), ["train", str(spec), "--run-dir", str(tmp_path / "ro")])
    assert result.exit_code == 2, result.output
    assert "error: Permission denied" in result.output and "dmpo.pt" in result.output
    assert "Traceback" not in result.output


def test_risk_feature_windows_come_from_the_spec(tmp_path):
    spec = tmp_path / "risk.toml"
    spec.write_text(
        SPEC.replace(
            "[features]\nwindow = 5",
            '[features]\nwindow = 5\nfeatures = ["returns", "drawdown", "cvar"]\n'
            "drawdown_window = 30\nvar_level = 0.9",
        )
    )
    fs = load_train_spec(spec).feature_spec()
    assert fs.features == ("returns", "drawdown", "cvar")
    assert fs.drawdown_window == 30 and fs.var_level == 0.9
    assert fs.var_window == 63 and fs.downside_window == 21  # FeatureSpec's defaults
    assert load_train_spec(spec).model_dump()["features"]["downside_window"] is None


def test_regime_loss_is_refused_by_mpo_train_until_it_has_labels(tmp_path):
    spec = tmp_path / "regime.toml"
    spec.write_text(
        SPEC.replace("[encoder]\nhidden = 8", "[encoder]\nhidden = 8\nregimes = 2").replace(
            "[train]\nepochs = 2", "[train]\nepochs = 2\nregime_loss = 0.5"
        )
    )
    result = runner.invoke(_app(), ["train", str(spec), "--run-dir", str(tmp_path / "r")])
    assert result.exit_code == 2, result.output
    assert "regime_loss = 0.5: mpo train has no regime labels" in result.output

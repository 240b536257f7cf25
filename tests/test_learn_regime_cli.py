"""Planted regimes through ``mpo train``: ``[data.regimes]``, ``[train] regime_loss`` on their
labels (the run, ``--trials``, the walk-forward refit) and the regime head's scores."""

from __future__ import annotations

import copy
import json
import math
import re
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch
import typer
from cli_helpers import subcommand_app
from typer.testing import CliRunner

import mpo.learn.train as train_mod
from mpo.data.synthetic import RegimeSwitching, make_synthetic, simulate_market
from mpo.errors import SpecError
from mpo.learn.cli import load_training_data, load_training_market, register, run_experiment
from mpo.learn.config import parse_train_spec
from mpo.learn.dataset import chronological_split, make_dataset
from mpo.learn.refit import train_model
from mpo.learn.regimes import format_regime_scores, regime_scores
from mpo.learn.train import train_dmpo

torch.set_num_threads(1)  # tiny batched solves: threads cost ~10x on 2 cores

README = Path(__file__).parents[1] / "README.md"

#: A training spec small enough for a second-scale ``mpo train``.
TINY = {
    "name": "tiny",
    "data": {"source": "synthetic", "n_assets": 5, "n_periods": 360, "predictability": 0.5},
    "features": {"window": 5},
    "split": {"val": 0.2, "test": 0.2},
    "encoder": {"hidden": 8, "rank": 2, "mu_scale": 0.01},
    "qp": {"delta": 0.2, "w_max": 0.5},
    "train": {"epochs": 2, "batch_size": 32, "max_batches": 2},
    "baselines": {"two_stage_epochs": 1, "direct_epochs": 1, "lw_lookback": 60},
}


def _spec(**sections):
    data = copy.deepcopy(TINY)
    for key, values in sections.items():
        data[key] = {**data.get(key, {}), **values}
    return data


def _toml(data: dict) -> str:
    def value(v):
        return json.dumps(v)  # numbers, strings and (nested) lists are TOML too

    lines = []
    for key, v in data.items():
        if not isinstance(v, dict):
            lines.append(f"{key} = {value(v)}")
    for section, body in data.items():
        if isinstance(body, dict):
            lines.append(f"[{section}]")
            lines += [f"{k} = {value(v)}" for k, v in body.items() if not isinstance(v, dict)]
            for sub, table in body.items():
                if isinstance(table, dict):
                    lines.append(f"[{section}.{sub}]")
                    lines += [f"{k} = {value(v)}" for k, v in table.items()]
    return "\n".join(lines) + "\n"


def _readme_regime_block() -> dict:
    blocks = re.findall(r"```toml\n(.*?)```", README.read_text(), flags=re.S)
    (block,) = [b for b in blocks if "[data.regimes]" in b]
    return tomllib.loads(block)


def _app() -> typer.Typer:
    return subcommand_app(register)


# --- the spec --------------------------------------------------------------------------


def test_data_regimes_parse_with_regime_switchings_defaults():
    assert parse_train_spec(_spec()).data.regimes is None  # unset: no planted regimes
    empty = parse_train_spec(_spec(data={"regimes": {}})).data.regimes
    assert empty.switching() == RegimeSwitching() and empty.n_regimes == 2
    three = {"stay": [0.9, 0.8, 0.7], "vol_scale": [1, 1.5, 3], "factor_means": [[0], [], [1e-4]]}
    got = parse_train_spec(_spec(data={"regimes": three})).data.regimes.switching()
    assert got == RegimeSwitching((0.9, 0.8, 0.7), (1.0, 1.5, 3.0), ((0.0,), (), (1e-4,)))
    # the README's block is a valid spec section and plants the default pair
    block = _readme_regime_block()
    spec = parse_train_spec(_spec(**block))
    assert spec.data.regimes.switching() == RegimeSwitching()
    assert spec.encoder.regimes == 2 and spec.train.regime_loss == 0.5


@pytest.mark.parametrize(
    "regimes, message",
    [
        ({"stay": [0.9]}, r"data\.regimes\.stay: List should have at least 2 items"),
        ({"stay": [0.9, 1.0]}, r"data\.regimes\.stay\.1: Input should be less than 1"),
        ({"stay": [0.9, -0.1]}, r"data\.regimes\.stay\.1: Input should be greater than or"),
        ({"vol_scale": [1.0, 0.0]}, r"data\.regimes\.vol_scale\.1: Input should be greater"),
        ({"vol_scale": [1.0, math.inf]}, r"vol_scale\.1: Input should be a finite number"),
        ({"factor_means": [[0.0], [math.nan]]}, r"factor_means\.1\.0: Input should be a finite"),
        ({"stay": [0.9, 0.9, 0.9]}, r"need one entry per regime: got 3 stay, 2 vol_scale"),
        ({"factor_means": [[0, 0, 0, 1e-4], [0]]}, r"factor_means rows have at most 3 entries"),
        ({"persistence": [0.9, 0.9]}, r"unknown field 'data\.regimes\.persistence'"),
    ],
)
def test_bad_data_regimes_name_the_field(regimes, message):
    with pytest.raises(SpecError, match=message):
        parse_train_spec(_spec(data={"regimes": regimes}))


def test_regime_loss_needs_a_head_for_every_planted_regime():
    with pytest.raises(SpecError, match=r"encoder\.regimes = 1 is fewer than the 2 planted"):
        parse_train_spec(
            _spec(data={"regimes": {}}, encoder={"regimes": 1}, train={"regime_loss": 0.5})
        )
    # without regime_loss a smaller (or larger) head is allowed: it only mixes mu heads
    parse_train_spec(_spec(data={"regimes": {}}, encoder={"regimes": 1}))


# --- the market ------------------------------------------------------------------------


def test_synthetic_market_without_regimes_is_bit_identical():
    spec = parse_train_spec(
        {"data": {"source": "synthetic", "n_assets": 4, "n_periods": 200, "predictability": 0.5,
                  "seed": 3}}
    )  # fmt: skip
    market, labels = load_training_data(spec, None, None, None)
    assert labels is None
    # fingerprints of mpo train's market before [data.regimes] existed (the same spec)
    assert market.fingerprint() == "645fc4e15a52f706"
    assert load_training_market(spec, "synthetic", 5, 2e7).fingerprint() == "168c6f5ee2cbc816"
    ref = make_synthetic(n_assets=4, n_periods=200, seed=3, predictability=0.5)
    np.testing.assert_array_equal(market.returns.to_numpy(), ref.returns.to_numpy())

    planted = spec.with_updates(data={"regimes": {}})
    m1, lab1 = load_training_data(planted, None, None, None)
    m2, lab2 = load_training_data(planted, None, None, None)
    sim = simulate_market(n_assets=4, n_periods=200, seed=3, predictability=0.5,
                          regimes=RegimeSwitching())  # fmt: skip
    assert m1.fingerprint() == m2.fingerprint() != market.fingerprint()
    assert lab1.equals(lab2) and lab1.equals(sim.truth.regimes)
    assert lab1.index.equals(m1.returns.index) and set(lab1.unique()) == {0, 1}
    # --seed draws another path
    _, lab3 = load_training_data(planted, None, 4, None)
    assert not lab3.equals(lab1)


# --- mpo train -------------------------------------------------------------------------


def test_mpo_train_teaches_planted_regimes_and_records_the_head_scores(tmp_path):
    path = tmp_path / "regimes.toml"
    data = _spec()
    for section, values in _readme_regime_block().items():  # the README's lines, as written
        data[section] = {**data.get(section, {}), **values}
    path.write_text(_toml(data))
    run = tmp_path / "run"
    result = CliRunner().invoke(
        _app(), ["train", str(path), "--run-dir", str(run), "--no-progress"],
        catch_exceptions=False,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "regime head against 2 planted regimes (regime_loss 0.5)" in result.output
    assert re.search(r"dmpo: val accuracy \d+% \(majority \d+%\), cross-entropy", result.output)
    results = json.loads((run / "results.json").read_text())
    rec = results["regimes"]
    assert rec["n_regimes"] == 2 and rec["regime_loss"] == 0.5 and list(rec["models"]) == ["dmpo"]
    scores = rec["models"]["dmpo"]
    assert set(scores) == {"train", "val", "test"}
    for split in ("val", "test"):
        s = scores[split]
        assert s["n"] == results["splits"][split]["samples"]
        for key in ("accuracy", "majority", "matched_accuracy"):
            assert 0 <= s[key] <= 1
        assert s["matched_accuracy"] >= s["accuracy"]
        assert math.isfinite(s["cross_entropy"]) and s["prior_cross_entropy"] > 0
    assert results["spec"]["data"]["regimes"]["stay"] == [0.98, 0.95]


def test_regime_loss_without_labels_is_a_spec_error_naming_the_fix(tmp_path):
    path = tmp_path / "no_labels.toml"
    path.write_text(_toml(_spec(encoder={"regimes": 2}, train={"regime_loss": 0.5})))
    result = CliRunner().invoke(_app(), ["train", str(path), "--run-dir", str(tmp_path / "r")])
    assert result.exit_code == 2, result.output
    out = " ".join(result.output.split())
    assert "regime_loss = 0.5: mpo train has no regime labels for the 'synthetic' data" in out
    assert "Add a [data.regimes] table" in out and "--data synthetic" in out
    assert not (tmp_path / "r" / "dmpo.pt").exists()
    # the Python API: a market without labels
    spec = parse_train_spec(_spec(encoder={"regimes": 2}, train={"regime_loss": 0.5}))
    market = load_training_market(spec, None, None, None)
    with pytest.raises(SpecError, match="mpo train has no regime labels"):
        run_experiment(spec, market, tmp_path / "api", progress=False)
    with pytest.raises(SpecError, match="the walk-forward refit has no regime labels"):
        train_model(spec, market, "dmpo", tmp_path / "fold")
    train_model(spec.with_updates(train={"epochs": 1}), market, "direct", tmp_path / "fold")


def _counting(monkeypatch) -> list:
    calls = []
    real = train_mod.with_regime_loss

    def spy(batch_loss, model, windows, labels, weight):
        calls.append((labels, weight))
        return real(batch_loss, model, windows, labels, weight)

    monkeypatch.setattr(train_mod, "with_regime_loss", spy)
    return calls


def test_trials_and_the_refit_train_on_the_labels(tmp_path, monkeypatch):
    calls = _counting(monkeypatch)
    spec = parse_train_spec(
        _spec(data={"regimes": {}}, encoder={"regimes": 2}, train={"regime_loss": 0.5})
    )
    market, labels = load_training_data(spec, None, None, None)
    res = run_experiment(spec, market, tmp_path / "tr", progress=False, trials=1, regimes=labels)
    assert calls and all(w == 0.5 and bool((lab >= 0).all()) for lab, w in calls)
    assert res["trials"]["selected"]["number"] == 0
    assert set(res["regimes"]["models"]["dmpo"]) == {"train", "val", "test"}

    n = len(calls)
    out = train_model(spec, market, "dmpo", tmp_path / "fold", regimes=labels)
    assert len(calls) == n + 1 and Path(out["checkpoint"]).is_file()


def test_the_auxiliary_loss_teaches_the_regime_head():
    sim = simulate_market(n_assets=4, n_periods=300, seed=2, regimes=RegimeSwitching())
    ce = {}
    for weight in (None, 20.0):
        spec = parse_train_spec(
            _spec(features={"window": 5, "features": ["returns", "volatility"]},
                  encoder={"regimes": 2}, costs={"half_spread": 5e-4},
                  train={"regime_loss": weight, "lr": 3e-2, "max_batches": 3, "epochs": 2})
        )  # fmt: skip
        ds = make_dataset(sim.data, spec.feature_spec(), spec.cost_model().estimates)
        train, val, test = chronological_split(ds, 0.2, 0.2, None)
        tr = train_dmpo(spec, ds, train, val, progress=False, regimes=sim.truth.regimes)
        scores = regime_scores(tr.model, ds, (train, val, test), sim.truth.regimes)
        ce[weight] = scores["train"]["cross_entropy"]
    # same seed, same initial model: only the auxiliary term differs
    assert ce[20.0] < ce[None] - 0.1, ce
    # labels missing on the test dates: that split is scored as having none
    partial = sim.truth.regimes[sim.truth.regimes.index < test.start]
    scores = regime_scores(tr.model, ds, (train, val, test), partial)
    assert scores["test"]["n"] == 0 and scores["test"]["accuracy"] is None
    assert scores["val"]["n"] == len(val)
    text = format_regime_scores({"n_regimes": 2, "regime_loss": 20.0, "models": {"dmpo": scores}})
    assert "test: no labels" in text and "val accuracy" in text

"""``mpo train --trials N``: validation-only selection, a resumable study, the DSR recorded."""

from __future__ import annotations

import json

import _helpers  # noqa: F401  (one torch thread)
import numpy as np
import pandas as pd
import pytest
import torch
import typer
from typer.testing import CliRunner

from mpo.data.market import MarketData
from mpo.errors import TuningError
from mpo.learn import cli as train_cli
from mpo.learn.checkpoint import load_checkpoint
from mpo.learn.config import parse_train_spec
from mpo.learn.dataset import make_dataset
from mpo.learn.trials import (
    SEARCH_SPACE,
    SplitDates,
    aligned_splits,
    find_unfinished_search,
    run_search,
    trial_spec,
)

SPEC = {
    "name": "tiny",
    "data": {"source": "synthetic", "n_assets": 4, "n_periods": 330, "predictability": 0.5},
    "features": {"window": 5, "features": ["returns"]},
    "split": {"val": 0.2, "test": 0.2},
    "encoder": {"hidden": 8, "rank": 2, "mu_scale": 0.01},
    "qp": {"delta": 0.2, "w_max": 0.6},
    "train": {"epochs": 1, "batch_size": 32, "max_batches": 2},
    "baselines": {"two_stage_epochs": 1, "direct_epochs": 1, "lw_lookback": 60},
}


@pytest.fixture(scope="module")
def spec():
    return parse_train_spec(SPEC)


@pytest.fixture(scope="module")
def market(spec):
    return train_cli.load_training_market(spec, None, None, None)


def _search(spec, market, run_dir, n):
    return train_cli._search(spec, market, run_dir, n, progress=False, force=False)


def _perturbed_after(market: MarketData, after: str) -> MarketData:
    rng = np.random.default_rng(0)
    r = market.returns.copy()
    late = r.index >= pd.Timestamp(after)
    r.loc[late] = r.loc[late] * rng.uniform(-3, 3, size=r.loc[late].shape) + 0.01
    return MarketData(returns=r, cash_return=market.cash_return, volumes=market.volumes,
                      name=market.name, adv=market.adv)  # fmt: skip


def test_every_trial_shares_the_split_dates(spec, market):
    dates = SplitDates.cut(spec, market)
    for window in (5, 30):
        sp = trial_spec(spec, {"window": window})
        ds = make_dataset(market, sp.feature_spec(), sp.cost_model().estimates)
        train, val, test = aligned_splits(ds, dates)
        assert str(val.start.date()) == dates.val[0] and str(val.end.date()) == dates.val[1]
        assert str(test.start.date()) == dates.test[0] and str(test.end.date()) == dates.test[1]
        assert train.end < val.start and val.positions[0] - train.positions[-1] > window


def test_the_selection_uses_validation_only(spec, market, tmp_path):
    """Perturbing every return of the test window changes neither a trial nor the choice."""
    dates = SplitDates.cut(spec, market)
    a = _search(spec, market, tmp_path / "a", 2)
    b = _search(spec, _perturbed_after(market, dates.test[0]), tmp_path / "b", 2)
    strip = lambda rec: [(t["params"], t["value"]) for t in rec["trials"]]  # noqa: E731
    assert strip(a.record) == strip(b.record)
    assert a.record["selected"] == b.record["selected"]
    assert len({json.dumps(t["params"]) for t in a.record["trials"]}) == 2  # two points tried
    # ... while the perturbation does reach the test split
    ds_a = make_dataset(market, spec.feature_spec())
    test = aligned_splits(ds_a, dates)[2]
    ds_b = make_dataset(_perturbed_after(market, dates.test[0]), spec.feature_spec())
    assert not torch.equal(ds_a.returns[test.positions], ds_b.returns[test.positions])


def test_a_rerun_resumes_the_study(spec, market, tmp_path, monkeypatch):
    first = _search(spec, market, tmp_path, 1)
    calls = []
    real = train_cli._train_durably

    def counting(kind, sp, folder, *args, **kw):
        calls.append(folder)
        return real(kind, sp, folder, *args, **kw)

    monkeypatch.setattr(train_cli, "_train_durably", counting)
    again = _search(spec, market, tmp_path, 1)  # finished: nothing trained
    assert calls == [] and again.record["trials"] == first.record["trials"]
    more = _search(spec, market, tmp_path, 2)  # one new trial, the first one kept
    assert len(calls) == 1
    assert more.record["trials"][0] == first.record["trials"][0]
    assert [t["number"] for t in more.record["trials"]] == [0, 1]
    with pytest.raises(TuningError, match="different configuration"):
        _search(spec.with_updates(train={"lr": 0.02}), market, tmp_path, 2)
    # a rerun without --run-dir finds this unfinished folder by its study
    assert find_unfinished_search([tmp_path], spec, market) == tmp_path
    assert find_unfinished_search([tmp_path], spec.with_updates(train={"lr": 0.02}), market) is None


def test_cli_trials_record_the_selection_and_the_dsr(spec, tmp_path):
    path = tmp_path / "tiny.toml"
    path.write_text(_toml(SPEC))
    app = typer.Typer()
    train_cli.register(app)
    app.command()(lambda: None)  # keep "train" a subcommand
    out = tmp_path / "run"
    args = ["train", str(path), "--run-dir", str(out), "--trials", "2", "--no-progress"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "deflated Sharpe ratio" in result.output
    res = json.loads((out / "results.json").read_text())
    rec = res["trials"]
    assert rec["n_trials"] == 2 and len(rec["trials"]) == 2
    dsr = rec["deflated"]
    assert dsr["n_trials"] == 2 and 0 <= dsr["dsr"] <= dsr["psr"] <= 1
    assert np.isfinite(dsr["trial_sharpe_variance"])
    sel = rec["selected"]
    assert sel["val_sharpe"] == max(t["value"] for t in rec["trials"])
    assert set(sel["params"]) == {p.name for p in SEARCH_SPACE}
    # the run's DMPO model is the selected trial's, evaluated under its spec
    run_ck = load_checkpoint(out / "dmpo.pt")
    trial_ck = load_checkpoint(out / sel["folder"] / "dmpo.pt")
    for k, v in trial_ck.state_dict.items():
        assert torch.equal(v, run_ck.state_dict[k])
    assert res["spec"]["train"]["lr"] == sel["params"]["lr"]
    assert res["spec"]["features"]["window"] == sel["params"]["window"]
    assert res["metrics"]["dmpo"]["val"]["sharpe"] == pytest.approx(sel["val_sharpe"], abs=1e-12)


def test_zero_trials_is_an_error(spec, market, tmp_path):
    with pytest.raises(TuningError, match="--trials must be >= 1"):
        run_search(spec, market, tmp_path, 0, train=None)


def _toml(data: dict) -> str:
    def value(v):
        return json.dumps(v)

    lines = [f"name = {value(data['name'])}"]
    for section, fields in data.items():
        if isinstance(fields, dict):
            lines.append(f"[{section}]")
            lines += [f"{k} = {value(v)}" for k, v in fields.items()]
    return "\n".join(lines) + "\n"

"""``mpo explain``: attribution of ``mu_hat`` and ``w*`` to features, assets and lags.

The market: 3 assets whose next-period return is driven by one feature alone, the volume
surprise (log dollar volume against its EWM mean) known at the decision; past returns
add nothing to it and volatility carries no signal. Two tiny LSTMs are fitted to it (MSE,
seeds 0 and 1, ~1 s each) and saved as the ``dmpo`` and ``two_stage`` checkpoints of one
run folder; the DMPO risk heads are constant (their input weights zeroed), so the
decisions of both models depend on the window through ``mu_hat`` only.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest
import torch
import typer
from cli_helpers import subcommand_app
from typer.testing import CliRunner

from mpo.data.market import MarketData
from mpo.errors import CheckpointError, DataError, SpecError
from mpo.learn.checkpoint import Checkpoint, save_checkpoint
from mpo.learn.dataset import FeatureSpec, compute_features, make_dataset
from mpo.learn.encoders import EncoderConfig
from mpo.learn.explain import (
    COLUMNS,
    explain,
    feature_table,
    find_checkpoints,
    format_feature_table,
    load_explained_model,
)
from mpo.learn.explain_cli import register, write_explanation
from mpo.learn.model import build_dmpo_model
from mpo.learn.options import QPOptions

torch.set_num_threads(1)

TICKERS = ["AAA", "BBB", "CCC"]
FEATURES = FeatureSpec(window=5, horizon=1, features=("returns", "volatility", "volume"))
QP = QPOptions(risk_aversion=0.02, gamma=0.0, eps=1e-3, w_max=None, delta=2.0)
DATE = "2011-03-01"
#: share of the total absolute attribution the driving feature must carry (trained model)
SHARE = 0.6


def driven_market(seed: int = 0, periods: int = 600) -> MarketData:
    """``r_t = 0.01 s_t + 0.002 e_t`` where ``s_t`` is the volume feature of ``t`` (the log
    dollar volume of ``t - 1`` against its EWM mean before: data before ``t`` only)."""
    rng = np.random.default_rng(seed)
    dates = pd.bdate_range("2010-01-04", periods=periods)
    frame = lambda x: pd.DataFrame(x, index=dates, columns=TICKERS)  # noqa: E731
    volumes = frame(1e8 * np.exp(rng.standard_normal((periods, len(TICKERS)))))
    noise = frame(0.002 * rng.standard_normal((periods, len(TICKERS))))
    cash = pd.Series(0.0, index=dates)
    only_volume = dataclasses.replace(FEATURES, features=("volume",))
    signal = compute_features(MarketData(noise, cash, volumes=volumes), only_volume)
    returns = noise.copy()
    returns.loc[signal.dates] += 0.01 * signal.values[..., 0]
    return MarketData(returns=returns, cash_return=cash, volumes=volumes, name="driven")


def encoder_config() -> EncoderConfig:
    return EncoderConfig(n_assets=3, n_features=3, window=5, horizon=1, hidden=8, rank=2,
                         mu_scale=1e-2)  # fmt: skip


def _fit_encoder(ds, seed: int = 0):
    """A DMPO model whose LSTM and mu head are fitted (MSE) to the next returns of ``ds``."""
    model = build_dmpo_model(encoder_config(), QP, seed)
    heads = model.encoder.heads
    with torch.no_grad():  # constant risk: the decision depends on the window through mu only
        heads.L.weight.zero_()
        heads.d.weight.zero_()
    pos = ds.positions[ds.positions < int(0.8 * len(ds.dates))]
    X, y = ds.windows(pos), ds.targets(pos)
    params = [p for name, p in model.named_parameters() if not name.startswith("encoder.heads.")]
    params += list(heads.mu.parameters())
    opt = torch.optim.AdamW(params, lr=0.05, weight_decay=0.3)
    for _ in range(80):
        opt.zero_grad()
        loss = ((model.views(X).mu - y) * 100).pow(2).mean()
        loss.backward()
        opt.step()
    return model


def _save(model, ds, path, kind: str) -> None:
    ck = Checkpoint(
        kind=kind,
        state_dict=model.state_dict(),
        encoder_config=model.encoder_config.to_dict(),
        feature_config=FEATURES.to_dict(),
        qp_config=QP,
        tickers=TICKERS,
        train_window=[str(ds.dates[0].date()), str(ds.dates[-1].date())],
        fingerprint=ds.fingerprint,
        seed=0,
    )
    save_checkpoint(ck, path)


@pytest.fixture(scope="module")
def market():
    return driven_market()


@pytest.fixture(scope="module")
def dataset(market):
    return make_dataset(market, FEATURES)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, dataset):
    """A run folder with ``dmpo.pt`` and ``two_stage.pt``: encoders fitted from two seeds."""
    folder = tmp_path_factory.mktemp("explain-run")
    for seed, kind in enumerate(("dmpo", "two_stage")):
        _save(_fit_encoder(dataset, seed), dataset, folder / f"{kind}.pt", kind)
    return folder


@pytest.fixture(scope="module")
def expl(run_dir, market):
    return explain(run_dir, market, [DATE])


def test_long_frame_has_every_axis(expl):
    f = expl.frame
    assert list(f.columns) == list(COLUMNS)
    assert set(f["model"]) == {"dmpo", "two_stage"}
    assert set(f["target"]) == {"mu_hat", "weights"}
    assert set(f["method"]) == {"saliency", "integrated_gradients"}
    assert set(f["feature"]) == set(FEATURES.features)
    assert set(f["asset"]) == set(TICKERS) == set(f["output"])
    assert sorted(f["lag"].unique()) == list(range(FEATURES.window))
    # per (model, target, method): outputs x lags x assets x features rows
    assert len(f) == 2 * 2 * 2 * 3 * 5 * 3 * 3
    assert (f["date"] == pd.Timestamp(DATE)).all()


def test_driving_feature_carries_most_attribution(expl):
    shares = feature_table(expl.frame)
    assert not shares.isna().any().any(), "a decision was pinned: no weight attributions"
    low = shares.loc["volume"]
    assert (low > SHARE).all(), f"volume's shares:\n{shares}"
    # ... at the newest lag (the volume of the period right before the return)
    f = expl.frame.assign(a=expl.frame["attribution"].abs())
    mu = f[(f["target"] == "mu_hat") & (f["feature"] == "volume")]
    by_lag = mu.groupby("lag")["a"].sum()
    assert by_lag.idxmax() == 0
    # ... and of the asset itself: each asset's mu_hat looks mostly at its own volume
    own = mu.groupby(["model", "output", "asset"])["a"].sum().unstack("asset")
    assert all(row.idxmax() == output for (_, output), row in own.iterrows())
    assert "volume" in format_feature_table(expl.frame)


def test_constructed_model_attributes_only_its_input(market, dataset, tmp_path):
    """Weights built so that only asset BBB's volume enters: every other input gets exactly
    zero attribution (checks the feature / asset labelling of the long frame)."""
    model = build_dmpo_model(encoder_config(), QP, 0)
    with torch.no_grad():
        W = model.encoder.lstm.weight_ih_l0.view(-1, 3, 3)  # (4h, asset, feature)
        keep = W[:, 1, 2].clone()
        W.zero_()
        W[:, 1, 2] = keep
    _save(model, dataset, tmp_path / "dmpo.pt", "dmpo")
    f = explain(tmp_path / "dmpo.pt", market, [DATE]).frame
    other = f[(f["asset"] != "BBB") | (f["feature"] != "volume")]
    assert (other["attribution"] == 0).all()
    mine = f[(f["asset"] == "BBB") & (f["feature"] == "volume")]
    assert (
        mine.groupby(["target", "method"])["attribution"].apply(lambda a: a.abs().sum()) > 0
    ).all()


def test_integrated_gradients_complete(expl):
    """Completeness: the attributions of one output sum to ``f(X) - f(0)``. ``value`` and
    ``baseline_value`` are separate forward passes. Tolerances: 1e-6 of the output's
    change for mu_hat (a smooth LSTM; Gauss-Legendre with 32 points gives ~1e-11), 1e-4 of
    the largest change for w* (the QP's solution is only piecewise smooth in mu: a path
    that crosses a change of active constraints converges more slowly; here the decision
    stays interior and the gap is ~1e-9). The gap is captum's recorded convergence delta."""
    c = expl.checks[expl.checks["method"] == "integrated_gradients"]
    diff = c["value"] - c["baseline_value"]
    gap = (c["total"] - diff).abs()
    np.testing.assert_allclose(gap, c["delta"].abs(), atol=1e-12)
    mu = c["target"] == "mu_hat"
    assert (gap[mu] <= 1e-6 * diff[mu].abs() + 1e-12).all()
    w = ~mu
    scale = diff[w].abs().max()
    assert scale > 0
    assert (gap[w] <= 1e-4 * scale).all(), c[w].to_string()


def test_future_data_do_not_change_attribution(run_dir, market):
    t = pd.Timestamp(DATE)
    i = market.calendar.get_loc(t)
    rng = np.random.default_rng(1)

    def perturbed(start: int) -> MarketData:
        r, v = market.returns.copy(), market.volumes.copy()
        r.iloc[start:] = 0.05 * rng.standard_normal(r.iloc[start:].shape)
        v.iloc[start:] = v.iloc[start:] * np.exp(rng.standard_normal(v.iloc[start:].shape))
        return MarketData(r, market.cash_return, volumes=v, name="driven")

    kw = {"methods": ("integrated_gradients",)}  # the two-stage w* reads past returns too
    base = explain(run_dir, market, [t], **kw).frame
    after = explain(run_dir, perturbed(i), [t], **kw).frame
    pd.testing.assert_frame_equal(base, after)
    # the same perturbation one period earlier is seen (the test can fail)
    before = explain(run_dir, perturbed(i - 1), [t], **kw).frame
    assert not np.allclose(base["attribution"], before["attribution"])


def test_pinned_decision_reported(run_dir, market, tmp_path, caplog):
    """A turnover limit of ~0 pins w* at w_prev: zero weight attributions, flagged as
    starved, a warning, ``-`` in the table and ``null`` shares in the JSON."""
    import logging

    with caplog.at_level(logging.WARNING, logger="mpo.learn.explain"):
        out = explain(run_dir / "dmpo.pt", market, [DATE], targets=("weights",),
                      methods=("saliency",), delta=1e-9)  # fmt: skip
    assert "gradient starvation" in caplog.text
    assert out.checks["starved"].all()
    assert (out.frame["attribution"] == 0).all()
    assert "-" in format_feature_table(out.frame)
    paths = write_explanation(out, tmp_path)
    summary = json.loads(paths["json"].read_text(), parse_constant=pytest.fail)
    assert summary["feature_shares"]["dmpo/weights/saliency"]["volume"] is None


def test_window_mean_baseline_and_dates(run_dir, market):
    out = explain(run_dir, market, ["2011-02-01", "2011-03-05"], targets=("mu_hat",),
                  methods=("integrated_gradients",), baseline="window_mean")  # fmt: skip
    # 2011-03-05 is a Saturday: the decision of the last trading date before it
    assert sorted(out.frame["date"].unique()) == [pd.Timestamp("2011-02-01"),
                                                  pd.Timestamp("2011-03-04")]  # fmt: skip
    assert out.settings["baseline"] == "window_mean"


def test_gradient_shap_is_seeded(run_dir, market):
    kw = {"methods": ("gradient_shap",), "targets": ("mu_hat",), "n_steps": 8}
    a = explain(run_dir / "dmpo.pt", market, [DATE], seed=3, **kw).frame["attribution"]
    b = explain(run_dir / "dmpo.pt", market, [DATE], seed=3, **kw).frame["attribution"]
    c = explain(run_dir / "dmpo.pt", market, [DATE], seed=4, **kw).frame["attribution"]
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def test_shap_gradient_explainer_optional(run_dir, market):
    try:
        import shap  # noqa: F401
    except ImportError:
        with pytest.raises(SpecError, match="pip install shap"):
            explain(run_dir / "dmpo.pt", market, [DATE], methods=("shap",), targets=("mu_hat",))
        return
    f = explain(run_dir / "dmpo.pt", market, [DATE], methods=("shap",), targets=("mu_hat",),
                n_steps=16).frame  # fmt: skip
    assert feature_table(f).loc["volume"].iloc[0] > SHARE


# ------------------------------------------------------------------ failures
def test_bad_checkpoint_paths(tmp_path, market):
    with pytest.raises(CheckpointError, match="does not exist"):
        explain(tmp_path / "missing.pt", market)
    with pytest.raises(CheckpointError, match="holds none of"):
        find_checkpoints(tmp_path)
    junk = tmp_path / "dmpo.pt"
    junk.write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError, match="corrupted"):
        explain(tmp_path, market)


def test_direct_checkpoint_refused(run_dir, tmp_path):
    ck = torch.load(run_dir / "dmpo.pt", weights_only=True)
    ck["kind"] = "direct"
    torch.save(ck, tmp_path / "direct.pt")
    with pytest.raises(CheckpointError, match="'direct' model"):
        load_explained_model(tmp_path / "direct.pt")


@pytest.mark.parametrize("date", ["2010-01-08", "2030-01-01"])
def test_date_outside_data(run_dir, market, date):
    with pytest.raises(DataError, match=f"date {date} is outside the decision dates"):
        explain(run_dir, market, [date])


def test_universe_mismatch(run_dir, market):
    other = MarketData(
        market.returns.rename(columns={"CCC": "ZZZ"}),
        market.cash_return,
        volumes=market.volumes.rename(columns={"CCC": "ZZZ"}),
    )
    with pytest.raises(CheckpointError, match=r"another universe.*\['CCC'\].*\['ZZZ'\]"):
        explain(run_dir, other, [DATE])
    # the same tickers in another order are reordered by name
    shuffled = market.select(["CCC", "AAA", "BBB"])
    a = explain(run_dir / "dmpo.pt", shuffled, [DATE], targets=("mu_hat",), methods=("saliency",))
    b = explain(run_dir / "dmpo.pt", market, [DATE], targets=("mu_hat",), methods=("saliency",))
    pd.testing.assert_frame_equal(a.frame, b.frame)


def test_bad_options(run_dir, market):
    with pytest.raises(SpecError, match="methods"):
        explain(run_dir, market, [DATE], methods=("lime",))
    with pytest.raises(SpecError, match="baseline"):
        explain(run_dir, market, [DATE], baseline="ones")
    with pytest.raises(SpecError, match="beyond the horizon"):
        explain(run_dir, market, [DATE], step=1)


# ------------------------------------------------------------------ outputs, CLI
def test_market_regenerated_from_the_spec(tmp_path):
    """Without --data, a synthetic training market is rebuilt from the recorded spec (and
    seed): the fingerprint of the training data."""
    from mpo.data.synthetic import make_synthetic
    from mpo.learn.config import TrainSpec
    from mpo.learn.explain import ExplainedModel
    from mpo.learn.explain_cli import load_explain_market

    spec = TrainSpec().with_updates(
        data={"source": "synthetic", "n_assets": 3, "n_periods": 120, "seed": 5},
        train={"seed": 7},
    )
    for data_seed in (5, 7):  # as in the spec; as `mpo train --seed 7` made it
        trained = make_synthetic(n_assets=3, n_periods=120, seed=data_seed,
                                 predictability=spec.data.predictability)  # fmt: skip
        ck = Checkpoint("dmpo", {}, {}, {}, {}, trained.tickers, [], trained.fingerprint(), 7,
                        extra={"spec": spec.model_dump()})  # fmt: skip
        em = ExplainedModel("dmpo", tmp_path / "dmpo.pt", ck, None, FEATURES, 252)
        assert load_explain_market([em], None, None).fingerprint() == trained.fingerprint()
    bare = dataclasses.replace(em, ckpt=dataclasses.replace(ck, extra={}))
    with pytest.raises(CheckpointError, match="give --data"):
        load_explain_market([bare], None, None)


def test_outputs_written(expl, tmp_path):
    keep = lambda f: f[(f["model"] == "dmpo") & (f["method"] == "saliency")]  # noqa: E731
    small = dataclasses.replace(expl, frame=keep(expl.frame), checks=keep(expl.checks))
    paths = write_explanation(small, tmp_path, "explain-x")
    frame = pd.read_csv(paths["csv"])
    assert list(frame.columns) == list(COLUMNS) and len(frame) == len(small.frame)
    checks = pd.read_csv(paths["checks"])
    assert len(checks) == 2 * 3 and set(checks["output"]) == set(TICKERS)
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads(paths["json"].read_text(), parse_constant=pytest.fail)  # no NaN
    assert summary["baseline"] == "zeros" and "dmpo/mu_hat/saliency" in summary["feature_shares"]
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave no temporaries


def _app() -> typer.Typer:
    return subcommand_app(register)


def test_cli(run_dir, market, tmp_path, monkeypatch):
    import mpo.learn.explain_cli as cli

    monkeypatch.setattr(cli, "load_explain_market", lambda models, data, adv: market)
    runner = CliRunner()
    res = runner.invoke(_app(), ["explain", str(run_dir), "--date", DATE, "--out",
                                 str(tmp_path), "--target", "mu_hat", "--method", "saliency"])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "volume" in res.output and "two_stage/mu_hat/saliency" in res.output
    assert (tmp_path / f"explain-{DATE}.csv").is_file()
    assert (tmp_path / f"explain-{DATE}.png").is_file()
    bad = runner.invoke(_app(), ["explain", str(tmp_path / "nope.pt")])
    assert bad.exit_code == 2 and "error: checkpoint" in bad.output
    bad = runner.invoke(_app(), ["explain", str(run_dir), "--date", "2031-01-01"])
    assert bad.exit_code == 2 and "outside the decision dates" in bad.output
    bad = runner.invoke(_app(), ["explain", str(run_dir), "--date", "01/03/2011"])
    assert bad.exit_code == 2 and "--date" in bad.output


@pytest.mark.slow
def test_cli_on_an_mpo_train_run(tmp_path):
    """End to end: ``mpo train``'s run folder, the data rebuilt from the recorded spec."""
    from mpo.learn.cli import load_training_market, run_experiment
    from mpo.learn.config import TrainSpec

    spec = TrainSpec().with_updates(
        data={"source": "synthetic", "n_assets": 4, "n_periods": 260, "predictability": 0.6},
        features={"window": 5, "features": ["returns", "volatility", "volume"]},
        encoder={"hidden": 8, "rank": 2, "mu_scale": 1e-2},
        split={"val": 0.2, "test": 0.2},
        train={"epochs": 1, "batch_size": 32, "max_batches": 2},
        baselines={"two_stage_epochs": 1, "direct_epochs": 1, "lw_lookback": 60},
    )
    run = tmp_path / "run"
    run_experiment(spec, load_training_market(spec, None, None, None), run, progress=False)
    res = CliRunner().invoke(_app(), ["explain", str(run), "--delta", "inf"])
    assert res.exit_code == 0, res.output
    frame = pd.read_csv(next(run.glob("explain-*[0-9].csv")))
    assert set(frame["model"]) == {"dmpo", "two_stage"}
    assert frame["attribution"].abs().sum() > 0


def test_cli_an_os_error_is_one_line(tmp_path, monkeypatch):
    """A read-only --out (here: PermissionError from the writer) is `error: ...`, exit 2."""
    import mpo.learn.explain_cli as cli

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(tmp_path / "ro" / "explain.csv"))

    monkeypatch.setattr(cli, "_run", denied)
    result = CliRunner().invoke(_app(), ["explain", str(tmp_path)])
    assert result.exit_code == 2, result.output
    assert "error: Permission denied" in result.output and "explain.csv" in result.output
    assert "Traceback" not in result.output

"""The ``cross_asset`` encoders: parameters independent of ``n``, permutation equivariance,
training end to end through the QP layer."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _helpers import tiny_data, tiny_market, tiny_spec

from mpo.errors import SpecError
from mpo.learn.encoders import ENCODERS, EncoderConfig, build_encoder, expected_param_count
from mpo.learn.encoders_cross import CrossAssetEncoder, CrossAssetGRUEncoder
from mpo.learn.model import seeded
from mpo.learn.train import build_dmpo_model, dmpo_batch_loss, train_dmpo


def _cfg(n: int, **kw) -> EncoderConfig:
    base = {"kind": "cross_asset", "n_assets": n, "n_features": 3, "window": 6, "horizon": 2,
            "hidden": 8, "layers": 2, "heads": 2, "factor": "lowrank_diag", "rank": 3}  # fmt: skip
    return EncoderConfig(**{**base, **kw})


def _encoder(cfg: EncoderConfig, seed: int = 0):
    return seeded(seed, lambda: build_encoder(cfg)).double().eval()


KINDS = ["cross_asset", "cross_asset_gru"]


def test_registered_and_selectable_by_a_training_spec():
    assert ENCODERS.get("cross_asset") is CrossAssetEncoder
    assert ENCODERS.get("cross_asset_gru") is CrossAssetGRUEncoder
    spec = tiny_spec(encoder={"kind": "cross_asset"})
    assert spec.encoder_config(5).kind == "cross_asset"


#: the optional heads of mpo.learn.heads (per asset: their parameters do not depend on n)
HEADS = {"regimes": 2, "asset_risk": True}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("factor", ["lowrank", "lowrank_diag"])
@pytest.mark.parametrize(("layers", "extra"), [(1, {}), (2, {}), (1, HEADS)])
def test_parameter_count_does_not_depend_on_the_number_of_assets(kind, factor, layers, extra):
    small, large = (_cfg(n, kind=kind, factor=factor, layers=layers, **extra) for n in (5, 50))
    counts = [sum(p.numel() for p in _encoder(c).parameters()) for c in (small, large)]
    assert counts[0] == counts[1] == expected_param_count(small) == expected_param_count(large)
    a, b = _encoder(small).state_dict(), _encoder(large).state_dict()
    assert {k: v.shape for k, v in a.items()} == {k: v.shape for k, v in b.items()}


@pytest.mark.parametrize("kind", KINDS)
def test_views_have_the_contract_shapes_for_any_n(kind):
    gen = torch.Generator().manual_seed(1)
    for n in (5, 11):
        v = _encoder(_cfg(n, kind=kind))(
            torch.randn(4, 6, n, 3, generator=gen, dtype=torch.float64)
        )
        assert v.mu.shape == (4, 2, n) and v.L.shape == (4, n, 3) and v.d.shape == (4, n)
        assert bool((v.d > 0).all()) and torch.isfinite(v.sigma(1e-6)).all()
    assert (
        _encoder(_cfg(5, factor="lowrank"))(torch.zeros(1, 6, 5, 3, dtype=torch.float64)).d is None
    )


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("seed", "extra"), [(0, {}), (1, {}), (2, HEADS)])
def test_permuting_assets_permutes_the_views(kind, seed, extra):
    n = 9
    enc = _encoder(_cfg(n, kind=kind, **extra), seed)
    if extra:  # the risk head starts at s = 1: give it weights so that s varies by asset
        with torch.no_grad():
            enc.heads.asset_risk.a.weight.normal_(
                0.0, 0.5, generator=torch.Generator().manual_seed(seed)
            )
    gen = torch.Generator().manual_seed(10 + seed)
    X = torch.randn(3, 6, n, 3, generator=gen, dtype=torch.float64)
    perm = torch.randperm(n, generator=gen)
    assert not torch.equal(perm, torch.arange(n))
    with torch.no_grad():
        v, vp = enc(X), enc(X[:, :, perm])
    tol = {"rtol": 1e-12, "atol": 1e-12}
    np.testing.assert_allclose(vp.mu.numpy(), v.mu[:, :, perm].numpy(), **tol)
    np.testing.assert_allclose(vp.L.numpy(), v.L[:, perm].numpy(), **tol)
    np.testing.assert_allclose(vp.d.numpy(), v.d[:, perm].numpy(), **tol)
    if extra:
        np.testing.assert_allclose(vp.regime.numpy(), v.regime.numpy(), **tol)  # invariant
        np.testing.assert_allclose(vp.asset_scale.numpy(), v.asset_scale[:, perm].numpy(), **tol)
        assert float(v.asset_scale.std()) > 1e-3
    S, Sp = v.sigma(1e-6), vp.sigma(1e-6)
    np.testing.assert_allclose(Sp.numpy(), S[:, perm][:, :, perm].numpy(), **tol)
    assert not torch.allclose(v.mu[:, :, perm], v.mu)  # the assets' views differ


@pytest.mark.parametrize("kind", KINDS)
def test_cross_asset_attention_mixes_assets(kind):
    enc = _encoder(_cfg(6, kind=kind))
    gen = torch.Generator().manual_seed(3)
    X = torch.randn(1, 6, 6, 3, generator=gen, dtype=torch.float64)
    Y = X.clone()
    Y[:, :, 5] += 1.0  # only asset 5's history changes
    with torch.no_grad():
        a, b = enc(X).mu[..., 0], enc(Y).mu[..., 0]
    assert float((a - b).abs().max()) > 1e-8  # asset 0's view depends on asset 5


def test_bad_configurations_are_refused():
    for kind in KINDS:
        with pytest.raises(SpecError, match=f"'{kind}' needs factor='lowrank'"):
            _cfg(5, kind=kind, factor="full")
    with pytest.raises(SpecError, match="heads must divide hidden"):
        _cfg(5, hidden=10, heads=3)


def _loss(step, pos, seed=0):
    return step(pos, 0, torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("kind", KINDS)
def test_trains_end_to_end_through_the_qp(kind):
    # risk scales that keep the QP off its vertices (README: gradient starvation)
    enc = {"kind": kind, "hidden": 8, "rank": 2, "l_scale": 0.05, "diag_scale": 0.01}
    spec = tiny_spec(encoder=enc)
    ds, (train, _, _) = tiny_data(spec, tiny_market(n_assets=6, predictability=0.5))
    model = build_dmpo_model(spec.encoder_config(ds.n_assets), spec.qp_options(), seed=0)
    step = dmpo_batch_loss(model, ds, spec)
    pos = train.positions[:32]
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    with torch.no_grad():
        before = float(_loss(step, pos)[0])
    for _ in range(5):
        opt.zero_grad()
        loss, stats = _loss(step, pos)
        loss.backward()
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        assert grads and all(bool(torch.isfinite(g).all()) for g in grads)
        assert sum(float(g.abs().sum()) for g in grads) > 0
        opt.step()
    with torch.no_grad():
        after = float(_loss(step, pos)[0])
    assert np.isfinite(before) and after < before
    assert stats["violation"] <= 1e-6


def test_train_dmpo_runs_with_the_cross_asset_encoder():
    spec = tiny_spec(encoder={"kind": "cross_asset"}, train={"epochs": 1, "max_batches": 2})
    ds, (train, val, _) = tiny_data(spec)
    trained = train_dmpo(spec, ds, train, val, progress=False)
    assert trained.model.encoder_config.kind == "cross_asset"
    assert len(trained.fit.history) == 1 and np.isfinite(trained.fit.history[0]["loss"])


@pytest.mark.slow
def test_mpo_train_writes_a_checkpoint_that_applies_to_a_changed_universe(tmp_path):
    from test_train_cli import SPEC, _app, runner

    from mpo.forecast.learned import LearnedViews

    spec = tmp_path / "cross.toml"
    spec.write_text(SPEC.replace("[encoder]\n", '[encoder]\nkind = "cross_asset"\n'))
    result = runner.invoke(
        _app(), ["train", str(spec), "--out", str(tmp_path / "runs"), "--no-progress"],
        catch_exceptions=False,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    (run_dir,) = (tmp_path / "runs").iterdir()
    views = LearnedViews(run_dir / "dmpo.pt")
    assert views.model.encoder_config.kind == "cross_asset"
    market = tiny_market(n_assets=7, n_periods=360, predictability=0.5)
    universe = [t for t in market.tickers if t != "S00"]  # S00 removed, S05 and S06 added
    views.check_universe(universe)
    t = market.calendar[200]
    past = market.returns_with_cash().loc[market.calendar < t][[*universe, market.cash_key]]
    vols = market.dollar_volumes.loc[past.index, universe]
    out = views.at(t, past, vols)
    sigma = views.covariance_at(t, past, vols)
    assert list(out["mu"].columns) == universe and np.isfinite(sigma.to_numpy()).all()

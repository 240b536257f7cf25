"""Regime and per-asset risk heads: shapes, the K = 1 and fresh-start identities, PSD risk,
gradients through the QP, the auxiliary loss, old checkpoints, the spec and the planted
regimes of the synthetic market."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from _helpers import tiny_spec  # (one torch thread)

from mpo.data import make_synthetic, simulate_market
from mpo.data.synthetic import RegimeSwitching
from mpo.errors import SpecError
from mpo.learn.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from mpo.learn.encoders import EncoderConfig, build_encoder, expected_param_count
from mpo.learn.heads import S_MAX
from mpo.learn.losses import (
    regime_cross_entropy,
    regime_labels,
    sample_w_prev,
    sharpe_loss,
    with_regime_loss,
)
from mpo.learn.model import build_dmpo_model, seeded
from mpo.learn.options import QPOptions
from mpo.learn.progress import RunIdentity

#: The keys of an encoder configuration written before the heads existed.
OLD_KEYS = {
    "kind", "n_assets", "n_features", "window", "horizon", "hidden", "layers", "heads",
    "factor", "rank", "dropout", "mu_scale", "l_scale", "diag_scale",
}  # fmt: skip


def _cfg(kind: str = "lstm", **kw) -> EncoderConfig:
    base = dict(kind=kind, n_assets=5, n_features=2, window=6, horizon=2, hidden=8, rank=2)
    return EncoderConfig(**{**base, **kw})


def _X(seed: int = 0, batch: int = 7) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 6, 5, 2, generator=g, dtype=torch.float64)


def _enc(cfg: EncoderConfig, seed: int = 0):
    return seeded(seed, lambda: build_encoder(cfg).double())


@pytest.mark.parametrize("kind", ["lstm", "transformer"])
@pytest.mark.parametrize("regimes,asset_risk", [(3, False), (0, True), (4, True)])
def test_shapes_probabilities_and_parameter_count(kind, regimes, asset_risk):
    cfg = _cfg(kind, regimes=regimes, asset_risk=asset_risk)
    enc = _enc(cfg)
    v = enc(_X())
    assert v.mu.shape == (7, 2, 5) and v.L.shape == (7, 5, 2) and v.d.shape == (7, 5)
    assert sum(p.numel() for p in enc.parameters()) == expected_param_count(cfg)
    if regimes:
        assert v.regime.shape == (7, regimes) and bool((v.regime > 0).all())
        torch.testing.assert_close(v.regime.sum(-1), torch.ones(7, dtype=torch.float64))
    else:
        assert v.regime is None
    if asset_risk:
        assert v.asset_scale.shape == (7, 5)
        assert bool((v.asset_scale >= 1 / S_MAX).all() and (v.asset_scale <= S_MAX).all())
    else:
        assert v.asset_scale is None
    sub = v.index(slice(2, 4))  # the optional fields follow the batch
    assert sub.mu.shape[0] == 2 and (sub.regime is None) == (regimes == 0)


@pytest.mark.parametrize("kind", ["lstm", "transformer"])
def test_one_regime_is_the_plain_head_and_a_fresh_mixture_starts_there(kind):
    plain = _enc(_cfg(kind))
    one = _enc(_cfg(kind, regimes=1))
    a, b = plain(_X()), one(_X())
    assert torch.equal(b.regime, torch.ones(7, 1, dtype=torch.float64))
    for x, y in ((a.mu, b.mu), (a.L, b.L), (a.d, b.d)):
        assert torch.equal(x, y)
    # the plain weights load into K = 1 (the regime classifier aside): the same views
    missing = one.load_state_dict(plain.state_dict(), strict=False).missing_keys
    assert sorted(missing) == ["heads.regime.logits.bias", "heads.regime.logits.weight"]
    assert torch.equal(one(_X()).mu, a.mu)
    # K = 3, same seed: the K experts start as copies, so the views start as the plain ones
    three = _enc(_cfg(kind, regimes=3))(_X())
    torch.testing.assert_close(three.mu, a.mu, rtol=1e-14, atol=1e-18)
    assert torch.equal(three.L, a.L)


@pytest.mark.parametrize("factor", ["full", "lowrank", "lowrank_diag"])
def test_risk_head_scales_sigma_and_keeps_it_psd(factor):
    plain_cfg, risk_cfg = _cfg(factor=factor), _cfg(factor=factor, asset_risk=True)
    plain, risk = _enc(plain_cfg), _enc(risk_cfg)
    with torch.no_grad():  # away from the zero initialisation, far into the bounds
        g = torch.Generator().manual_seed(1)
        for p in risk.heads.asset_risk.parameters():
            p.copy_(3.0 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    X = _X()
    with torch.no_grad():
        v0, v = plain(X), risk(X)
    s = v.asset_scale
    assert float(s.detach().std()) > 0.3 and bool((s >= 1 / S_MAX).all() and (s <= S_MAX).all())
    S = torch.diag_embed(s)
    inner = v0.sigma(0.0)  # L0 L0' (+ diag d0) of the same encoder without the head
    eps = 1e-6
    expected = S @ inner @ S + eps * torch.eye(5, dtype=torch.float64)
    torch.testing.assert_close(v.sigma(eps), expected, rtol=1e-12, atol=1e-18)
    assert float(torch.linalg.eigvalsh(v.sigma(eps)).min()) > 0
    fresh = _enc(risk_cfg)(X)  # zero-initialised head: s = 1, the plain views
    assert torch.equal(fresh.asset_scale, torch.ones(7, 5, dtype=torch.float64))
    torch.testing.assert_close(fresh.sigma(eps), v0.sigma(eps), rtol=0, atol=0)


def test_gradients_flow_through_the_qp_to_both_heads():
    # Sigma_hat at dmpo.toml's scale: interior solutions, d w / d Sigma != 0
    heads = {"regimes": 2, "asset_risk": True, "l_scale": 0.05, "diag_scale": 0.01}
    spec = tiny_spec(encoder=heads, qp={"w_max": 0.5})
    model = build_dmpo_model(spec.encoder_config(5), spec.qp_options(), seed=0)
    with torch.no_grad():  # experts apart (a fresh mixture gives p no gradient yet)
        model.encoder.heads.mu.weight.mul_(
            1 + 0.5 * torch.randn_like(model.encoder.heads.mu.weight)
        )
        model.encoder.heads.asset_risk.a.weight.normal_(0.0, 0.3)
    X = _X(batch=16)
    gen = torch.Generator().manual_seed(0)
    w_prev = sample_w_prev("random", 16, 5, 0.5, 0.5, gen)
    views = model.views(X)
    w, info = model.solve(views, w_prev, math.inf, gamma=1e-3)
    y = 0.01 * torch.randn(16, 5, generator=gen, dtype=torch.float64) + 0.002 * views.mu[:, 0]
    loss = sharpe_loss((w[:, 0] * y).sum(-1)) + regime_cross_entropy(
        views.regime, torch.arange(16) % 2
    )
    loss.backward()
    assert bool(info.converged.all())
    heads = model.encoder.heads
    for name, p in model.named_parameters():
        assert p.grad is not None and bool(torch.isfinite(p.grad).all()), name
    for p in (heads.regime.logits.weight, heads.asset_risk.a.weight, heads.mu.weight):
        assert float(p.grad.abs().max()) > 0


def test_regime_cross_entropy_labels_and_the_wrapped_loss():
    p = torch.tensor([[0.7, 0.3], [0.2, 0.8], [0.5, 0.5]], dtype=torch.float64)
    ce = regime_cross_entropy(p, torch.tensor([0, 1, -1]))
    torch.testing.assert_close(ce, -(math.log(0.7) + math.log(0.8)) / 2 * torch.ones((),
                               dtype=torch.float64))  # fmt: skip
    assert float(regime_cross_entropy(p, torch.tensor([-1, -1, -1]))) == 0.0
    dates = pd.bdate_range("2020-01-01", periods=5)
    labels = regime_labels(dates, pd.Series([1, 0, 1], index=dates[1:4]))
    assert labels.tolist() == [-1, 1, 0, 1, -1]

    spec = tiny_spec(encoder={"regimes": 2})
    model = build_dmpo_model(spec.encoder_config(5), spec.qp_options(), seed=0)
    X = _X(batch=10)
    base = lambda pos, epoch, gen: (torch.zeros((), dtype=torch.float64), {"n": len(pos)})  # noqa: E731
    lab = torch.tensor([0, 1] * 5)
    loss, stats = with_regime_loss(base, model, lambda pos: X[pos], lab, 0.5)(
        np.arange(10), 0, torch.Generator()
    )
    expected = regime_cross_entropy(model.views(X).regime, lab)
    torch.testing.assert_close(loss, 0.5 * expected)
    assert stats["n"] == 10 and stats["regime_ce"] == pytest.approx(float(expected.detach()))
    assert with_regime_loss(base, model, lambda pos: X[pos], None, None) is base  # unset: as is
    with pytest.raises(SpecError, match="needs regime labels"):
        with_regime_loss(base, model, lambda pos: X[pos], None, 0.5)
    plain = build_dmpo_model(tiny_spec().encoder_config(5), spec.qp_options(), seed=0)
    with pytest.raises(SpecError, match="regimes >= 1"):
        with_regime_loss(base, plain, lambda pos: X[pos], lab, 0.5)(np.arange(4), 0, None)


#: Views of the seed-0 LSTM and transformer of :func:`test_old_checkpoint_...` computed by
#: the encoders before the heads existed (commit 2b016c4): sums of mu, L and d.
PINNED = {
    "lstm": (-0.0006463295862817022, 0.0030640387430104447, 0.002832779502054024),
    "transformer": (0.03386571145457353, 0.05250905020181562, 0.001378119540693142),
}


@pytest.mark.parametrize("kind", ["lstm", "transformer"])
def test_old_checkpoint_loads_and_gives_identical_views(tmp_path, kind):
    cfg = _cfg(kind)
    assert set(cfg.to_dict()) == OLD_KEYS  # heads off: the layout written before them
    model = build_dmpo_model(cfg, QPOptions(), seed=0)
    old = {k: v for k, v in cfg.to_dict().items() if k in OLD_KEYS}
    ck = Checkpoint(kind="dmpo", state_dict=model.state_dict(), encoder_config=old,
                    feature_config={}, qp_config=QPOptions(), tickers=list("ABCDE"),
                    train_window=["2020-01-01", "2020-06-30"], fingerprint="f", seed=0)  # fmt: skip
    back = load_checkpoint(save_checkpoint(ck, tmp_path / "old.pt"))
    enc = EncoderConfig.from_dict(back.encoder_config)
    assert enc == cfg and enc.to_dict() == old and enc.regimes == 0 and not enc.asset_risk
    again = build_dmpo_model(enc, back.qp_options(), seed=1)
    again.load_state_dict(back.state_dict)  # strict: the same keys and shapes
    a, b = model.views(_X()), again.views(_X())
    assert all(torch.equal(x, y) for x, y in ((a.mu, b.mu), (a.L, b.L), (a.d, b.d)))
    assert b.regime is None and b.asset_scale is None
    want = PINNED[kind]
    got = (float(a.mu.sum()), float(a.L.sum()), float(a.d.sum()))
    np.testing.assert_allclose(got, want, rtol=1e-10)


def test_heads_round_trip_through_a_checkpoint(tmp_path):
    cfg = _cfg(regimes=3, asset_risk=True)
    assert cfg.to_dict()["regimes"] == 3 and cfg.to_dict()["asset_risk"] is True
    model = build_dmpo_model(cfg, QPOptions(), seed=0)
    ck = Checkpoint(kind="dmpo", state_dict=model.state_dict(), encoder_config=cfg.to_dict(),
                    feature_config={}, qp_config=QPOptions(), tickers=list("ABCDE"),
                    train_window=["2020-01-01", "2020-06-30"], fingerprint="f", seed=0)  # fmt: skip
    back = load_checkpoint(save_checkpoint(ck, tmp_path / "heads.pt"))
    assert EncoderConfig.from_dict(back.encoder_config) == cfg
    again = build_dmpo_model(EncoderConfig.from_dict(back.encoder_config), QPOptions(), seed=5)
    again.load_state_dict(back.state_dict)
    a, b = model.views(_X()), again.views(_X())
    assert torch.equal(a.mu, b.mu) and torch.equal(a.regime, b.regime)
    assert torch.equal(a.asset_scale, b.asset_scale)


def test_spec_fields_default_off_and_keep_older_runs_resumable():
    spec = tiny_spec()
    assert spec.encoder.regimes is None and spec.encoder.asset_risk is None
    assert spec.train.regime_loss is None
    assert set(spec.encoder_config(5).to_dict()) == OLD_KEYS
    old = spec.model_dump()
    for section, key in (("encoder", "regimes"), ("encoder", "asset_risk"),
                         ("train", "regime_loss")):  # fmt: skip
        del old[section][key]
    now = RunIdentity(spec.model_dump(), "f", 0)
    assert now.differences(RunIdentity(old, "f", 0)) == []
    on = tiny_spec(encoder={"regimes": 2, "asset_risk": True}, train={"regime_loss": 0.1})
    cfg = on.encoder_config(5)
    assert cfg.regimes == 2 and cfg.asset_risk is True
    with pytest.raises(SpecError, match="regime_loss"):
        tiny_spec(train={"regime_loss": 0.1})
    with pytest.raises(SpecError):
        tiny_spec(encoder={"regimes": -1})
    with pytest.raises(SpecError, match="regimes"):
        _cfg(regimes=1.5)


#: ``simulate_market(n_assets=4, n_periods=60, seed=3)`` before the regime option existed
#: (commit 2b016c4): returns[0], returns[-1] and the sum of the volumes.
PINNED_MARKET = (
    [-0.010412711639879994, -0.01812213583505481, 0.006966500450664244, -0.03141685604116126],
    [0.031149139593928735, -0.01576722658201257, 0.023248642103708538, -0.012080091046784185],
    29374725618.636036,
)


def test_planted_regimes_are_off_by_default_and_seeded():
    base = simulate_market(n_assets=4, n_periods=60, seed=3)
    off = simulate_market(n_assets=4, n_periods=60, seed=3, regimes=None)
    pd.testing.assert_frame_equal(base.data.returns, off.data.returns, check_exact=True)
    assert base.data.fingerprint() == off.data.fingerprint()
    assert base.truth.regimes is None and base.truth.regime_transition is None
    r0, r1, vsum = PINNED_MARKET
    np.testing.assert_allclose(base.data.returns.iloc[0], r0, rtol=1e-12)
    np.testing.assert_allclose(base.data.returns.iloc[-1], r1, rtol=1e-12)
    np.testing.assert_allclose(base.data.volumes.to_numpy().sum(), vsum, rtol=1e-12)

    kw = dict(n_assets=6, n_periods=3000, regimes=RegimeSwitching())
    a, b, c = (simulate_market(seed=s, **kw) for s in (1, 1, 2))
    pd.testing.assert_series_equal(a.truth.regimes, b.truth.regimes)
    pd.testing.assert_frame_equal(a.data.returns, b.data.returns, check_exact=True)
    assert not a.truth.regimes.equals(c.truth.regimes)
    s = a.truth.regimes
    assert set(s.unique()) == {0, 1} and s.index.equals(a.data.returns.index)
    assert 0.15 < s.mean() < 0.45  # stationary stress share 0.02 / 0.07 ~ 0.29
    assert (s.diff().abs() > 0).mean() < 0.05  # persistent spells
    f = a.truth.factor_returns
    ratio = f[s == 1].std() / f[s == 0].std()
    assert ratio.between(1.7, 2.3).all()  # vol_scale (1, 2)
    # the conditional mean moves by B (P[1] - P[0]) m with yesterday's regime (phi = 0)
    t = a.truth
    cond, prev = t.conditional_mean.iloc[1:], s.shift(1).iloc[1:]
    step = t.loadings.to_numpy() @ (
        (t.regime_transition.iloc[1] - t.regime_transition.iloc[0]).to_numpy()
        @ t.regime_factor_means.to_numpy()
    )
    np.testing.assert_allclose(cond[prev == 1].mean() - cond[prev == 0].mean(), step, atol=1e-15)
    assert float(np.abs(step).max()) > 1e-4
    plain = simulate_market(seed=1, n_assets=6, n_periods=3000).truth  # the same mu, B draws
    pi = np.array([0.05 / 0.07, 0.02 / 0.07])  # stationary law of stay = (0.98, 0.95)
    em = pi @ t.regime_factor_means.to_numpy()
    np.testing.assert_allclose(t.mean - plain.mean, t.loadings.to_numpy() @ em, rtol=1e-12)
    np.testing.assert_allclose(a.data.returns.var(), np.diag(t.covariance), rtol=0.15)
    with pytest.raises(ValueError, match="one entry per regime"):
        RegimeSwitching(stay=(0.9, 0.9), vol_scale=(1.0,))
    # make_synthetic passes the option on
    m = make_synthetic(n_assets=6, n_periods=3000, seed=1, regimes=RegimeSwitching())
    pd.testing.assert_frame_equal(m.returns, a.data.returns)

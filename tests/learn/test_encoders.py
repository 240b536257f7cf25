"""Encoders: one Views contract, documented shapes and parameter counts, gradients flow."""

from __future__ import annotations

import math

import pytest
import torch
from _helpers import tiny_data, tiny_spec  # (one torch thread)

from mpo.errors import SpecError
from mpo.learn.encoders import (
    ENCODERS,
    Encoder,
    EncoderConfig,
    ViewHeads,
    Views,
    build_encoder,
    expected_param_count,
)
from mpo.learn.train import train_dmpo


@pytest.mark.parametrize("kind", ["lstm", "transformer"])
@pytest.mark.parametrize("factor", ["full", "lowrank", "lowrank_diag"])
def test_views_shapes_and_parameter_count(kind, factor):
    cfg = EncoderConfig(
        kind=kind, n_assets=6, n_features=3, window=7, horizon=2, hidden=8, layers=2,
        heads=2, factor=factor, rank=2,
    )  # fmt: skip
    torch.manual_seed(0)
    enc = build_encoder(cfg).double()
    X = torch.randn(4, 7, 6, 3, dtype=torch.float64)
    v = enc(X)
    assert isinstance(v, Views)
    k = 6 if factor == "full" else 2
    assert v.mu.shape == (4, 2, 6) and v.L.shape == (4, 6, k)
    if factor == "lowrank_diag":
        assert v.d.shape == (4, 6) and bool((v.d > 0).all())
    else:
        assert v.d is None
    assert sum(p.numel() for p in enc.parameters()) == expected_param_count(cfg)
    S = v.sigma(1e-6)
    assert torch.linalg.eigvalsh(S).min() > 0
    (v.mu.sum() + v.L.sum() + (0 if v.d is None else v.d.sum())).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in enc.parameters())


def test_output_scales_follow_the_config():
    torch.manual_seed(0)
    X = torch.randn(64, 5, 4, 1, dtype=torch.float64)
    small = EncoderConfig(n_assets=4, window=5, hidden=8, mu_scale=1e-4, l_scale=1e-3)
    torch.manual_seed(1)
    a = build_encoder(small).double()(X)
    torch.manual_seed(1)
    b = build_encoder(EncoderConfig(n_assets=4, window=5, hidden=8)).double()(X)
    torch.testing.assert_close(a.mu * 10, b.mu)
    torch.testing.assert_close(a.L * 10, b.L)


def test_views_differ_across_windows():
    """The encoder reads its input (not a constant): different windows, different views."""
    cfg = EncoderConfig(kind="transformer", n_assets=3, window=4, hidden=8)
    torch.manual_seed(0)
    enc = build_encoder(cfg).double()
    X = torch.randn(2, 4, 3, 1, dtype=torch.float64)
    v = enc(X)
    assert not torch.allclose(v.mu[0], v.mu[1])


def test_bad_config_is_a_spec_error():
    with pytest.raises(SpecError, match="heads"):
        EncoderConfig(kind="transformer", hidden=10, heads=3)
    with pytest.raises(SpecError, match="kind"):
        EncoderConfig(kind="gru")
    cfg = EncoderConfig(n_assets=3)
    assert EncoderConfig.from_dict(cfg.to_dict()) == cfg


def test_unknown_kind_lists_the_registered_encoders():
    with pytest.raises(SpecError, match=r"registered: lstm, transformer"):
        EncoderConfig(kind="gru")
    with pytest.raises(SpecError, match=r"encoder\.kind.*registered: lstm, transformer"):
        tiny_spec(encoder={"kind": "gru"})


class _MeanEncoder(Encoder):
    """A third-party style encoder: the window's mean features through the view heads."""

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__(cfg)
        self.proj = torch.nn.Linear(cfg.n_assets * cfg.n_features, 4)
        self.heads = ViewHeads(cfg, 4, per_asset=False)

    def forward(self, X: torch.Tensor) -> Views:
        return self.heads(torch.tanh(self.proj(X.mean(1).flatten(1))))

    @classmethod
    def check_config(cls, cfg: EncoderConfig) -> None:
        if cfg.layers != 1:
            raise SpecError(f"the mean encoder has one layer, got {cfg.layers=}.")


@pytest.fixture
def mean_encoder():
    ENCODERS.register("mean_test", _MeanEncoder)
    yield "mean_test"
    ENCODERS.unregister("mean_test")


def test_a_registered_encoder_trains_from_a_spec(mean_encoder):
    spec = tiny_spec(encoder={"kind": mean_encoder}, train={"epochs": 1, "max_batches": 2})
    ds, (train, val, _) = tiny_data(spec)
    res = train_dmpo(spec, ds, train, val, progress=False)
    assert isinstance(res.model.encoder, _MeanEncoder)
    assert len(res.fit.history) == 1 and math.isfinite(res.fit.history[0]["loss"])
    assert res.model.encoder.proj.weight.grad is not None  # trained through the QP layer
    with pytest.raises(SpecError, match="one layer"):
        EncoderConfig(**{**spec.encoder_config(5).to_dict(), "layers": 2})


def test_an_unregistered_encoder_is_unknown_again():
    ENCODERS.register("gone_test", _MeanEncoder)
    ENCODERS.unregister("gone_test")
    assert "gone_test" not in ENCODERS
    with pytest.raises(SpecError, match="unknown encoder 'gone_test'"):
        EncoderConfig(kind="gone_test")

"""Checkpoints: round trip, provenance, mismatch and corruption errors, atomic writes."""

from __future__ import annotations

import math
import pickle

import pytest
import torch
from _helpers import tiny_spec

from mpo.errors import CheckpointError, SpecError
from mpo.learn.checkpoint import Checkpoint, check_compatible, load_checkpoint, save_checkpoint
from mpo.learn.options import QPOptions
from mpo.learn.train import build_dmpo_model

TICKERS = ["S00", "S01", "S02", "S03", "S04"]


def _ckpt(seed: int = 0) -> Checkpoint:
    spec = tiny_spec()
    model = build_dmpo_model(spec.encoder_config(5), spec.qp_options(), seed)
    return Checkpoint(
        kind="dmpo",
        state_dict=model.state_dict(),
        encoder_config=spec.encoder_config(5).to_dict(),
        feature_config=spec.feature_spec().to_dict(),
        qp_config=spec.qp_options(),
        tickers=list(TICKERS),
        train_window=["2010-01-04", "2010-06-30"],
        fingerprint="abc123",
        seed=seed,
    )


def test_round_trip_keeps_everything(tmp_path):
    ck = _ckpt()
    path = save_checkpoint(ck, tmp_path / "sub" / "m.pt")
    assert [p.name for p in path.parent.iterdir()] == ["m.pt"]  # no temporary left behind
    back = load_checkpoint(path)
    assert back.tickers == TICKERS and back.seed == 0 and back.fingerprint == "abc123"
    assert back.encoder_config == ck.encoder_config and back.feature_config == ck.feature_config
    assert back.versions["torch"] == torch.__version__
    for key, value in ck.state_dict.items():
        assert torch.equal(back.state_dict[key], value)
    check_compatible(back, tickers=TICKERS, feature_config=ck.feature_config)


def test_universe_mismatch_says_what_differs(tmp_path):
    back = load_checkpoint(save_checkpoint(_ckpt(), tmp_path / "m.pt"))
    with pytest.raises(
        CheckpointError, match=r"only in checkpoint \['S04'\], only in data \['X'\]"
    ):
        check_compatible(back, tickers=TICKERS[:4] + ["X"])
    with pytest.raises(CheckpointError, match="different order"):
        check_compatible(back, tickers=TICKERS[::-1])


def test_feature_and_fingerprint_mismatch(tmp_path):
    back = load_checkpoint(save_checkpoint(_ckpt(), tmp_path / "m.pt"))
    other = dict(back.feature_config, window=9)
    with pytest.raises(CheckpointError, match=r"features.window: checkpoint 5, now 9"):
        check_compatible(back, tickers=TICKERS, feature_config=other)
    with pytest.raises(CheckpointError, match="fingerprint"):
        check_compatible(back, tickers=TICKERS, fingerprint="zzz")


@pytest.mark.parametrize("damage", ["truncate", "garbage", "zero"])
def test_corrupted_file_is_a_checkpoint_error(tmp_path, damage):
    path = save_checkpoint(_ckpt(), tmp_path / "m.pt")
    raw = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(raw[: len(raw) // 2])
    elif damage == "garbage":
        path.write_bytes(b"not a checkpoint at all")
    else:
        path.write_bytes(raw[:100] + b"\0" * 400 + raw[500:])
    with pytest.raises(CheckpointError, match="corrupted"):
        load_checkpoint(path)


def test_arbitrary_objects_are_refused_and_fields_checked(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("executed",))

    path = tmp_path / "evil.pt"
    torch.save({"x": Evil()}, path, pickle_module=pickle)
    with pytest.raises(CheckpointError):
        load_checkpoint(path)
    torch.save({"format_version": 1, "kind": "dmpo"}, tmp_path / "partial.pt")
    with pytest.raises(CheckpointError, match="lacks the field"):
        load_checkpoint(tmp_path / "partial.pt")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")


def test_loaded_state_rebuilds_the_same_model(tmp_path):
    spec = tiny_spec()
    back = load_checkpoint(save_checkpoint(_ckpt(seed=3), tmp_path / "m.pt"))
    fresh = build_dmpo_model(spec.encoder_config(5), back.qp_options(), seed=99)
    fresh.load_state_dict(back.state_dict)
    ref = build_dmpo_model(spec.encoder_config(5), spec.qp_options(), seed=3)
    X = torch.randn(3, 5, 5, 2, dtype=torch.float64)
    w_prev = torch.full((3, 5), 0.2, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(fresh(X, w_prev), ref(X, w_prev), rtol=0, atol=0)


#: qp_config as ``mpo train`` wrote it before QPOptions: the QP dict plus the cost keys.
LEGACY_QP = {
    "risk_aversion": 1.0, "gamma": 5e-4, "eps": 1e-6, "w_max": None, "delta": 0.3,
    "learned_delta": False, "backend": "fast", "kappa": 5e-4, "impact": 0.0, "value": 1e6,
}  # fmt: skip


@pytest.mark.parametrize("drop", [(), ("backend", "learned_delta")])
def test_old_dict_checkpoints_load_as_typed_options(tmp_path, drop):
    """Checkpoints written with the untyped dict (older ones lack backend/learned_delta)."""
    from mpo.forecast.learned import LearnedViews

    spec = tiny_spec()
    ref = build_dmpo_model(spec.encoder_config(5), spec.qp_options(), seed=4)
    raw = {k: v for k, v in LEGACY_QP.items() if k not in drop}
    ck = _ckpt(seed=4)
    ck.state_dict, ck.qp_config = ref.state_dict(), raw
    path = save_checkpoint(ck, tmp_path / "old.pt")
    opts = load_checkpoint(path).qp_options()
    assert opts == QPOptions(gamma=5e-4, delta=0.3) == spec.qp_options()
    model = LearnedViews(path).model
    assert model.qp_options == opts and model.qp_spec == ref.qp_spec
    X = torch.randn(3, 5, 5, 2, dtype=torch.float64)
    w_prev = torch.full((3, 5), 0.2, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(model(X, w_prev), ref(X, w_prev), rtol=0, atol=0)


def test_typed_options_are_stored_as_a_dict_and_validated(tmp_path):
    back = load_checkpoint(save_checkpoint(_ckpt(), tmp_path / "m.pt"))
    assert isinstance(back.qp_config, dict)
    assert QPOptions.from_dict(back.qp_config) == tiny_spec().qp_options()
    back.qp_config = {**back.qp_config, "risk_aversoin": 2.0}
    with pytest.raises(CheckpointError, match=r"unknown QP option\(s\) \['risk_aversoin'\]"):
        back.qp_options()


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("eps", 0.0, r"eps must be finite and > 0"),
        ("gamma", -1e-3, r"gamma must be finite and >= 0"),
        ("delta", float("nan"), r"delta must be finite and > 0"),
        ("w_max", 1.5, r"w_max must be in \(0, 1\]"),
        ("learned_delta", "yes", r"learned_delta must be a bool"),
        ("risk_aversion", "1", r"risk_aversion must be a number"),
        ("backend", "osqp", r"unknown QP backend 'osqp'; registered: fast, cvxpylayers"),
    ],
)
def test_qp_options_validate_their_fields(field, value, match):
    with pytest.raises(SpecError, match=match):
        QPOptions(**{field: value})
    assert QPOptions(delta=math.inf).delta == math.inf  # no turnover limit

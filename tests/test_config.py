"""Policy specs: every shipped spec loads; bad specs get errors naming file and field."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from mpo.config import PolicySpec, load_spec
from mpo.errors import SpecError

#: Backtest policy specs (training specs such as dmpo.toml have a [train] table, no kind).
POLICIES = sorted(
    p
    for p in Path(__file__).parents[1].joinpath("policies").glob("*.toml")
    if "kind" in tomllib.loads(p.read_text())
)


def test_shipped_specs_load():
    assert len(POLICIES) >= 4
    for path in POLICIES:
        spec = load_spec(path)
        assert isinstance(spec, PolicySpec)
        assert spec.name == path.stem


def _write(tmp_path, text: str) -> Path:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    return path


def test_unknown_key_names_file_and_field(tmp_path):
    path = _write(tmp_path, 'name = "x"\nkind = "spo"\n[objective]\ngama_risk = 3\n')
    with pytest.raises(SpecError) as info:
        load_spec(path)
    msg = str(info.value)
    assert "bad.toml" in msg and "objective.gama_risk" in msg and "unknown field" in msg


@pytest.mark.parametrize(
    "body, field",
    [
        ("[objective]\ngamma_risk = -1\n", "objective.gamma_risk"),
        ("[objective]\nplanning_horizon = 0\n", "objective.planning_horizon"),
        ("[costs]\nhalf_spread = 0.5\n", "costs.half_spread"),
        ("[constraints]\nmin_weight = 0.5\nmax_weight = 0.1\n", "min_weight must be <= max_weight"),
        ('[forecast]\nkind = "oracle"\n', "forecast.kind"),
        ("[risk]\nlookback = 1\n", "risk.lookback"),
    ],
)
def test_out_of_range_values(tmp_path, body, field):
    path = _write(tmp_path, f'name = "x"\nkind = "mpo"\n{body}')
    with pytest.raises(SpecError, match=field.replace(".", r"\.")):
        load_spec(path)


def test_spo_with_horizon_is_rejected(tmp_path):
    path = _write(tmp_path, 'name = "x"\nkind = "spo"\n[objective]\nplanning_horizon = 3\n')
    with pytest.raises(SpecError, match="kind='mpo'"):
        load_spec(path)


def test_missing_file_and_bad_toml(tmp_path):
    with pytest.raises(SpecError, match="does not exist"):
        load_spec(tmp_path / "nope.toml")
    with pytest.raises(SpecError, match="not valid TOML"):
        load_spec(_write(tmp_path, "name = \n"))


def test_with_updates_revalidates():
    spec = load_spec(POLICIES[0]).with_updates(objective={"gamma_risk": 2.0})
    assert spec.objective.gamma_risk == 2.0
    with pytest.raises(SpecError, match="objective.gamma_risk"):
        spec.with_updates(objective={"gamma_risk": -2.0})

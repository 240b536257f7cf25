"""Writing where it should: safe names, unique run folders, umask-respecting file modes."""

from __future__ import annotations

import os
import stat

import pytest

from mpo.config import parse_spec
from mpo.errors import SpecError
from mpo.io import check_name, inside, new_run_dir, write_json


@pytest.mark.parametrize("name", ["", "../evil", "a/b", "..", ".hidden", "with space", "x" * 101])
def test_unsafe_names_are_refused(name):
    with pytest.raises(SpecError, match="cannot name a folder"):
        check_name(name)
    with pytest.raises(SpecError, match="cannot name a folder"):
        parse_spec({"name": name, "kind": "hold"})


def test_safe_names_pass():
    for name in ("spo", "mpo-tuned", "dmpo_qp.v2", "A1"):
        assert check_name(name) == name


def test_run_folders_are_unique_and_never_reused(tmp_path):
    made = {new_run_dir(tmp_path, "spo") for _ in range(5)}  # same second, same name
    assert len(made) == 5 and all(p.is_dir() and p.parent == tmp_path for p in made)


def test_inside_refuses_escapes(tmp_path):
    assert inside(tmp_path / "a" / "b", tmp_path) == (tmp_path / "a" / "b").resolve()
    with pytest.raises(SpecError, match="outside the output folder"):
        inside(tmp_path / ".." / "x", tmp_path)


def test_atomic_writes_respect_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        write_json({"a": 1}, tmp_path / "r.json")
        assert stat.S_IMODE((tmp_path / "r.json").stat().st_mode) == 0o644
        os.umask(0o077)
        write_json({"a": 1}, tmp_path / "s.json")
        assert stat.S_IMODE((tmp_path / "s.json").stat().st_mode) == 0o600
    finally:
        os.umask(old)


def test_stale_temporary_files_of_a_killed_writer_are_removed(tmp_path):
    """A writer killed mid-write leaves .<name>.<random>.tmp; old ones are cleaned, live ones
    (young) and real files are kept; the price cache cleans its folder when opened."""
    import os
    import time

    from mpo.data.cache import PriceCache
    from mpo.io import remove_stale_temps

    old = tmp_path / ".AAPL.parquet.x1y2.tmp"
    young = tmp_path / ".MSFT.parquet.a3b4.tmp"
    real = tmp_path / "AAPL.parquet"
    for p in (old, young, real):
        p.write_bytes(b"x")
    past = time.time() - 7200
    os.utime(old, (past, past))
    os.utime(real, (past, past))
    assert remove_stale_temps(tmp_path) == [old]
    assert young.exists() and real.exists() and not old.exists()
    os.utime(young, (past, past))
    PriceCache(tmp_path)
    assert not young.exists() and real.exists()
    assert remove_stale_temps(tmp_path / "missing") == []

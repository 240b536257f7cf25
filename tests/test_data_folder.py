"""data/: every shipped file read through the users' readers, hashed, rebuilt; the example spec run.

Also the universe reader and drawer of :mod:`mpo.data.universes`, failure paths included.
"""

from __future__ import annotations

import importlib.util
import json
import math
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from mpo.cli import app
from mpo.data.sources import load_market_data
from mpo.data.universes import draw_universes, load_universe
from mpo.errors import DataError, SpecError
from mpo.forecast.files import FileEstimate, FileFactorModel, FileReturnsForecast

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data"
EXAMPLES = DATA / "examples"
MANIFEST = json.loads((DATA / "MANIFEST.json").read_text())
BUNDLED = ("sp20", "dow30-2014")
GICS_SECTORS = {
    "Communication Services",
    "Consumer Discretionary",
    "Consumer Staples",
    "Energy",
    "Financials",
    "Health Care",
    "Industrials",
    "Information Technology",
    "Materials",
    "Real Estate",
    "Utilities",
}


def _build_script():
    spec = importlib.util.spec_from_file_location("build_data", ROOT / "scripts" / "build_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


build_data = _build_script()


@pytest.fixture(scope="module")
def markets():
    return {name: load_market_data(name, adv=1e8) for name in BUNDLED}


@pytest.fixture(scope="module")
def window(markets):
    """The example files' dates: sp20's calendar from 2021-01-04 to 2022-12-27."""
    return markets["sp20"].returns.loc["2021-01-04":"2022-12-27"].index


# -------------------------------------------------------------- manifest and size


def test_manifest_lists_every_shipped_file_with_its_sha256():
    on_disk = {p.relative_to(DATA).as_posix() for p in build_data.shipped_files(DATA)}
    assert on_disk == set(MANIFEST["files"])
    assert len(on_disk) >= 16
    for name, entry in MANIFEST["files"].items():
        path = DATA / name
        assert build_data.sha256(path) == entry["sha256"], f"{name} changed: rebuild data/"
        assert path.stat().st_size == entry["bytes"]


def test_data_folder_stays_small():
    total = sum(p.stat().st_size for p in build_data.folder_files(DATA))
    assert total < 2 * 1024**2, f"data/ holds {total:,} bytes; keep it under 2 MB"


@pytest.mark.skipif(shutil.which("git") is None, reason="git not installed")
def test_shipped_files_are_not_git_ignored():
    paths = [f"data/{name}" for name in (*MANIFEST["files"], *build_data.TOP_LEVEL)]
    ignored = subprocess.run(
        ["git", "check-ignore", *paths], cwd=ROOT, capture_output=True, text=True
    )
    if ignored.returncode == 128:
        pytest.skip(f"not a git checkout: {ignored.stderr.strip()}")
    assert ignored.stdout.strip() == "", f"ignored by .gitignore: {ignored.stdout.split()}"
    cache = subprocess.run(["git", "check-ignore", "-q", "data/cache/yfinance/X.parquet"], cwd=ROOT)
    assert cache.returncode == 0, "the yfinance cache must stay git-ignored"


@pytest.mark.parametrize(
    "row", MANIFEST["sources"], ids=lambda r: f"{r['source']}-{len(r['kwargs'])}kw"
)
def test_default_sources_match_their_recorded_fingerprints(row):
    market = load_market_data(row["source"], **row["kwargs"])
    assert market.fingerprint() == row["fingerprint"], (
        f"{row['source']} {row['kwargs']} changed (installed data differs): run "
        "python scripts/build_data.py --check"
    )
    assert str(market.calendar[0].date()) == row["start"]
    assert str(market.calendar[-1].date()) == row["end"]
    assert (len(market.calendar), market.n_assets) == (row["periods"], row["assets"])


def test_readme_tables_are_the_manifest():
    readme = (DATA / "README.md").read_text()
    assert build_data.readme_block(MANIFEST) in readme
    for row in MANIFEST["sources"]:
        assert f"`{row['fingerprint']}`" in readme
    for source in ("sp20", "dow30-2014", "synthetic", "yfinance"):
        assert f"### `{source}`" in readme


def test_rebuild_reproduces_the_shipped_files(tmp_path):
    fresh = build_data.build(tmp_path)
    assert set(fresh["files"]) == set(MANIFEST["files"])
    assert fresh["sources"] == MANIFEST["sources"]
    for name in MANIFEST["files"]:
        if name.endswith(".parquet"):  # the values; the bytes also depend on pyarrow's version
            pd.testing.assert_frame_equal(
                pd.read_parquet(tmp_path / name),
                pd.read_parquet(DATA / name),
                rtol=1e-9,
                atol=1e-14,
            )
        else:
            assert (tmp_path / name).read_bytes() == (DATA / name).read_bytes(), name


# ------------------------------------------------------------------------ sectors


@pytest.mark.parametrize("universe", BUNDLED)
def test_sector_table_covers_exactly_the_bundled_universe(markets, universe):
    table = pd.read_csv(DATA / "sectors" / f"{universe}.csv")
    assert list(table.columns) == ["ticker", "sector", "industry_group"]
    assert list(table["ticker"]) == list(markets[universe].tickers)
    assert not table.isna().any().any()
    assert set(table["sector"]) <= GICS_SECTORS
    assert table.groupby("industry_group")["sector"].nunique().max() == 1


# ---------------------------------------------------------------------- universes


def test_shipped_universes_load_and_are_the_seeded_draws(markets):
    for name, market in markets.items():
        path = DATA / "universes" / f"{name}.txt"
        assert load_universe(path, known=market.tickers) == list(market.tickers)
    sp20 = list(markets["sp20"].tickers)
    drawn = []
    for seed in range(5):
        tickers = load_universe(DATA / "universes" / f"sp20-sub10-seed{seed}.txt", known=sp20)
        assert len(tickers) == 10
        assert tickers == draw_universes(sp20, k=1, size=10, seed=seed)[0]
        drawn.append(frozenset(tickers))
    assert len(set(drawn)) == 5


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "universe.txt"
    path.write_text(text)
    return path


def test_load_universe_reads_comments_and_blank_lines(tmp_path):
    path = _write(tmp_path, "# my universe\n\nAAPL\n  MSFT  # software\n#JPM\nKO\n")
    assert load_universe(path) == ["AAPL", "MSFT", "KO"]
    assert load_universe(path, known=["KO", "MSFT", "AAPL", "XOM"]) == ["AAPL", "MSFT", "KO"]


@pytest.mark.parametrize(
    "text, known, match",
    [
        ("# nothing\n\n", None, r"universe\.txt' holds no ticker"),
        (
            "AAPL\nMSFT\nAAPL\n",
            None,
            r"universe\.txt:3: ticker 'AAPL' is repeated \(first on line 1\)",
        ),
        ("AAPL\nMSFTT\n", ["AAPL", "MSFT"], r"universe\.txt:2: ticker 'MSFTT' is not in .* 'MSFT'"),
        ("AAPL MSFT\n", None, r"universe\.txt:1: 'AAPL MSFT' holds more than one name"),
    ],
)
def test_load_universe_errors_name_the_file_line_and_ticker(tmp_path, text, known, match):
    with pytest.raises(DataError, match=match):
        load_universe(_write(tmp_path, text), known=known)


def test_load_universe_missing_file(tmp_path):
    with pytest.raises(DataError, match=r"absent\.txt' does not exist"):
        load_universe(tmp_path / "absent.txt")


def test_draw_universes_is_seeded_and_distinct():
    tickers = [f"T{i:02d}" for i in range(20)]
    first = draw_universes(tickers, k=8, size=5, seed=1)
    assert first == draw_universes(tickers, k=8, size=5, seed=1)
    assert first != draw_universes(tickers, k=8, size=5, seed=2)
    assert len({frozenset(u) for u in first}) == 8
    for universe in first:
        assert len(universe) == 5
        assert universe == sorted(universe, key=tickers.index)  # the order of `tickers`
    every = draw_universes(["A", "B", "C", "D"], k=6, size=2, seed=0)
    assert len({frozenset(u) for u in every}) == 6 == math.comb(4, 2)


@pytest.mark.parametrize(
    "tickers, k, size, seed, error, match",
    [
        (["A", "B", "C"], 1, 4, 0, SpecError, r"size must be at most the 3 ticker\(s\).*size=4"),
        (["A", "B", "C"], 4, 2, 0, SpecError, r"k=4 distinct universes .* only 3"),
        (["A", "B"], 0, 1, 0, SpecError, r"k must be an integer >= 1, got k=0"),
        (["A", "B"], 1, 0, 0, SpecError, r"size must be an integer >= 1, got size=0"),
        (["A", "B"], 1, True, 0, SpecError, r"size must be an integer >= 1, got size=True"),
        (["A", "B"], 1, 1, 0.5, SpecError, r"seed must be an integer, got seed=0.5"),
        ([], 1, 1, 0, DataError, r"tickers is empty"),
        ("AB", 1, 1, 0, DataError, r"got the string 'AB'"),
        (["A", "B", "A"], 1, 1, 0, DataError, r"lists \['A'\] more than once"),
    ],
)
def test_draw_universes_errors(tickers, k, size, seed, error, match):
    with pytest.raises(error, match=match):
        draw_universes(tickers, k=k, size=size, seed=seed)


# ----------------------------------------------------------------- example model


def test_example_files_validate_on_the_sp20_calendar(markets, window):
    tickers = list(markets["sp20"].tickers)
    forecast = FileReturnsForecast(EXAMPLES / "sp20-forecast.parquet")
    forecast.validate(window, tickers, horizon=2)
    assert not forecast.per_step
    model = FileFactorModel(
        EXAMPLES / "sp20-exposures.parquet",
        EXAMPLES / "sp20-factor-covariance.parquet",
        EXAMPLES / "sp20-idiosyncratic.parquet",
    )
    model.validate(window, tickers)
    assert model.factors == ["pc1", "pc2", "pc3"] and model.constant_factor_covariance
    FileEstimate(EXAMPLES / "sp20-sigma.parquet", what="sigma").validate(window, tickers)
    volume = FileEstimate(EXAMPLES / "sp20-volume.parquet", what="volume")
    volume.validate(window, tickers)
    np.testing.assert_array_equal(volume.frame.to_numpy(), 1e8)
    for path in EXAMPLES.glob("*.parquet"):
        frame = pd.read_parquet(path)
        if isinstance(frame.index, pd.MultiIndex):
            assert frame.index.get_level_values(0).unique().equals(window.rename("date"))
        elif isinstance(frame.index, pd.DatetimeIndex):
            assert frame.index.equals(window.rename("date")), path.name


@pytest.mark.parametrize("position", [0, 137, 499])
def test_example_rows_use_only_returns_before_their_date(markets, window, position):
    """Row t, recomputed with plain numpy from the returns dated strictly before t."""
    returns = markets["sp20"].returns
    t = window[position]
    past = returns.loc[returns.index < t].to_numpy()
    tickers = list(returns.columns)
    forecast = FileReturnsForecast(EXAMPLES / "sp20-forecast.parquet").values_in_time(t)
    np.testing.assert_allclose(forecast[tickers], past[-250:].mean(axis=0), rtol=1e-10, atol=0)
    sigma = FileEstimate(EXAMPLES / "sp20-sigma.parquet").values_in_time(t)
    np.testing.assert_allclose(sigma[tickers], past[-20:].std(axis=0, ddof=1), rtol=1e-10)
    model = FileFactorModel(
        EXAMPLES / "sp20-exposures.parquet",
        EXAMPLES / "sp20-factor-covariance.parquet",
        EXAMPLES / "sp20-idiosyncratic.parquet",
    )
    sample = np.cov(past[-250:], rowvar=False)
    values, vectors = np.linalg.eigh(sample)
    top3 = (vectors[:, -3:] * values[-3:]) @ vectors[:, -3:].T
    expected = top3 + np.diag(np.diag(sample - top3))
    np.testing.assert_allclose(model.covariance_at(t, tickers), expected, rtol=1e-8, atol=1e-14)


def test_example_spec_runs_through_the_cli(tmp_path):
    out = tmp_path / "runs"
    result = CliRunner().invoke(
        app,
        [
            "backtest",
            str(EXAMPLES / "sp20-byo.toml"),
            "--no-report",
            "--no-progress",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    (run_dir,) = [p for p in out.iterdir() if p.is_dir()]
    recorded = json.loads((run_dir / "run.json").read_text())["data"]["fingerprint"]
    (spec_load,) = [r for r in MANIFEST["sources"] if r["kwargs"].get("start") == "2019-01-02"]
    assert recorded == spec_load["fingerprint"]
    weights = pd.read_parquet(run_dir / "sp20-byo" / "weights.parquet")
    assert weights.index[0] == pd.Timestamp("2021-06-01")
    assert weights.index[-1] <= pd.Timestamp("2022-12-27")
    assert weights.iloc[:, :-1].diff().abs().sum().sum() > 0.05, "the policy should trade"

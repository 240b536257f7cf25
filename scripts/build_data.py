"""Rebuild every file shipped in data/ from its public source, and record their fingerprints.

Example::

    python scripts/build_data.py            # rewrite data/ and data/MANIFEST.json
    python scripts/build_data.py --check    # rebuild in a temporary folder, compare

What it writes (see data/README.md):

* ``sectors/sp20.csv``, ``sectors/dow30-2014.csv``: ticker -> GICS sector and
  industry group, from the public GICS classification written out below
  (:data:`SECTORS`); no installed package ships a sector table.
* ``universes/*.txt``: the two bundled universes in full and five 10-ticker
  sub-universes of sp20 drawn with :func:`mpo.data.universes.draw_universes`.
* ``examples/sp20-*.parquet`` and ``examples/sp20-byo.toml``: a bring-your-own
  model for sp20 (skfolio's bundled prices) in the formats
  :mod:`mpo.forecast.files` reads, every row computed from returns dated
  strictly before the row's date.
* ``MANIFEST.json``: sha256 and size of each file above, and the
  :meth:`MarketData.fingerprint` of each default data source; the tables of
  ``README.md`` between the ``manifest`` markers are regenerated from it.

Everything is deterministic: the same package versions give the same bytes
(``--check`` verifies it; the parquet bytes also depend on pyarrow's version,
their values only on the data).
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import hashlib
import json
import sys
import tempfile
from importlib import metadata
from pathlib import Path

import numpy as np
import pandas as pd

from mpo.data.market import MarketData
from mpo.data.sources import load_market_data
from mpo.data.universes import draw_universes

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data"

#: adv used to load sp20 (and recorded with every fingerprint): the project's default specs' value.
ADV = 1e8

#: Window of the example model files and their parameters.
EXAMPLE_START, EXAMPLE_END = "2021-01-04", "2022-12-27"
MEAN_WINDOW, PCA_WINDOW, N_FACTORS, SIGMA_WINDOW = 250, 250, 3, 20

#: Sub-universes of sp20: ``sp20-sub{SIZE}-seed{seed}.txt`` for each seed.
SUB_SIZE, SUB_SEEDS = 10, range(5)

#: The date of the GICS structure the sector tables follow (the March 2023 revision).
GICS_AS_OF = "2023-03-17"

IT, FIN, CD, CS, HC, IND, EN, MAT, COM = (
    "Information Technology",
    "Financials",
    "Consumer Discretionary",
    "Consumer Staples",
    "Health Care",
    "Industrials",
    "Energy",
    "Materials",
    "Communication Services",
)
PHARMA = "Pharmaceuticals, Biotechnology & Life Sciences"
HC_SERVICES = "Health Care Equipment & Services"
CD_RETAIL = "Consumer Discretionary Distribution & Retail"
CS_RETAIL = "Consumer Staples Distribution & Retail"
FOOD = "Food, Beverage & Tobacco"
HPP = "Household & Personal Products"
HARDWARE = "Technology Hardware & Equipment"
SEMIS = "Semiconductors & Semiconductor Equipment"
SOFTWARE = "Software & Services"

#: GICS sector and industry group of each bundled universe's tickers (structure of GICS_AS_OF).
SECTORS: dict[str, dict[str, tuple[str, str]]] = {
    "sp20": {
        "AAPL": (IT, HARDWARE),
        "AMD": (IT, SEMIS),
        "BAC": (FIN, "Banks"),
        "BBY": (CD, CD_RETAIL),
        "CVX": (EN, "Energy"),
        "GE": (IND, "Capital Goods"),
        "HD": (CD, CD_RETAIL),
        "JNJ": (HC, PHARMA),
        "JPM": (FIN, "Banks"),
        "KO": (CS, FOOD),
        "LLY": (HC, PHARMA),
        "MRK": (HC, PHARMA),
        "MSFT": (IT, SOFTWARE),
        "PEP": (CS, FOOD),
        "PFE": (HC, PHARMA),
        "PG": (CS, HPP),
        "RRC": (EN, "Energy"),
        "UNH": (HC, HC_SERVICES),
        "WMT": (CS, CS_RETAIL),
        "XOM": (EN, "Energy"),
    },
    "dow30-2014": {
        "AAPL": (IT, HARDWARE),
        "AXP": (FIN, "Financial Services"),
        "BA": (IND, "Capital Goods"),
        "CAT": (IND, "Capital Goods"),
        "CSCO": (IT, HARDWARE),
        "CVX": (EN, "Energy"),
        "DD": (MAT, "Materials"),
        "DIS": (COM, "Media & Entertainment"),
        "GS": (FIN, "Financial Services"),
        "HD": (CD, CD_RETAIL),
        "IBM": (IT, SOFTWARE),
        "INTC": (IT, SEMIS),
        "JNJ": (HC, PHARMA),
        "JPM": (FIN, "Banks"),
        "KO": (CS, FOOD),
        "MCD": (CD, "Consumer Services"),
        "MMM": (IND, "Capital Goods"),
        "MRK": (HC, PHARMA),
        "MSFT": (IT, SOFTWARE),
        "NKE": (CD, "Consumer Durables & Apparel"),
        "PFE": (HC, PHARMA),
        "PG": (CS, HPP),
        "TRV": (FIN, "Insurance"),
        "UNH": (HC, HC_SERVICES),
        "UTX": (IND, "Capital Goods"),
        "V": (FIN, "Financial Services"),
        "VZ": (COM, "Telecommunication Services"),
        "WMT": (CS, CS_RETAIL),
    },
}

SPEC = """\
# Bring your own model, on sp20: an MPO policy whose returns forecast, factor risk model and
# cost estimates are all read from the parquet files next to this spec (paths are relative
# to this file). Built by scripts/build_data.py; see data/README.md.
#   mpo backtest data/examples/sp20-byo.toml --no-report
name = "sp20-byo"
kind = "mpo"
description = "MPO, H=2, sp20: 250-day mean forecast, PCA 3-factor risk, 20-day sigma, from files."

[data]
source = "sp20"
adv = 1e8
start = "2019-01-02"

[backtest]
start = "2021-06-01"
end = "2022-12-27"

[forecast]
kind = "file"
path = "sp20-forecast.parquet"

[risk]
kind = "factor_file"
exposures = "sp20-exposures.parquet"
factor_covariance = "sp20-factor-covariance.parquet"
idiosyncratic = "sp20-idiosyncratic.parquet"

[costs]
sigma = "sp20-sigma.parquet"
volume = "sp20-volume.parquet"

[objective]
gamma_risk = 5.0
gamma_trade = 1.0
gamma_hold = 1.0
planning_horizon = 2

[constraints]
long_only = true
max_weight = 0.2
leverage = 1.0
"""

#: Default sources and the load_market_data keywords their fingerprints are taken with.
SOURCE_LOADS: tuple[tuple[str, dict], ...] = (
    ("sp20", {"adv": ADV}),
    ("dow30-2014", {"adv": ADV}),
    ("dow30-2014", {}),
    ("synthetic", {"adv": ADV}),
    # what examples/sp20-byo.toml loads (its [data] section): its runs record this fingerprint
    ("sp20", {"adv": ADV, "start": "2019-01-02"}),
)

#: Files of data/ that are not built (the README) or that describe the others (the manifest).
TOP_LEVEL = ("README.md", "MANIFEST.json")

BEGIN, END = "<!-- manifest:begin -->", "<!-- manifest:end -->"


# ------------------------------------------------------------------------ writers


def _write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode("utf-8"))


def _write_parquet(path: Path, frame: pd.DataFrame) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(path, engine="pyarrow", compression="zstd")


def build_sectors(out: Path) -> None:
    """``sectors/<universe>.csv``: ``ticker,sector,industry_group`` in the universe's order."""
    for universe, table in SECTORS.items():
        frame = pd.DataFrame(
            [(t, sector, group) for t, (sector, group) in table.items()],
            columns=["ticker", "sector", "industry_group"],
        )
        _write_text(
            out / "sectors" / f"{universe}.csv", frame.to_csv(index=False, lineterminator="\n")
        )


def _universe_text(title: str, how: list[str], tickers: list[str]) -> str:
    lines = [f"# {title}"] + [f"# {line}" for line in how] + tickers
    return "\n".join(lines) + "\n"


def build_universes(out: Path, markets: dict[str, MarketData]) -> None:
    """The bundled universes in full, and sp20's seeded sub-universes."""
    for name, market in markets.items():
        text = _universe_text(
            f"{name}: the {market.n_assets} tickers of the bundled source {name!r}",
            ["built by scripts/build_data.py"],
            list(market.tickers),
        )
        _write_text(out / "universes" / f"{name}.txt", text)
    sp20 = list(markets["sp20"].tickers)
    for seed in SUB_SEEDS:
        (tickers,) = draw_universes(sp20, k=1, size=SUB_SIZE, seed=seed)
        name = f"sp20-sub{SUB_SIZE}-seed{seed}"
        how = [
            f"draw_universes(<the 20 sp20 tickers>, k=1, size={SUB_SIZE}, seed={seed})",
            "(mpo.data.universes; numpy default_rng). Built by scripts/build_data.py.",
        ]
        text = _universe_text(f"{name}: {SUB_SIZE} of the 20 sp20 tickers", how, tickers)
        _write_text(out / "universes" / f"{name}.txt", text)


def _pca_model(
    returns: pd.DataFrame, dates: pd.DatetimeIndex
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """PCA factor model of the trailing ``PCA_WINDOW`` returns dated strictly before each date.

    Exposures ``F_t = sqrt(lambda_k) v_k'`` (so ``Sigma_F = I``), ``d_t`` the
    diagonal of the sample covariance that the ``N_FACTORS`` components leave.
    Each eigenvector's sign makes its largest-magnitude loading positive.
    """
    tickers = list(returns.columns)
    factors = [f"pc{k + 1}" for k in range(N_FACTORS)]
    exposures, idio = [], []
    for t in dates:
        past = returns.loc[returns.index < t].iloc[-PCA_WINDOW:].to_numpy()
        sample = np.cov(past, rowvar=False)
        values, vectors = np.linalg.eigh(sample)
        top = np.argsort(values)[::-1][:N_FACTORS]
        vectors = vectors[:, top]
        signs = np.sign(vectors[np.argmax(np.abs(vectors), axis=0), range(N_FACTORS)])
        loadings = (vectors * signs * np.sqrt(values[top])).T  # k x n
        exposures.append(pd.DataFrame(loadings, index=factors, columns=tickers))
        idio.append(np.maximum(np.diag(sample) - (loadings**2).sum(axis=0), 0.0))
    F = pd.concat(dict(zip(dates, exposures, strict=True)), names=["date", "factor"])
    sigma_f = pd.DataFrame(np.eye(N_FACTORS), index=factors, columns=factors)
    sigma_f.index.name = "factor"
    d = pd.DataFrame(np.array(idio), index=dates, columns=tickers)
    return F, sigma_f, d


def example_frames(market: MarketData) -> dict[str, pd.DataFrame]:
    """The example model tables for ``market`` (sp20), keyed by file stem."""
    returns = market.returns
    past = returns.shift(1)  # row t: the returns dated before t
    dates = returns.loc[EXAMPLE_START:EXAMPLE_END].index
    F, sigma_f, d = _pca_model(returns, dates)
    frames = {
        "sp20-forecast": past.rolling(MEAN_WINDOW).mean().loc[dates],
        "sp20-exposures": F,
        "sp20-factor-covariance": sigma_f,
        "sp20-idiosyncratic": d,
        "sp20-sigma": past.rolling(SIGMA_WINDOW).std().loc[dates],
        "sp20-volume": pd.DataFrame(ADV, index=dates, columns=list(returns.columns)),
    }
    for frame in frames.values():
        if isinstance(frame.index, pd.DatetimeIndex):
            frame.index.name = "date"
    return frames


def build_examples(out: Path, market: MarketData) -> None:
    """``examples/sp20-*.parquet`` and the spec that reads them."""
    for stem, frame in example_frames(market).items():
        _write_parquet(out / "examples" / f"{stem}.parquet", frame)
    _write_text(out / "examples" / "sp20-byo.toml", SPEC)


# ----------------------------------------------------------------------- manifest


def sha256(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def folder_files(out: Path) -> list[Path]:
    """Every file under ``out`` except the git-ignored download cache ``out/cache``."""
    return sorted(
        p for p in out.rglob("*") if p.is_file() and p.relative_to(out).parts[0] != "cache"
    )


def shipped_files(out: Path) -> list[Path]:
    """The files the manifest covers: those of :func:`folder_files` but the README and manifest."""
    return [p for p in folder_files(out) if p.relative_to(out).as_posix() not in TOP_LEVEL]


def source_fingerprints() -> list[dict]:
    """``MarketData.fingerprint()`` of each default source, with how it was loaded."""
    rows = []
    for name, kwargs in SOURCE_LOADS:
        market = load_market_data(name, **kwargs)
        rows.append(
            {
                "source": name,
                "kwargs": kwargs,
                "fingerprint": market.fingerprint(),
                "start": str(market.calendar[0].date()),
                "end": str(market.calendar[-1].date()),
                "periods": len(market.calendar),
                "assets": market.n_assets,
            }
        )
    return rows


def _versions() -> dict[str, str]:
    names = ("mpo", "skfolio", "cvxportfolio", "numpy", "pandas", "pyarrow")
    return {n: metadata.version(n) for n in names}


def manifest(out: Path) -> dict:
    """The manifest of ``out``: file hashes, source fingerprints, package versions."""
    return {
        "generated_by": "scripts/build_data.py",
        "versions": _versions(),
        "files": {
            p.relative_to(out).as_posix(): {"sha256": sha256(p), "bytes": p.stat().st_size}
            for p in shipped_files(out)
        },
        "sources": source_fingerprints(),
    }


def _show(value: object) -> str:
    """A keyword's value as written in Python: ``1e8``, ``'2019-01-02'``."""
    if isinstance(value, float) and value >= 1e4 and value == int(value):
        mantissa, exponent = f"{value:e}".split("e")
        return f"{float(mantissa):g}e{int(exponent)}"
    return repr(value)


def readme_block(man: dict) -> str:
    """The README's generated tables (between the manifest markers)."""
    lines = [BEGIN, "", "| file | bytes | sha256 (first 16) |", "|---|---:|---|"]
    for name, entry in man["files"].items():
        lines.append(f"| `{name}` | {entry['bytes']:,} | `{entry['sha256'][:16]}` |")
    lines += [
        "",
        "| source | `load_market_data` keywords | fingerprint | dates | periods x assets |",
        "|---|---|---|---|---|",
    ]
    for row in man["sources"]:
        kwargs = ", ".join(f"{k}={_show(v)}" for k, v in row["kwargs"].items()) or "(none)"
        lines.append(
            f"| `{row['source']}` | `{kwargs}` | `{row['fingerprint']}` | {row['start']} to "
            f"{row['end']} | {row['periods']} x {row['assets']} |"
        )
    versions = ", ".join(f"{k} {v}" for k, v in man["versions"].items())
    lines += ["", f"Built with {versions}.", "", END]
    return "\n".join(lines)


def update_readme(readme: Path, man: dict) -> bool:
    """Replace the block between the markers of ``readme``; False if it has no markers."""
    if not readme.exists():
        return False
    text = readme.read_text(encoding="utf-8")
    head, begin, rest = text.partition(BEGIN)
    _, end, tail = rest.partition(END)
    if not (begin and end):
        return False
    readme.write_text(head + readme_block(man) + tail, encoding="utf-8")
    return True


# --------------------------------------------------------------------------- main


def build(out: Path) -> dict:
    """Write every shipped file and ``MANIFEST.json`` under ``out``; return the manifest."""
    markets = {name: load_market_data(name, adv=ADV) for name in SECTORS}
    build_sectors(out)
    build_universes(out, markets)
    build_examples(out, markets["sp20"])
    man = manifest(out)
    _write_text(out / "MANIFEST.json", json.dumps(man, indent=2) + "\n")
    return man


def check() -> int:
    """Rebuild in a temporary folder; report files whose bytes differ from data/MANIFEST.json."""
    shipped = json.loads((DATA / "MANIFEST.json").read_text())
    with tempfile.TemporaryDirectory() as tmp:
        fresh = build(Path(tmp))
    differ = [
        name
        for name in sorted(set(shipped["files"]) | set(fresh["files"]))
        if shipped["files"].get(name, {}).get("sha256")
        != fresh["files"].get(name, {}).get("sha256")
    ]
    if shipped["sources"] != fresh["sources"]:
        differ.append("sources (MarketData fingerprints)")
    for name in differ:
        print(f"differs: {name}")
    print("data/ is up to date." if not differ else f"{len(differ)} difference(s).")
    return 1 if differ else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DATA, help="Folder to write (default data/).")
    parser.add_argument("--check", action="store_true", help="Compare a rebuild with data/.")
    args = parser.parse_args()
    if args.check:
        return check()
    man = build(args.out)
    for name, entry in man["files"].items():
        print(f"{entry['sha256']}  {entry['bytes']:>8}  {name}")
    for row in man["sources"]:
        print(f"{row['fingerprint']}  {row['source']} {row['kwargs']}")
    if update_readme(args.out / "README.md", man):
        print(f"updated the manifest tables of {args.out / 'README.md'}")
    total = sum(p.stat().st_size for p in folder_files(args.out))
    print(f"{args.out}: {total:,} bytes in all (cache excluded)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

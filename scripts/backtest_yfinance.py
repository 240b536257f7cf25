"""Backtest a policy on real yfinance data against Hold (and equal weight).

Example::

    python scripts/backtest_yfinance.py policies/mpo.toml \
        --tickers AAPL,MSFT,JPM,XOM,KO,PG,JNJ,WMT --start 2015-01-01 --end 2024-12-31

Prices are downloaded once (adjusted close and volume, ``auto_adjust=True``)
and cached per ticker as parquet under ``data/cache/yfinance``; later runs only
fetch new dates. A ticker that fails to download stops the run with an error
naming it (nothing already cached is lost).
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import logging
from pathlib import Path

import pandas as pd

from mpo.backtest import run_backtests
from mpo.config import load_spec, parse_spec
from mpo.data.sources import load_market_data
from mpo.errors import MpoError
from mpo.report import format_table


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("spec", type=Path)
    parser.add_argument("--tickers", required=True, help="Comma-separated Yahoo symbols.")
    parser.add_argument("--start", default="2015-01-01")
    parser.add_argument("--end", default=None)
    parser.add_argument("--backtest-start", default=None)
    parser.add_argument("--cache-dir", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=Path("runs"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    try:
        spec = load_spec(args.spec)
        market = load_market_data(
            "yfinance",
            tickers=[t.strip() for t in args.tickers.split(",")],
            start=args.start,
            end=args.end,
            cache_dir=args.cache_dir,
        )
        ew = parse_spec(
            {
                "name": "equal_weight",
                "kind": "equal_weight",
                **{k: spec.model_dump()[k] for k in ("backtest", "costs")},
            }
        )
        run = run_backtests([ew, spec], market, start=args.backtest_start)
    except MpoError as exc:
        print(f"error: {exc}")
        return 2
    print(f"{market.volume_note}\nbacktest {run.start.date()} to {run.end.date()}\n")
    print(format_table(run.table()))
    stamp = pd.Timestamp.now().strftime("%Y%m%d-%H%M%S")
    print(f"\nresults: {run.save(args.out / f'{stamp}-yfinance-{spec.name}')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

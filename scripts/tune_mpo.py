"""Tune an MPO (or SPO) policy with Optuna on yfinance data; test the winner against Hold.

Example::

    python scripts/tune_mpo.py policies/mpo.toml \
        --tickers AAPL,MSFT,JPM,XOM,KO,PG,JNJ,WMT --start 2012-01-01 --end 2024-12-31 \
        --train 2015-01-02 2018-12-31 --test 2021-01-04 2024-12-31 --trials 50 --workers 2

Steps: download (and cache) adjusted prices and volumes, search gamma_risk and
gamma_trade on the training window only (the workers never see data after it),
check the purge gap, re-run the best parameters on the test window beside
Hold, equal weight and the untuned spec, and print the table with the deflated
Sharpe ratio and bootstrap confidence intervals. Everything is saved in
``runs/<stamp>-tune-<name>/``; the study lives in ``runs/studies.journal``
(``--storage postgresql://...`` to share it between machines: run the same
command on each). Interrupt it at any time: the same command resumes.
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import logging
from pathlib import Path

import optuna
import pandas as pd

from mpo.config import load_spec
from mpo.data.sources import load_market_data
from mpo.errors import MpoError
from mpo.report import format_table
from mpo.tuning import tune


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("spec", type=Path)
    parser.add_argument("--tickers", required=True, help="Comma-separated Yahoo symbols.")
    parser.add_argument("--start", default="2012-01-01", help="First date of data to download.")
    parser.add_argument("--end", default=None)
    parser.add_argument("--train", nargs=2, metavar=("START", "END"), required=True)
    parser.add_argument("--test", nargs=2, metavar=("START", "END"), required=True)
    parser.add_argument("--purge", default=None, help="Periods, e.g. 600d (default: lookback).")
    parser.add_argument("--trials", type=int, default=50)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--storage", default=None)
    parser.add_argument("--study", default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache-dir", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=Path("runs"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = args.storage or str(args.out / "studies.journal")
    try:
        spec = load_spec(args.spec)
        market = load_market_data(
            "yfinance",
            tickers=[t.strip() for t in args.tickers.split(",")],
            start=args.start,
            end=args.end,
            cache_dir=args.cache_dir,
        )
        result = tune(
            spec,
            market,
            trials=args.trials,
            train=tuple(args.train),
            test=tuple(args.test),
            purge=args.purge,
            storage=storage,
            study_name=args.study or f"{spec.name}-yfinance",
            workers=args.workers,
            seed=args.seed,
        )
    except MpoError as exc:
        print(f"error: {exc}")
        return 2
    except KeyboardInterrupt:
        print(f"\ninterrupted; finished trials are kept in {storage}: rerun to resume.")
        return 130
    d = result.deflated
    w = result.windows
    print(f"{market.volume_note}")
    print(
        f"best of {d['n_trials']} trials: {result.best_params} (train Sharpe "
        f"{result.best_value:.2f}, deflated Sharpe ratio {d['dsr']:.3f})"
    )
    print(f"test window {w.test_start.date()} to {w.test_end.date()}:\n")
    print(format_table(result.table()))
    stamp = pd.Timestamp.now().strftime("%Y%m%d-%H%M%S")
    run_dir = result.save(args.out / f"{stamp}-tune-{spec.name}", spec_path=args.spec)
    print(f"\nresults: {run_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

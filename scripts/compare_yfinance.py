"""The main comparison on your own yfinance universe: tune MPO, train DMPO, compare vs Hold.

Example::

    python scripts/compare_yfinance.py \
        --tickers AAPL,MSFT,JPM,XOM,KO,PG,JNJ,WMT,UNH,HD --start 2012-01-01 --end 2024-12-31 \
        --backtest-start 2020-01-02 --trials 30 --workers 2

Steps, all on data downloaded once (adjusted prices and real volumes, cached):

1. MPO's ``gamma_risk``/``gamma_trade`` are tuned with Optuna on a training window that
   ends a purge (the policy's longest lookback) before ``--backtest-start``;
2. DMPO, the two-stage model and the direct-weights network are trained on data
   ending ``--gap`` periods before ``--backtest-start``;
3. Hold, equal weight, SPO, tuned MPO, two-stage, DMPO-QP and DMPO-MPO are backtested
   from ``--backtest-start`` in cvxportfolio with the same costs and constraints; the
   table is printed and everything (checkpoints, study, report.html) is saved in
   ``runs/<stamp>-compare-yfinance/``.

Larger settings: more trials (``--trials 100``), more epochs (``[train] epochs`` in
the DMPO spec), a longer feature window or the Transformer encoder
(``[encoder] kind = "transformer"``) in a copy of ``policies/dmpo.toml``.
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import logging
from pathlib import Path

import optuna
import pandas as pd

from mpo.backtest import run_backtests
from mpo.config import load_spec, parse_spec
from mpo.data.sources import load_market_data
from mpo.errors import DataError, MpoError
from mpo.learn.cli import run_experiment
from mpo.learn.config import load_train_spec
from mpo.report import format_table, write_report
from mpo.tuning import tune

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tickers", required=True, help="Comma-separated Yahoo symbols.")
    parser.add_argument("--start", default="2012-01-01", help="First date of data to download.")
    parser.add_argument("--end", default=None)
    parser.add_argument("--backtest-start", required=True, help="First date of the comparison.")
    parser.add_argument("--gap", type=int, default=63, help="Periods between DMPO data and it.")
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--policies", type=Path, default=ROOT / "policies",
                        help="Folder with spo.toml, mpo.toml, dmpo.toml.")  # fmt: skip
    parser.add_argument("--cache-dir", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=Path("runs"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    stamp = pd.Timestamp.now().strftime("%Y%m%d-%H%M%S")
    run_dir = args.out / f"{stamp}-compare-yfinance"
    try:
        market = load_market_data(
            "yfinance",
            tickers=[t.strip() for t in args.tickers.split(",")],
            start=args.start,
            end=args.end,
            cache_dir=args.cache_dir,
        )
        print(market.volume_note)
        cal = market.calendar
        first = int(cal.searchsorted(pd.Timestamp(args.backtest_start)))
        if first - args.gap - 1 < 0 or first >= len(cal) - 2:
            raise DataError(
                f"--backtest-start {args.backtest_start} leaves no data before it (with a gap "
                f"of {args.gap}) or none after it; data cover {cal[0].date()} to {cal[-1].date()}."
            )
        shared = {"backtest": {"start": str(cal[first].date()), "end": str(cal[-1].date())}}
        spo = load_spec(args.policies / "spo.toml").with_updates(**shared)
        mpo = load_spec(args.policies / "mpo.toml").with_updates(
            **shared,  # the training window: as early as possible, a purge before the backtest
            tuning={"train_start": None, "train_end": None, "test_start": None, "test_end": None},
        )

        print("1/3 tuning MPO (training window purged from the comparison) ...")
        tuned = tune(
            mpo,
            market,
            trials=args.trials,
            test=(str(cal[first].date()), str(cal[-1].date())),
            storage=str(run_dir / "studies.journal"),
            study_name="mpo",
            workers=args.workers,
            seed=args.seed,
            evaluate=False,
        )
        print(f"   best {tuned.best_params}, deflated Sharpe ratio {tuned.deflated['dsr']:.3f}")

        print("2/3 training DMPO and its baselines ...")
        train_end = cal[first - args.gap - 1]
        dmpo_spec = load_train_spec(args.policies / "dmpo.toml").with_updates(
            train={"seed": args.seed}
        )
        run_experiment(dmpo_spec, market.slice(end=train_end), run_dir / "dmpo", progress=True)

        print("3/3 comparing every policy out of sample ...")
        base = spo.model_dump()
        common = {k: base[k] for k in ("data", "backtest", "costs")}
        learned = [
            parse_spec({**common, "name": "two_stage", "kind": "dmpo_qp",
                        "learned": {"checkpoint": str(run_dir / "dmpo" / "two_stage.pt")}}),
            parse_spec({**common, "name": "dmpo_qp", "kind": "dmpo_qp",
                        "learned": {"checkpoint": str(run_dir / "dmpo" / "dmpo.pt")}}),
            load_spec(args.policies / "dmpo_mpo.toml").with_updates(
                **shared, learned={"checkpoint": str(run_dir / "dmpo" / "dmpo.pt")}
            ),
        ]  # fmt: skip
        ew = parse_spec({**common, "name": "equal_weight", "kind": "equal_weight"})
        specs = [ew, spo, tuned.tuned_spec, *learned]
        run = run_backtests(specs, market, start=cal[first], seed=args.seed)
    except MpoError as exc:
        print(f"error: {exc}")
        return 2
    except KeyboardInterrupt:
        print(f"\ninterrupted; the study and checkpoints so far are in {run_dir}.")
        return 130
    print(f"\nbacktest {run.start.date()} to {run.end.date()}\n")
    print(format_table(run.table()))
    run.save(run_dir / "compare")
    write_report(run, run_dir / "report.html", title="mpo: yfinance comparison")
    tuned.save(run_dir / "tuning")
    print(f"\nresults and report.html: {run_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

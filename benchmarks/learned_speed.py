"""Seconds per backtest period of the learned policies (DMPO-MPO, DMPO-QP) vs classic MPO.

Issue 6's inference-cost target: DMPO-MPO's seconds per period within 1.2x of MPO
with classic forecasts, at 20 assets (sp20) and 100 assets (synthetic factor
market as long as sp20), the markets of ``benchmarks/backtest_speed.py``. For each market and
planning horizon ``H`` in {1, 3} and two positions of the backtest window
(``start``: right after the 252-period lookback, ~260 periods of history;
``end``: the last periods of the data, ~1,500 periods of history), over the same
periods and with the same constraints, costs and solver:

* ``MPO``: rolling-mean returns (252 periods) and full rolling covariance (252);
* ``DMPO-MPO``: the same cvxportfolio MPO, with mu_hat and Sigma_hat from the
  encoder (:class:`mpo.forecast.learned.LearnedReturnsForecast`, ``LearnedCovariance``);
* ``DMPO-QP``: the QP layer's own first-step decision (``DMPOQPPolicy``).

Each is one ``mpo.backtest.run_backtests([spec], ..., include_hold=False)``; its
``seconds_per_period`` is the simulator's wall time over the periods (first-period
cvxpy compilation included). ``views_ms`` is the learned views alone
(``LearnedViews._compute``: feature window + encoder forward) per period, timed
on the same dates. ``ratio = DMPO-MPO / MPO``; the target is <= 1.2.

The position matters for the learned views only: the feature window recomputes
the EWM volatility over the whole history handed to the policy (exactly the
training panel's values, so it cannot be truncated), an O(history) cost, while
the classic forecasts use fixed 252-period windows.

The checkpoints are *randomly initialised* (not trained): inference cost does not
depend on the weights. The encoder is realistic: LSTM hidden 32, window 20,
features returns + EWM volatility, low-rank-plus-diagonal risk of rank 3, encoder
horizon = the MPO planning horizon, QP options of ``policies/dmpo.toml``.

Usage: ``python benchmarks/learned_speed.py [--periods 100] [--quick] [--out PATH]``.
"""

from __future__ import annotations

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import pandas as pd  # noqa: E402
import torch  # noqa: E402

from mpo.backtest import run_backtests  # noqa: E402
from mpo.config import parse_spec  # noqa: E402
from mpo.data.market import MarketData  # noqa: E402
from mpo.data.sources import load_market_data  # noqa: E402
from mpo.forecast.learned import LearnedViews  # noqa: E402
from mpo.io import package_versions, write_json  # noqa: E402
from mpo.learn.checkpoint import Checkpoint, save_checkpoint  # noqa: E402
from mpo.learn.config import TrainSpec  # noqa: E402
from mpo.learn.train import build_dmpo_model  # noqa: E402

LOOKBACK = 252
TARGET = 1.2
DEFAULT_OUT = Path(__file__).parent / "results" / "learned_speed.json"
ENCODER = {"kind": "lstm", "hidden": 32, "factor": "lowrank_diag", "rank": 3, "mu_scale": 1e-2}
FEATURES = {"window": 20, "features": ["returns", "volatility"]}


def _train_spec(horizon: int) -> TrainSpec:
    return TrainSpec().with_updates(
        features=FEATURES,
        encoder=ENCODER,
        qp={"horizon": horizon, "risk_aversion": 1.0, "delta": 0.2, "w_max": 0.25},
        costs={"half_spread": 1e-3, "impact": 0.0},  # a QP gamma of 1e-3 (timing only)
    )


def write_checkpoint(market: MarketData, horizon: int, path: Path, seed: int = 0) -> Path:
    """A randomly initialised DMPO checkpoint on ``market``'s universe."""
    spec = _train_spec(horizon)
    enc = spec.encoder_config(market.n_assets)
    qp = spec.qp_options()
    model = build_dmpo_model(enc, qp, seed)
    ckpt = Checkpoint(
        kind="dmpo",
        state_dict=model.state_dict(),
        encoder_config=enc.to_dict(),
        feature_config=spec.feature_spec().to_dict(),
        qp_config=qp.to_dict(),
        tickers=list(market.tickers),
        train_window=[str(market.calendar[0].date()), str(market.calendar[LOOKBACK].date())],
        fingerprint=market.fingerprint(),
        seed=seed,
    )
    return save_checkpoint(ckpt, path)


def _spec(kind: str, horizon: int, checkpoint: Path) -> dict:
    out = {
        "name": f"{kind}_H{horizon}",
        "kind": kind,
        "forecast": {"kind": "rolling_mean", "lookback": LOOKBACK},
        "risk": {"kind": "full", "lookback": LOOKBACK},
        "objective": {"gamma_risk": 5.0, "gamma_trade": 1.0, "planning_horizon": horizon},
        "constraints": {"long_only": True, "max_weight": 0.2, "leverage": 1.0},
    }
    if kind.startswith("dmpo"):
        out["learned"] = {"checkpoint": str(checkpoint)}
    return out


def views_seconds(checkpoint: Path, market: MarketData, dates: pd.DatetimeIndex) -> float:
    """Seconds per period of the learned views alone (feature window + encoder)."""
    views = LearnedViews(checkpoint)
    returns = market.returns_with_cash()
    volumes = market.dollar_volumes
    tic = time.perf_counter()
    for t in dates:
        past = returns.loc[returns.index < t]
        views.at(t, past, volumes.loc[past.index])
    return (time.perf_counter() - tic) / len(dates)


def bench(
    market: MarketData,
    label: str,
    periods: int,
    horizons: list[int],
    positions: list[str],
    tmp: Path,
) -> list:
    cal = market.calendar
    rows = []
    for h, position in ((h, p) for p in positions for h in horizons):
        ckpt = write_checkpoint(market, h, tmp / f"{label}_H{h}.pt")
        start_pos = LOOKBACK + 10 if position == "start" else len(cal) - periods - 2
        t0, t1 = cal[start_pos], cal[start_pos + periods]
        row: dict = {
            "data": label,
            "assets": market.n_assets,
            "H": h,
            "position": position,
            "history": start_pos,
            "periods": periods,
        }
        for kind in ("mpo", "dmpo_mpo", "dmpo_qp"):
            spec = parse_spec(_spec(kind, h, ckpt))
            run = run_backtests(
                [spec], market, start=t0, end=t1, include_hold=False, progress=False
            )
            row[f"{kind}_ms"] = 1e3 * run.results[spec.name].seconds_per_period
        row["views_ms"] = 1e3 * views_seconds(ckpt, market, cal[start_pos : start_pos + periods])
        row["ratio_dmpo_mpo_over_mpo"] = row["dmpo_mpo_ms"] / row["mpo_ms"]
        row["ratio_dmpo_qp_over_mpo"] = row["dmpo_qp_ms"] / row["mpo_ms"]
        row["target_met"] = bool(row["ratio_dmpo_mpo_over_mpo"] <= TARGET)
        rows.append(row)
        print(
            f"{label:>10} n={market.n_assets:<4d} H={h} {position:>5}: MPO {row['mpo_ms']:7.1f} ms  "
            f"DMPO-MPO {row['dmpo_mpo_ms']:7.1f} ms  DMPO-QP {row['dmpo_qp_ms']:7.1f} ms  "
            f"views {row['views_ms']:5.1f} ms  ratio {row['ratio_dmpo_mpo_over_mpo']:.2f}",
            flush=True,
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--periods", type=int, default=100)
    parser.add_argument("--quick", action="store_true", help="20 periods, H = 1, end only.")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument(
        "--only",
        choices=["sp20", "synthetic"],
        default=None,
        help="Re-measure one data set; its rows replace those in --out, the others are kept.",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(1)
    periods = 20 if args.quick else args.periods
    horizons = [1] if args.quick else [1, 3]
    positions = ["end"] if args.quick else ["start", "end"]
    sp20 = load_market_data("sp20", adv=1e8, start="2017-01-01")
    synth = load_market_data("synthetic", n_assets=100, n_periods=len(sp20.calendar), seed=0)
    rows = []
    if args.only and args.out.exists():
        kept = json.loads(args.out.read_text())["rows"]
        rows = [r for r in kept if r["data"] != args.only]
    with tempfile.TemporaryDirectory() as tmp:
        if args.only in (None, "sp20"):
            rows += bench(sp20, "sp20", periods, horizons, positions, Path(tmp))
        if args.only in (None, "synthetic"):
            rows += bench(synth, "synthetic", periods, horizons, positions, Path(tmp))
    rows.sort(key=lambda r: (r["assets"], r["H"], r["position"] != "start"))
    table = pd.DataFrame(rows)
    print()
    print(table.to_string(index=False, float_format=lambda x: f"{x:.2f}"))
    worst = float(table["ratio_dmpo_mpo_over_mpo"].max())
    print(
        f"\nworst DMPO-MPO / MPO = {worst:.2f} (target <= {TARGET}): "
        f"{'met' if worst <= TARGET else 'NOT met'}"
    )
    write_json(
        {
            "rows": rows,
            "max_ratio_dmpo_mpo_over_mpo": worst,
            "target_ratio": TARGET,
            "target_met": worst <= TARGET,
            "quick": args.quick,
            "checkpoints": "random init (inference cost does not depend on training); "
            f"encoder {ENCODER}, features {FEATURES}, encoder horizon = H",
            "env": {
                "OPENBLAS_NUM_THREADS": os.environ.get("OPENBLAS_NUM_THREADS"),
                "torch_threads": torch.get_num_threads(),
            },
            "versions": package_versions(),
        },
        args.out,
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

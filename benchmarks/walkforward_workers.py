"""Folds per minute of ``mpo walkforward`` with 1 and 2 local Dask workers, and the driver's overhead.

The same walk-forward (synthetic data, SPO tuned with a few Optuna trials per
fold, Hold and equal weight beside it) is run from scratch into a fresh folder
with each worker count. Reported per worker count:

* ``wall_s``: :func:`mpo.research.walk_forward` from an empty folder (its own
  cluster start included); ``folds_per_min`` = folds / wall time;
* the driver's overhead, timed by phase: ``plan_s`` (:func:`mpo.research.plan`),
  ``cluster_start_s`` / ``cluster_stop_s`` (:func:`mpo.research.engine.connect`
  alone), ``scatter_s`` (broadcasting the data to the workers once), and
  ``rerun_s``: ``walk_forward`` again on the finished folder, where every task
  is skipped, i.e. cluster start, statistics, ``summary.json``, ``folds.csv``
  and the report without any task work. ``overhead_s`` = plan + rerun + scatter;
  ``task_work_s`` = wall - (overhead_s - plan_s), the graph's share of the wall time.

The target is a 2-worker / 1-worker speed-up of about 2 on 2 idle cores, less
the overhead (Amdahl). Run on a quiet machine:
``python benchmarks/walkforward_workers.py [--trials 3 --periods 600]``.
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse
import logging
import tempfile
import time
import warnings
from importlib import metadata
from pathlib import Path

import pandas as pd

from mpo.config import parse_spec
from mpo.data.synthetic import make_synthetic
from mpo.io import package_versions, write_json
from mpo.research import plan, walk_forward
from mpo.research.engine import connect

ROOT = Path(__file__).parents[1]
POLICIES = ("hold", "equal_weight", "spo")


def _spec(trials: int):
    return parse_spec(
        {
            "name": "spo",
            "kind": "spo",
            "forecast": {"kind": "rolling_mean", "lookback": 60},
            "risk": {"kind": "full", "lookback": 60},
            "objective": {"gamma_risk": 5.0, "gamma_trade": 1.0, "planning_horizon": 1},
            "constraints": {"long_only": True, "max_weight": 0.3, "leverage": 1.0},
            "costs": {"half_spread": 0.0005, "impact": 1.0},
            "tuning": {
                "trials": trials,
                "prune": False,  # every trial costs the same
                "params": {"gamma_risk": {"low": 0.1, "high": 100.0, "log": True}},
            },
        }
    )


def _timed(fn, *args, **kwargs) -> tuple[object, float]:
    tic = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - tic


def _cluster_phases(workers: int, market) -> dict:
    """Seconds to start a local cluster, scatter the data once to every worker, stop it."""
    tic = time.perf_counter()
    with connect(workers) as client:
        start = time.perf_counter() - tic
        _, scatter = _timed(client.scatter, market, broadcast=True)
        tic = time.perf_counter()
    stop = time.perf_counter() - tic
    return {"cluster_start_s": start, "scatter_s": scatter, "cluster_stop_s": stop}


def _run(workers: int, spec, market, root: Path, args) -> dict:
    p, plan_s = _timed(
        plan, [spec], {"main": market}, root, train=args.train, test=args.test, trials=args.trials
    )
    res, wall = _timed(walk_forward, p, workers=workers, progress=False)
    assert not res.failures, res.failures
    n_tasks = len(p.fits) + len(p.stitches)
    unfinished = [t.key for t in (*p.fits, *p.stitches) if t.done() is None]
    if unfinished:  # the rerun would not measure the overhead alone
        raise RuntimeError(
            f"{workers} worker(s): tasks without a result after the run: {unfinished}"
        )
    again, rerun = _timed(walk_forward, p, workers=workers, progress=False)
    if again.skipped != n_tasks:
        unfinished = [t.key for t in (*p.fits, *p.stitches) if t.done() is None]
        raise RuntimeError(
            f"{workers} worker(s): the rerun skipped {again.skipped} of {n_tasks} tasks; "
            f"without a result now: {unfinished}"
        )
    phases = _cluster_phases(workers, market)
    overhead = plan_s + rerun + phases["scatter_s"]
    return {
        "workers": workers,
        "folds": len(p.folds),
        "tasks": n_tasks,
        "wall_s": wall,
        "folds_per_min": 60 * len(p.folds) / wall,
        "plan_s": plan_s,
        **phases,
        "rerun_s": rerun,
        "overhead_s": overhead,
        "task_work_s": wall - (overhead - plan_s),
        "spo_sharpe": float(res.metrics["main"]["spo"]["sharpe"]),
    }


def _same_results(a: Path, b: Path) -> bool:
    """Whether the stitched returns and the folds table are bit-identical across worker counts."""
    same = all(
        pd.read_parquet(a / p / "returns.parquet").equals(
            pd.read_parquet(b / p / "returns.parquet")
        )
        for p in POLICIES
    )
    return same and pd.read_csv(a / "folds.csv").equals(pd.read_csv(b / "folds.csv"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=3, help="Optuna trials per fold")
    ap.add_argument("--assets", type=int, default=5)
    ap.add_argument("--periods", type=int, default=600, help="synthetic periods (5 folds at 600)")
    ap.add_argument("--train", default="150d")
    ap.add_argument("--test", default="80d")
    ap.add_argument("--notes", default="", help="conditions of the run, stored in the JSON")
    ap.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks/results/walkforward_workers.json"
    )
    args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)  # the reruns' 'tasks ... skipped' warnings
    # distributed always starts an HTTP server (8787 by default) and warns when it is taken
    warnings.filterwarnings("ignore", message="Port 8787 is already in use")
    spec = _spec(args.trials)
    market = make_synthetic(n_assets=args.assets, n_periods=args.periods, seed=1)
    load_before = os.getloadavg()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for workers in (1, 2):
            rows.append(_run(workers, spec, market, Path(tmp) / f"w{workers}", args))
        identical = _same_results(Path(tmp) / "w1", Path(tmp) / "w2")
    speedup = rows[0]["wall_s"] / rows[1]["wall_s"]
    speedup_tasks = rows[0]["task_work_s"] / rows[1]["task_work_s"]
    print(
        f"{'workers':>7} {'folds':>5} {'tasks':>5} {'wall s':>7} {'folds/min':>9} {'plan s':>6} "
        f"{'start s':>7} {'scatter s':>9} {'rerun s':>7} {'overhead s':>10} {'tasks s':>7}"
    )
    for r in rows:
        print(
            f"{r['workers']:>7} {r['folds']:>5} {r['tasks']:>5} {r['wall_s']:>7.1f} "
            f"{r['folds_per_min']:>9.2f} {r['plan_s']:>6.2f} {r['cluster_start_s']:>7.2f} "
            f"{r['scatter_s']:>9.3f} {r['rerun_s']:>7.2f} {r['overhead_s']:>10.2f} "
            f"{r['task_work_s']:>7.1f}"
        )
    print(
        f"2 vs 1 worker: {speedup:.2f}x (wall), {speedup_tasks:.2f}x (task work, overhead "
        f"removed); results identical across worker counts: {identical}"
    )
    write_json(
        {
            "meta": {
                "cpus": os.cpu_count(),
                "problem": (
                    f"SPO tuned ({args.trials} trials/fold, gamma_risk, no pruning) beside Hold "
                    f"and equal weight; synthetic {args.assets} assets x {args.periods} periods "
                    "(seed 1), lookbacks 60"
                ),
                "config": {
                    "trials": args.trials,
                    "assets": args.assets,
                    "periods": args.periods,
                    "train": args.train,
                    "test": args.test,
                },
                "versions": {
                    **package_versions(),
                    "dask": metadata.version("dask"),
                    "distributed": metadata.version("distributed"),
                },
                "load_average_1m_before_after": [load_before[0], os.getloadavg()[0]],
                "notes": args.notes,
            },
            "rows": rows,
            "speedup_wall": speedup,
            "speedup_task_work": speedup_tasks,
            "identical_results": identical,
        },
        args.out,
    )
    print(f"written {args.out}")


if __name__ == "__main__":
    main()

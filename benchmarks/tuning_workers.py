"""Trials per minute of ``mpo tune`` with 1 and 2 worker processes on one journal file.

The same study (SPO on the bundled sp20 data, a one-year training window, no
pruning so every trial costs the same) is run from scratch with each worker
count. Two rates are reported:

* ``wall``: finished trials / wall time of ``tune`` (worker start-up included);
* ``steady``: finished trials / (last trial end - first trial start), from the
  trial timestamps in the storage (start-up excluded).

The target (issue 4) is a 2-worker / 1-worker ratio of about 2 on 2 cores.
Run on a quiet machine: ``python benchmarks/tuning_workers.py [--trials 16]``.
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse
import tempfile
import time
from pathlib import Path

import optuna

from mpo.config import load_spec
from mpo.data.sources import load_market_data
from mpo.io import package_versions, write_json
from mpo.tuning import open_storage, tune

ROOT = Path(__file__).parents[1]


def _run(spec, market, workers: int, trials: int, storage: str) -> dict:
    tic = time.perf_counter()
    res = tune(
        spec,
        market,
        trials=trials,
        train=("2016-01-04", "2016-12-23"),
        storage=storage,
        study_name=f"bench-{workers}",
        workers=workers,
        evaluate=False,
        progress=False,
    )
    wall = time.perf_counter() - tic
    study = optuna.load_study(study_name=f"bench-{workers}", storage=open_storage(storage))
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    span = (
        max(t.datetime_complete for t in done) - min(t.datetime_start for t in done)
    ).total_seconds()
    return {
        "workers": workers,
        "finished": len(done),
        "wall_s": wall,
        "steady_s": span,
        "trials_per_min_wall": 60 * len(done) / wall,
        "trials_per_min_steady": 60 * len(done) / span,
        "mean_trial_s": sum(t.user_attrs["seconds"] for t in done) / len(done),
        "distinct_workers": len({t.user_attrs["worker"] for t in done}),
        "best_value": res.best_value,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=16)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/tuning_workers.json")
    args = ap.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    spec = load_spec(ROOT / "policies/spo.toml").with_updates(
        tuning={"prune": False}, forecast={"lookback": 252}, risk={"lookback": 252}
    )
    market = load_market_data("sp20", adv=1e8, start="2014-06-01")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        storage = str(Path(tmp) / "bench.journal")
        for workers in (1, 2):
            rows.append(_run(spec, market, workers, args.trials, storage))
    ratio_wall = rows[1]["trials_per_min_wall"] / rows[0]["trials_per_min_wall"]
    ratio_steady = rows[1]["trials_per_min_steady"] / rows[0]["trials_per_min_steady"]
    print(
        f"{'workers':>7} {'trials':>6} {'wall s':>7} {'trials/min (wall)':>18} "
        f"{'trials/min (steady)':>20} {'s/trial':>8}"
    )
    for r in rows:
        print(
            f"{r['workers']:>7} {r['finished']:>6} {r['wall_s']:>7.1f} "
            f"{r['trials_per_min_wall']:>18.1f} {r['trials_per_min_steady']:>20.1f} "
            f"{r['mean_trial_s']:>8.2f}"
        )
    print(f"2 vs 1 worker: {ratio_wall:.2f}x (wall), {ratio_steady:.2f}x (steady state)")
    write_json(
        {
            "meta": {
                "cpus": os.cpu_count(),
                "trials": args.trials,
                "problem": "SPO, sp20 (20 assets), train 2016, lookback 252, no pruning",
                "versions": package_versions(),
            },
            "rows": rows,
            "ratio_wall": ratio_wall,
            "ratio_steady": ratio_steady,
        },
        args.out,
    )
    print(f"written {args.out}")


if __name__ == "__main__":
    main()

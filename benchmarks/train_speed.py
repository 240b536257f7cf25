"""Seconds per DMPO training epoch: fast QP solver vs the cvxpylayers reference.

20 assets x ~5,000 days and 100 assets x ~5,000 days, H in {1, 3}, LSTM encoder
(hidden 32, low-rank-plus-diagonal risk, rank 3), batch 64, hard turnover limit,
float64. An epoch is every decision date of the market (~5,000 samples); its time is
the median seconds per batch over ``--batches`` timed batches times the number of
batches (marked extrapolated when fewer batches than an epoch were timed)::

    python benchmarks/train_speed.py            # 20 timed batches per cell
    python benchmarks/train_speed.py --quick    # 3 timed batches per cell (minutes)
"""

from __future__ import annotations

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

from mpo.data.synthetic import make_synthetic  # noqa: E402
from mpo.learn.config import TrainSpec  # noqa: E402
from mpo.learn.dataset import make_dataset  # noqa: E402
from mpo.learn.train import build_dmpo_model, dmpo_batch_loss  # noqa: E402

DEFAULT_OUT = Path(__file__).parent / "results" / "train_speed.json"
BATCH = 64


def time_batches(n: int, horizon: int, backend: str, days: int, batches: int) -> dict:
    market = make_synthetic(n_assets=n, n_periods=days + 40, seed=0, predictability=0.5)
    spec = TrainSpec().with_updates(
        features={"window": 20},
        encoder={"hidden": 32, "rank": 3, "mu_scale": 1e-2},
        qp={"horizon": horizon, "delta": 0.2, "backend": backend},
        costs={"half_spread": 1e-3, "impact": 0.0},
        train={"remedy": "none", "batch_size": BATCH},
    )
    ds = make_dataset(market, spec.feature_spec(), spec.cost_model().estimates)
    model = build_dmpo_model(spec.encoder_config(n), spec.qp_options(), seed=0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    step = dmpo_batch_loss(model, ds, spec)
    gen = torch.Generator().manual_seed(0)
    pos = ds.positions
    n_batches = len(pos) // BATCH
    perm = pos[torch.randperm(len(pos), generator=gen).numpy()]
    times = []
    for b in range(min(batches, n_batches) + 1):  # first batch is a warm-up
        t0 = time.perf_counter()
        opt.zero_grad()
        loss, _ = step(perm[b * BATCH : (b + 1) * BATCH], 0, gen)
        loss.backward()
        opt.step()
        if b > 0:
            times.append(time.perf_counter() - t0)
    per_batch = statistics.median(times)
    return {
        "seconds_per_batch": per_batch,
        "seconds_per_epoch": per_batch * n_batches,
        "batches_per_epoch": n_batches,
        "timed_batches": len(times),
        "extrapolated": len(times) < n_batches,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 timed batches per cell.")
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--days", type=int, default=5000)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    batches = 3 if args.quick else args.batches
    rows = []
    for n in (20, 100):
        for H in (1, 3):
            cell = {"n": n, "H": H, "days": args.days}
            for backend in ("fast", "cvxpylayers"):
                cell[backend] = time_batches(n, H, backend, args.days, batches)
            cell["ratio"] = (
                cell["cvxpylayers"]["seconds_per_epoch"] / cell["fast"]["seconds_per_epoch"]
            )
            rows.append(cell)
            f, c = cell["fast"], cell["cvxpylayers"]
            print(
                f"n={n:4d} H={H}  fast {f['seconds_per_epoch']:8.1f} s/epoch "
                f"({f['seconds_per_batch'] * 1e3:7.1f} ms/batch)   cvxpylayers "
                f"{'~' if c['extrapolated'] else ' '}{c['seconds_per_epoch']:9.1f} s/epoch "
                f"({c['seconds_per_batch'] * 1e3:8.1f} ms/batch)   ratio {cell['ratio']:6.1f}x",
                flush=True,
            )
    meta = {
        "torch": torch.__version__,
        "threads": 1,
        "quick": args.quick,
        "batch": BATCH,
        "model": "LSTM hidden 32, window 20, lowrank_diag rank 3, delta 0.2, float64",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()

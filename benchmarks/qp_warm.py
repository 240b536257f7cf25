"""Warm starts of the fast QP layer from cached active sets: when do they pay off?

Two measurements, written to one JSON file::

    python benchmarks/qp_warm.py             # both parts (a few minutes on 2 cores)
    python benchmarks/qp_warm.py --quick     # smoke run

1. **The layer** (``benchmarks/qp_layer.py``'s problems, float64, forward + backward):
   a batch is solved once to fill the cache, then its inputs ``mu`` and ``L`` are
   perturbed by a relative ``scale`` (a stand-in for one epoch of training) and the
   batch is solved again, alternately, from the other one's active sets. Reported: the
   share of samples solved without the interior point and the seconds against a cold
   solve of the same inputs.
2. **Training** (the README's ``policies/dmpo.toml`` on ``--data synthetic``): seconds
   per epoch cold with the default ``w_prev = "random"``, cold and warm with
   ``w_prev = "fixed"`` (one draw per window, the same every epoch: otherwise the
   cached kinks are at another ``w_prev``), and the share of warm solves per epoch, at
   the spec's learning rate and at a fine-tuning one.
"""

from __future__ import annotations

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import tomllib  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from qp_layer import make_problem  # noqa: E402

from mpo.io import package_versions  # noqa: E402
from mpo.learn.qp import make_backend  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = Path(__file__).parent / "results" / "qp_warm.json"


def _fwd_bwd(backend, spec, mu, L, w_prev, delta, d, keys=None):
    mu = mu.clone().requires_grad_()
    L = L.clone().requires_grad_()
    w, info = backend(spec, mu, L, w_prev, delta, d=d, keys=keys)
    w[:, 0].sum().backward()
    return info


def layer_row(n: int, horizon: int, scale: float, repeats: int) -> dict:
    spec, mu, L, w_prev, delta, d = make_problem(n, horizon, 64, torch.float64)
    g = torch.Generator().manual_seed(1)
    mu2 = mu * (1 + scale * torch.randn(mu.shape, generator=g, dtype=mu.dtype))
    L2 = L * (1 + scale * torch.randn(L.shape, generator=g, dtype=L.dtype))
    cold, warm = make_backend("fast"), make_backend("fast", warm_start=True)
    keys = torch.arange(64)
    pair = [(mu, L), (mu2, L2)]
    _fwd_bwd(warm, spec, mu, L, w_prev, delta, d, keys)  # fill the cache
    cold_t, warm_t, shares = [], [], []
    for i in range(2 * repeats):
        m, l_ = pair[(i + 1) % 2]
        t0 = time.perf_counter()
        _fwd_bwd(cold, spec, m, l_, w_prev, delta, d)
        cold_t.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        info = _fwd_bwd(warm, spec, m, l_, w_prev, delta, d, keys)
        warm_t.append(time.perf_counter() - t0)
        shares.append(float(info.warm.double().mean()))
    c, w = statistics.median(cold_t), statistics.median(warm_t)
    return {"n": n, "H": horizon, "batch": 64, "scale": scale, "warm_share": statistics.mean(shares),
            "cold_fwd_bwd": c, "warm_fwd_bwd": w, "speedup": c / w}  # fmt: skip


def training_rows(epochs: int, lrs: list[float | None]) -> list[dict]:
    from mpo.learn.cli import load_training_market
    from mpo.learn.config import TrainSpec
    from mpo.learn.dataset import chronological_split, make_dataset
    from mpo.learn.train import TrainingCosts, train_dmpo

    raw = tomllib.loads((ROOT / "policies" / "dmpo.toml").read_text())
    base = TrainSpec.model_validate(
        {k: v for k, v in raw.items() if k not in ("name", "description")}
    )
    market = load_training_market(base, "synthetic", None, None)
    rows = []
    for lr in lrs:
        for mode, w_prev, warm in (("cold", "random", False), ("cold", "fixed", False),
                                   ("warm", "fixed", True)):  # fmt: skip
            train = {"w_prev": w_prev, "epochs": epochs, "patience": epochs}
            if lr is not None:
                train["lr"] = lr
            spec = base.with_updates(train=train, qp={"warm_start": warm})
            costs = TrainingCosts.from_spec(spec)
            ds = make_dataset(market, spec.feature_spec(), costs.model.estimates)
            s = spec.split
            tr, va, _ = chronological_split(ds, s.val, s.test, s.purge)
            t0 = time.perf_counter()
            fit = train_dmpo(spec, ds, tr, va, progress=False).fit
            wall = time.perf_counter() - t0
            per_epoch = [h["seconds"] for h in fit.history]
            row = {"lr": spec.train.lr, "mode": mode, "w_prev": w_prev, "epochs": len(per_epoch),
                   "seconds": wall, "seconds_per_epoch": per_epoch,
                   "warm_share": [h.get("warm") for h in fit.history],
                   "val": [h["val"] for h in fit.history]}  # fmt: skip
            rows.append(row)
            print(f"train lr={row['lr']:g} {mode:4s} w_prev={w_prev:6s} {wall:6.1f} s "
                  f"({row['epochs']} epochs; after the first: "
                  f"{statistics.mean(per_epoch[1:]):.2f} s/epoch) warm share "
                  f"{[None if x is None else round(x, 2) for x in row['warm_share']]}",
                  flush=True)  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    sizes = [(20, 1)] if args.quick else [(20, 1), (100, 1), (20, 3)]
    scales = [0.0, 1e-2] if args.quick else [0.0, 1e-3, 1e-2, 5e-2]
    layer = []
    for n, H in sizes:
        for scale in scales:
            row = layer_row(n, H, scale, 1 if args.quick else args.repeats)
            layer.append(row)
            print(f"layer n={n:3d} H={H} scale {scale:<6g} warm share {row['warm_share']:.2f} "
                  f"cold {1e3 * row['cold_fwd_bwd']:7.1f} ms warm {1e3 * row['warm_fwd_bwd']:7.1f} ms "
                  f"speedup {row['speedup']:.2f}x", flush=True)  # fmt: skip
    epochs = 2 if args.quick else args.epochs
    train = training_rows(epochs, [None] if args.quick else [None, 5e-4])
    out = {"meta": {"versions": package_versions(), "cpus": os.cpu_count(), "threads": 1,
                    "quick": args.quick, "batch": 64},
           "layer": layer, "training": train}  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

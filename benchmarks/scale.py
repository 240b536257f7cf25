"""Seconds per period and peak memory of SPO, MPO H=3 and DMPO-MPO as the universe grows.

Each (policy, n, compile path) runs in a fresh subprocess on a synthetic factor
market (``mpo.data.synthetic``, 3 factors) so that its peak resident memory
(``ru_maxrss``) is its own. DMPO-MPO uses an untrained checkpoint of the
default encoder (inference cost does not depend on training). ``dpp`` is
cvxpy's parametrised compile (one compile, cheap re-solves), ``nodpp`` a
fresh canonicalisation each period (``ignore_dpp=True``); ``auto`` is what
mpo chooses (:data:`mpo.policies.optimization.IGNORE_DPP_FROM`).

``--train-sizes`` adds one full DMPO training epoch per size (``--train-days``
decision dates, batch 64, encoder hidden 32, low-rank-plus-diagonal risk of rank
3, H=1, hard turnover limit): seconds and peak memory. ``--train-encoder`` picks the
encoder kind of those epochs (default ``lstm``; ``cross_asset``: a shared per-asset GRU
with cross-asset attention, 2 heads, parameters independent of ``n``).

DMPO-MPO rows also hold ``views_s_per_period``: the seconds a period spends in the
learned forecast and risk terms (window, encoder, frames, parameter values), the
learned views' own share of ``seconds_per_period``.

Usage: ``python benchmarks/scale.py [--sizes 20 100 500] [--periods 5]
[--kinds mpo dmpo_mpo] [--paths auto] [--repeat 2] [--update] [--note TEXT]
[--train-sizes 20 100 500] [--train-encoder cross_asset] [--out PATH]``; prints a
table (and the DMPO-MPO / MPO ratio per size, path and run) and writes JSON (default
``benchmarks/results/scale.json``). ``--repeat`` runs every case that many times
(interleaved, each run a row with its ``run`` number: timings on shared cores are
noisy); ``--update`` replaces only the measured cases' rows in ``--out`` and keeps
the others; ``--note`` is recorded with the rows (e.g. what else ran on the cores).
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

LOOKBACK = 120


def _spec(kind: str, n: int, path: str, ckpt: str | None) -> dict:
    risk = {"kind": "factor", "factors": 3, "lookback": LOOKBACK}
    spec = {
        "name": f"{kind}-{n}",
        "kind": kind,
        "forecast": {"kind": "rolling_mean", "lookback": LOOKBACK},
        "risk": risk,
        "objective": {
            "gamma_risk": 5.0,
            "gamma_trade": 1.0,
            "planning_horizon": 1 if kind == "spo" else 3,
        },
        "constraints": {"long_only": True, "max_weight": max(0.05, 2.0 / n), "leverage": 1.0},
    }
    if path == "dpp":
        spec["backtest"] = {"solver_options": {"ignore_dpp": False}}
    elif path == "nodpp":
        spec["backtest"] = {"solver_options": {"ignore_dpp": True}}
    if ckpt:
        spec["learned"] = {"checkpoint": ckpt}
        del spec["forecast"], spec["risk"]
    return spec


def _checkpoint(market, folder: Path) -> str:
    """An untrained DMPO checkpoint of the default encoder for ``market``'s tickers."""
    from mpo.learn.checkpoint import Checkpoint, save_checkpoint
    from mpo.learn.dataset import FeatureSpec
    from mpo.learn.encoders import EncoderConfig
    from mpo.learn.train import build_dmpo_model

    n = market.n_assets
    features = FeatureSpec(window=20, horizon=3, features=("returns", "volatility"))
    enc = EncoderConfig(kind="lstm", n_assets=n, n_features=2, window=20, horizon=3, hidden=32,
                        factor="lowrank_diag", rank=3, mu_scale=5e-3)  # fmt: skip
    qp = {"risk_aversion": 1.0, "gamma": 1e-3, "eps": 1e-6, "w_max": 1.0, "delta": 0.3,
          "learned_delta": False, "backend": "fast"}  # fmt: skip
    model = build_dmpo_model(enc, qp, 0)
    cal = market.calendar
    ckpt = Checkpoint(kind="dmpo", state_dict=model.state_dict(), encoder_config=enc.to_dict(),
                      feature_config=features.to_dict(), qp_config=qp, tickers=market.tickers,
                      train_window=[str(cal[0].date()), str(cal[50].date())],
                      fingerprint="bench", seed=0)  # fmt: skip
    return str(save_checkpoint(ckpt, folder / f"dmpo-{n}.pt"))


def child(kind: str, n: int, path: str, periods: int) -> dict:
    """One measurement (run in its own process)."""
    import logging
    import tempfile

    logging.disable(logging.WARNING)
    from mpo.backtest import run_backtests
    from mpo.config import parse_spec
    from mpo.data.synthetic import make_synthetic

    market = make_synthetic(n_assets=n, n_periods=LOOKBACK + periods + 40, seed=0)
    ckpt = _checkpoint(market, Path(tempfile.mkdtemp())) if kind == "dmpo_mpo" else None
    views_s = _time_learned_terms() if ckpt else None
    spec = parse_spec(_spec(kind, n, path, ckpt))
    cal = market.calendar
    start = cal[LOOKBACK + 30]
    tic = time.perf_counter()
    run = run_backtests([spec], market, start=start, end=cal[LOOKBACK + 30 + periods],
                        include_hold=False, progress=False)  # fmt: skip
    wall = time.perf_counter() - tic
    r = run.results[spec.name]
    row = {
        "kind": kind, "n": n, "path": path, "periods": len(r.returns),
        "seconds_per_period": r.seconds_per_period, "wall_s": wall,
        "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "inaccurate": r.solves.get("inaccurate", 0),
    }  # fmt: skip
    if views_s is not None:
        row["views_s_per_period"] = views_s[0] / max(len(r.returns), 1)
    return row


def _time_learned_terms() -> list[float]:
    """Time every call of the learned terms' ``values_in_time`` (this process only)."""
    from mpo.forecast import learned

    total = [0.0]

    def timed(method):
        def values_in_time(*args, **kwargs):
            tic = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                total[0] += time.perf_counter() - tic

        return values_in_time

    for cls in (learned.LearnedReturnsForecast, learned.LearnedFactorRisk,
                learned.LearnedCovariance):  # fmt: skip
        cls.values_in_time = timed(cls.values_in_time)
    return total


def train_child(n: int, days: int, encoder: str = "lstm") -> dict:
    """Seconds of one full training epoch at ``n`` assets (run in its own process)."""
    import torch

    from mpo.data.synthetic import make_synthetic
    from mpo.learn.config import TrainSpec
    from mpo.learn.dataset import make_dataset
    from mpo.learn.train import build_dmpo_model, dmpo_batch_loss

    torch.set_num_threads(1)
    market = make_synthetic(n_assets=n, n_periods=days + 40, seed=0, predictability=0.5)
    spec = TrainSpec().with_updates(
        features={"window": 20},
        encoder={"kind": encoder, "hidden": 32, "rank": 3, "mu_scale": 1e-2},
        qp={"horizon": 1, "delta": 0.2, "w_max": 1.0},
        costs={"half_spread": 1e-3, "impact": 0.0},
        train={"remedy": "none", "batch_size": 64},
    )
    ds = make_dataset(market, spec.feature_spec(), spec.cost_model().estimates)
    model = build_dmpo_model(spec.encoder_config(n), spec.qp_options(), seed=0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    step = dmpo_batch_loss(model, ds, spec)
    gen = torch.Generator().manual_seed(0)
    pos = ds.positions[torch.randperm(len(ds.positions), generator=gen).numpy()]
    tic = time.perf_counter()
    batches = 0
    for b in range(0, len(pos), 64):
        opt.zero_grad()
        loss, _ = step(pos[b : b + 64], 0, gen)
        loss.backward()
        opt.step()
        batches += 1
    return {
        "kind": "train_epoch", "encoder": encoder, "n": n, "samples": len(pos),
        "batches": batches,
        "seconds_per_epoch": time.perf_counter() - tic,
        "parameters": sum(p.numel() for p in model.parameters()),
        "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=[20, 100, 500])
    parser.add_argument("--periods", type=int, default=5)
    parser.add_argument("--kinds", nargs="+", default=["spo", "mpo", "dmpo_mpo"])
    parser.add_argument("--paths", nargs="+", default=["auto", "dpp", "nodpp"])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/scale.json"))
    parser.add_argument("--repeat", type=int, default=1, help="runs of every policy case")
    parser.add_argument("--update", action="store_true", help="keep --out's other rows")
    parser.add_argument("--note", default=None, help="recorded with the measured rows")
    parser.add_argument("--train-sizes", type=int, nargs="*", default=[])
    parser.add_argument("--train-days", type=int, default=1000)
    parser.add_argument("--train-encoder", default="lstm", help="encoder kind of the epochs")
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    parser.add_argument("--train-child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.train_child:
        n, days, encoder = args.train_child
        print(json.dumps(train_child(int(n), int(days), encoder)))
        return
    if args.child:
        kind, n, path, periods = args.child
        print(json.dumps(child(kind, int(n), path, int(periods))))
        return
    rows = []

    def measure(args_, label: dict, name: str, show) -> None:
        """Run this script with ``args_`` in a fresh process; record and print its row."""
        out = subprocess.run([sys.executable, __file__, *args_], capture_output=True,
                             text=True, timeout=3600)  # fmt: skip
        if out.returncode != 0:
            row = {**label, "error": out.stderr.strip().splitlines()[-1:]}
        else:
            row = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append(row)
        print(f"{name}: " + (show(row) if "error" not in row else f"failed {row['error']}"),
              flush=True)  # fmt: skip

    for n in args.sizes:
        for run in range(1, args.repeat + 1):
            for kind in args.kinds:
                for path in args.paths if kind != "spo" else ["auto"]:
                    measure(
                        ["--child", kind, str(n), path, str(args.periods)],
                        {"kind": kind, "n": n, "path": path},
                        f"{kind:>9} n={n:<4} {path:>5}"
                        + (f" run {run}" if args.repeat > 1 else ""),
                        _show_policy,
                    )
                    if args.repeat > 1:
                        rows[-1]["run"] = run
    enc = args.train_encoder
    for n in args.train_sizes:
        measure(
            ["--train-child", str(n), str(args.train_days), enc],
            {"kind": "train_epoch", "encoder": enc, "n": n},
            f"train epoch {enc} n={n:<4}",
            lambda r: (
                f"{r['seconds_per_epoch']:.1f} s ({r['samples']} samples, {r['parameters']} "
                f"parameters), peak {r['peak_mb']:.0f} MB"
            ),
        )
    for line in _ratios(rows):
        print(line)
    from mpo.io import package_versions, write_json

    if args.note:
        for row in rows:
            row["note"] = args.note
    if args.update and args.out.exists():
        rows = _merged(json.loads(args.out.read_text())["rows"], rows)
    write_json({"rows": rows, "periods": args.periods, "lookback": LOOKBACK,
                "cpus": os.cpu_count(), "versions": package_versions()}, args.out)  # fmt: skip
    print(f"written to {args.out}")


def _show_policy(r: dict) -> str:
    views = (
        f", learned views {1e3 * r['views_s_per_period']:.1f} ms"
        if "views_s_per_period" in r
        else ""
    )
    return f"{r['seconds_per_period']:.3f} s/period{views}, peak {r['peak_mb']:.0f} MB"


def _key(row: dict) -> tuple:
    return row["kind"], row.get("encoder"), row["n"], row.get("path")


def _ratios(rows: list[dict]) -> list[str]:
    """DMPO-MPO / MPO seconds per period, per size, compile path and run."""
    spp = {(*_key(r), r.get("run")): r["seconds_per_period"] for r in rows if "error" not in r}
    return [
        f"dmpo_mpo / mpo n={n:<4} {path:>5}" + (f" run {run}" if run else "")
        + f": {value / spp[('mpo', None, n, path, run)]:.2f}x"
        for (kind, _, n, path, run), value in spp.items()
        if kind == "dmpo_mpo" and ("mpo", None, n, path, run) in spp
    ]  # fmt: skip


def _merged(old: list[dict], new: list[dict]) -> list[dict]:
    """``old``'s rows with every measured case replaced by its ``new`` rows (in place)."""
    measured = {_key(r) for r in new}
    out, placed = [], set()
    for row in old:
        key = _key(row)
        if key not in measured:
            out.append(row)
        elif key not in placed:
            out.extend(r for r in new if _key(r) == key)
            placed.add(key)
    return out + [r for r in new if _key(r) not in placed]


if __name__ == "__main__":
    main()

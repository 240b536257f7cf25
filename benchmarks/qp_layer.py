"""Benchmark the DMPO QP layers: fast torch solver vs cvxpylayers vs a Cholesky floor.

Measures forward and forward+backward wall time for n in {20, 100}, H in {1, 3},
batch 64 and 256, float64 and float32 (full ``n x n`` risk factors: the issue's grid),
plus low-rank-plus-diagonal risk models (``k = 5``, n in {100, 250}, float64) where the
fast solver takes Woodbury Newton steps (also timed with dense steps), and writes a
JSON file::

    python benchmarks/qp_layer.py                 # full run
    python benchmarks/qp_layer.py --grid full     # only the full-factor grid
    python benchmarks/qp_layer.py --quick         # smoke run (seconds)

cvxpylayers is timed on a sub-batch first; when the full batch is predicted to take
longer than ``--max-ref-seconds`` the full-batch time is extrapolated linearly from the
sub-batch (marked ``"extrapolated": true`` in the JSON and ``~`` in the table). The
cvxpylayers solvers work in float64 internally, so their float32 rows reuse the
float64 timings (marked ``"reused_float64": true``).
"""

from __future__ import annotations

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from mpo.learn.qp import QPSpec, make_backend  # noqa: E402
from mpo.learn.qp.reference import DIFFCP_CLARABEL  # noqa: E402

DEFAULT_OUT = Path(__file__).parent / "results" / "qp_layer.json"
LOWRANK_K = 5


def make_problem(
    n: int, horizon: int, batch: int, dtype: torch.dtype, seed: int = 0, rank: int | None = None
):
    """Random instance with a binding-ish turnover limit.

    ``rank=None``: full ``n x n`` factors. ``rank=k``: ``Sigma = L L' + diag(d) + eps I``
    with ``L`` of shape ``n x k`` (same systematic scale) and ``d ~ U(0.002, 0.01)``.
    Returns ``(spec, mu, L, w_prev, delta, d)``.
    """
    rng = np.random.default_rng(seed)
    k = n if rank is None else rank
    factor = "full" if rank is None else "lowrank_diag"
    spec = QPSpec(n=n, horizon=horizon, gamma=0.002, eps=1e-6, factor=factor, rank=rank)
    mu = torch.tensor(0.01 * rng.standard_normal((batch, horizon, n)), dtype=dtype)
    L = torch.tensor(0.1 * rng.standard_normal((batch, horizon, n, k)) / np.sqrt(k), dtype=dtype)
    w_prev = torch.tensor(rng.dirichlet(np.ones(n), size=batch), dtype=dtype)
    delta = torch.full((batch,), 0.3, dtype=dtype)
    d = None
    if rank is not None:
        d = torch.tensor(rng.uniform(0.002, 0.01, (batch, horizon, n)), dtype=dtype)
    return spec, mu, L, w_prev, delta, d


def _time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _fwd_bwd(layer, mu, L, w_prev, delta, d=None) -> None:
    mu = mu.clone().requires_grad_()
    L = L.clone().requires_grad_()
    w = layer(mu, L, w_prev, delta, d=d)
    w[:, 0].sum().backward()


def time_fast(problem, repeats: int, newton: str = "auto") -> dict:
    spec, mu, L, w_prev, delta, d = problem
    # on_failure="nan": a sample that does not converge is counted, not a crash
    spec = dataclasses.replace(spec, newton=newton, on_failure="nan")

    backend = make_backend("fast")

    def layer(*args, d=None):
        return backend(spec, *args, d=d)[0]

    def fwd():
        with torch.no_grad():
            layer(mu, L, w_prev, delta, d=d)

    _, info = backend(spec, mu, L, w_prev, delta, d=d)  # warm-up
    return {
        "fwd": _time(fwd, repeats),
        "fwd_bwd": _time(lambda: _fwd_bwd(layer, mu, L, w_prev, delta, d), repeats),
        "newton": "woodbury" if spec.woodbury else "dense",
        "unconverged": int((~info.converged).sum()),
        "unpolished": int((~info.polished).sum()),
        "max_iterations": int(info.iterations.max()),
    }


def time_floor(problem, repeats: int) -> dict:
    """One batched ``n x n`` Cholesky (of a well-conditioned matrix of the problem's size)."""
    L = problem[2]
    n = L.shape[-2]
    S = L[:, 0] @ L[:, 0].mT + torch.eye(n, dtype=L.dtype)
    torch.linalg.cholesky(S)
    t = _time(lambda: torch.linalg.cholesky(S), max(repeats, 5))
    return {"fwd": t, "fwd_bwd": t}


def _time_within(fn, runs: int, budget: float) -> tuple[float, int]:
    """Median of up to ``runs`` timings, stopping once another run would exceed ``budget``."""
    times: list[float] = []
    while len(times) < runs:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        if sum(times) + times[-1] > budget:
            break
    return statistics.median(times), len(times)


def time_cvxpylayers(
    problem, solver_args: dict, max_seconds: float, sub: int, runs: int = 3
) -> dict:
    """cvxpylayers forward and forward+backward: median of up to ``runs`` timings.

    Its times vary by up to 1.6x between single runs on this machine, so sizes whose
    runs fit in ``max_seconds`` are timed ``runs`` times; larger batches are
    extrapolated linearly from a sub-batch of ``sub`` samples (also ``runs`` times).
    """
    spec, mu, L, w_prev, delta, d = (x.double() if torch.is_tensor(x) else x for x in problem)
    backend = make_backend("cvxpylayers", solver_args=solver_args)
    backend.layer(spec, L.dim() == 3 or L.shape[1] == 1, True)  # compiled outside the timings

    def layer(*args, d=None):
        return backend(spec, *args, d=d)[0]

    B = mu.shape[0]
    part = slice(0, min(sub, B))
    d_sub = None if d is None else d[part]
    args_sub = (mu[part], L[part], w_prev[part], delta[part])

    def fwd(*args, d=None):
        with torch.no_grad():
            layer(*args, d=d)

    t_bwd_sub = _time(lambda: _fwd_bwd(layer, *args_sub, d_sub), 1)
    scale = B / args_sub[0].shape[0]
    if t_bwd_sub * scale <= max_seconds:
        budget = max_seconds
        t_fwd, n_fwd = _time_within(lambda: fwd(mu, L, w_prev, delta, d=d), runs, budget)
        t_bwd, n_bwd = _time_within(lambda: _fwd_bwd(layer, mu, L, w_prev, delta, d), runs, budget)
        return {"fwd": t_fwd, "fwd_bwd": t_bwd, "extrapolated": False, "runs": [n_fwd, n_bwd]}
    t_fwd_sub, n_fwd = _time_within(lambda: fwd(*args_sub, d=d_sub), runs, max_seconds)
    t_bwd_sub, n_bwd = _time_within(lambda: _fwd_bwd(layer, *args_sub, d_sub), runs, max_seconds)
    return {
        "fwd": t_fwd_sub * scale,
        "fwd_bwd": t_bwd_sub * scale,
        "extrapolated": True,
        "sub_batch": args_sub[0].shape[0],
        "runs": [n_fwd, n_bwd],
    }


def run(args: argparse.Namespace) -> list[dict]:
    torch.set_num_threads(1)
    if args.quick:
        grid = [(20, 1, 64, torch.float64, None), (20, 1, 64, torch.float32, None)]
        grid += [(40, 1, 64, torch.float64, 3)]
        repeats = 2
    else:
        grid = []
        if args.grid in ("full", "all"):
            grid += [
                (n, H, B, dt, None)
                for n in (20, 100)
                for H in (1, 3)
                for B in (64, 256)
                for dt in (torch.float64, torch.float32)
            ]
        if args.grid in ("lowrank", "all"):
            grid += [
                (n, H, B, torch.float64, LOWRANK_K)
                for n in (100, 250)
                for H in (1, 3)
                for B in (64, 256)
            ]
        repeats = args.repeats
    refs: dict[tuple, dict] = {}
    rows = []
    for n, H, B, dt, rank in grid:
        problem = make_problem(n, H, B, dt, rank=rank)
        row = {
            "n": n,
            "H": H,
            "batch": B,
            "dtype": str(dt).replace("torch.", ""),
            "factor": problem[0].factor,
            "rank": problem[0].k,
        }
        row["fast"] = time_fast(problem, repeats)
        if rank is not None:
            row["fast_dense_newton"] = time_fast(problem, repeats, newton="dense")
        row["cholesky_floor"] = time_floor(problem, repeats)
        key = (n, H, B, rank)
        if key not in refs:
            refs[key] = {
                "cvxpylayers_default": time_cvxpylayers(
                    problem, {}, args.max_ref_seconds, args.sub_batch, args.ref_runs
                ),
                "cvxpylayers_clarabel": time_cvxpylayers(
                    problem,
                    dict(DIFFCP_CLARABEL),
                    args.max_ref_seconds,
                    args.sub_batch,
                    args.ref_runs,
                ),
            }
            row.update(refs[key])
        else:
            for name, val in refs[key].items():
                row[name] = {**val, "reused_float64": True}
        fb = row["fast"]["fwd_bwd"]
        row["ratios"] = {
            "default_over_fast_fwd_bwd": row["cvxpylayers_default"]["fwd_bwd"] / fb,
            "clarabel_over_fast_fwd_bwd": row["cvxpylayers_clarabel"]["fwd_bwd"] / fb,
            "fast_fwd_bwd_over_floor": fb / row["cholesky_floor"]["fwd"],
            "default_over_fast_fwd": row["cvxpylayers_default"]["fwd"] / row["fast"]["fwd"],
            "clarabel_over_fast_fwd": row["cvxpylayers_clarabel"]["fwd"] / row["fast"]["fwd"],
        }
        ratios = row["ratios"]
        row["targets_met"] = {
            "clarabel_30x": ratios["clarabel_over_fast_fwd_bwd"] >= 30.0,
            "default_10x": ratios["default_over_fast_fwd_bwd"] >= 10.0,
        }
        if n == 100 and H == 1:
            row["targets_met"]["floor_20x"] = ratios["fast_fwd_bwd_over_floor"] <= 20.0
        if rank is not None:
            ratios["dense_newton_over_woodbury_fwd_bwd"] = row["fast_dense_newton"]["fwd_bwd"] / fb
        rows.append(row)
        print(_format_row(row), flush=True)
    return rows


def _fmt(entry: dict, key: str) -> str:
    mark = "~" if entry.get("extrapolated") else " "
    return f"{mark}{entry[key]:8.4f}"


HEADER = (
    f"{'n':>4} {'k':>4} {'H':>2} {'B':>4} {'dtype':>8} | {'fast fwd':>9} {'fast f+b':>9} | "
    f"{'cvxl fwd':>9} {'cvxl f+b':>9} | {'clar fwd':>9} {'clar f+b':>9} | {'chol':>8} | "
    f"{'def/fast':>8} {'clar/fast':>9} {'fast/chol':>9}"
)


def _format_row(row: dict) -> str:
    r = row["ratios"]
    return (
        f"{row['n']:>4} {row['rank']:>4} {row['H']:>2} {row['batch']:>4} {row['dtype']:>8} | "
        f"{_fmt(row['fast'], 'fwd')} {_fmt(row['fast'], 'fwd_bwd')} | "
        f"{_fmt(row['cvxpylayers_default'], 'fwd')} {_fmt(row['cvxpylayers_default'], 'fwd_bwd')} | "
        f"{_fmt(row['cvxpylayers_clarabel'], 'fwd')} "
        f"{_fmt(row['cvxpylayers_clarabel'], 'fwd_bwd')} | "
        f"{row['cholesky_floor']['fwd']:8.5f} | {r['default_over_fast_fwd_bwd']:8.1f} "
        f"{r['clarabel_over_fast_fwd_bwd']:9.1f} {r['fast_fwd_bwd_over_floor']:9.1f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small smoke run")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON output path")
    parser.add_argument("--repeats", type=int, default=5, help="repetitions of fast timings")
    parser.add_argument(
        "--grid",
        choices=("all", "full", "lowrank"),
        default="all",
        help="full n x n factors (the issue's grid), low-rank-plus-diagonal, or both",
    )
    parser.add_argument(
        "--max-ref-seconds",
        type=float,
        default=30.0,
        help="extrapolate cvxpylayers from a sub-batch beyond this time",
    )
    parser.add_argument(
        "--ref-runs",
        type=int,
        default=3,
        help="cvxpylayers timings are the median of up to this many runs (within the budget)",
    )
    parser.add_argument(
        "--sub-batch", type=int, default=16, help="sub-batch size for the cvxpylayers estimate"
    )
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    print("times in seconds; ~ = extrapolated from a sub-batch; single thread", flush=True)
    print(HEADER, flush=True)
    rows = run(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "quick": args.quick,
        "max_ref_seconds": args.max_ref_seconds,
        "ref_runs": args.ref_runs,
        "grid": args.grid,
        "problem": (
            "full n x n factor (factor='full') or n x 5 factor + diag d ~ U(0.002, 0.01) "
            "(factor='lowrank_diag'), eps=1e-6, gamma=0.002, delta=0.3, no cap, seed 0"
        ),
        "cholesky_floor": "one batched n x n Cholesky, also for the low-rank rows",
    }
    args.out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    print(f"wrote {args.out}", flush=True)


if __name__ == "__main__":
    main()

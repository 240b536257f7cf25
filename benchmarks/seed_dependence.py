"""How much the README's synthetic DMPO result depends on the seed (issue 16).

Reruns the README's command ``mpo train policies/dmpo.toml --data synthetic`` (as a
``python -m mpo train`` subprocess, one at a time) in two sweeps and tabulates the
test and validation Sharpe ratios of DMPO, two-stage, direct weights and equal weight:

- training seeds (``[train] seed = k``) on the fixed market (``[data] seed``, 0 by
  default): how much is the training run;
- market seeds (``[data] seed = m``) with the training seed fixed (0): how much is
  the market draw. The market at the fixed seed is the first sweep's run, not rerun.

``mpo train --seed K`` moves both (it is the training seed and, for synthetic data,
the market seed), so every run but the documented one uses a copy of the spec with
one seed line changed, written next to its run folder. A run folder that already holds
a ``results.json`` is read, not retrained (``--collect DIR`` only reads)::

    python benchmarks/seed_dependence.py                       # train 0-4, market 1-4
    python benchmarks/seed_dependence.py --train-seeds 0 1 --market-seeds
    python benchmarks/seed_dependence.py --collect runs/seed_dependence   # no training

Writes ``benchmarks/results/seed_dependence.json`` (every run's Sharpe ratios, command
line and seconds, the summaries, package versions and the git commit).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import statistics
import subprocess
import sys
import time
import tomllib
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SPEC = Path("policies/dmpo.toml")
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "seed_dependence.json"
DEFAULT_RUNS = Path("runs/seed_dependence")
TIMING = "seed_dependence_run.json"  # seconds and error of the run this script trained
MODELS = ("dmpo", "two_stage", "direct", "equal_weight")


def spec_with_seed(text: str, table: str, seed: int) -> str:
    """``text`` with ``seed = <seed>`` in ``[table]`` (replacing the table's own line)."""
    out, current, done = [], None, False
    for line in text.splitlines():
        header = re.match(r"^\s*\[([^\[\]]+)\]\s*(#.*)?$", line)
        if header:
            current = header.group(1).strip()
            out.append(line)
            if current == table:
                out.append(f"seed = {seed}")
                done = True
            continue
        if current == table and re.match(r"^\s*seed\s*=", line):
            continue
        out.append(line)
    if not done:
        out += ["", f"[{table}]", f"seed = {seed}"]
    new = "\n".join(out) + "\n"
    if tomllib.loads(new)[table]["seed"] != seed:  # pragma: no cover - a guard
        raise SystemExit(f"could not set [{table}] seed = {seed}")
    return new


def plan(args) -> list[dict]:
    """One entry per run: sweep, seeds, run folder and the spec it trains."""
    runs, fm, ft = [], args.fixed_market_seed, args.fixed_train_seed
    for k in args.train_seeds:
        runs.append({"sweep": "train", "train_seed": k, "market_seed": fm,
                     "name": f"train-{k}"})  # fmt: skip
    for m in args.market_seeds:
        runs.append({"sweep": "market", "train_seed": ft, "market_seed": m,
                     "name": f"train-{ft}" if m == fm else f"market-{m}"})  # fmt: skip
    return runs


def command(run: dict, runs_dir: Path, spec: Path, data: str) -> tuple[list[str], Path | None]:
    """The ``mpo train`` argv of ``run`` and the spec copy it needs (None: the spec itself)."""
    text = (ROOT / spec).read_text()
    base = tomllib.loads(text)
    copy, spec_arg = None, str(spec)
    if run["train_seed"] != base.get("train", {}).get("seed", 0):
        text = spec_with_seed(text, "train", run["train_seed"])
        copy = True
    if run["market_seed"] != base.get("data", {}).get("seed", 0):
        text = spec_with_seed(text, "data", run["market_seed"])
        copy = True
    if copy:
        copy = runs_dir / "specs" / f"{run['name']}.toml"
        copy.parent.mkdir(parents=True, exist_ok=True)
        copy.write_text(text)
        spec_arg = str(copy)
    argv = ["mpo", "train", spec_arg, "--data", data, "--run-dir",
            str(runs_dir / run["name"]), "--no-progress"]  # fmt: skip
    return argv, copy


def train(argv: list[str]) -> tuple[float, str | None]:
    """Run ``python -m mpo train ...`` in ROOT: its seconds and its error line (None: ok)."""
    print("$ " + shlex.join(["python", "-m", *argv]), flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", *argv], cwd=ROOT, capture_output=True,
                          text=True, env={**os.environ, "OPENBLAS_NUM_THREADS": "1"})  # fmt: skip
    seconds = time.perf_counter() - t0
    if proc.returncode == 0:
        return seconds, None
    lines = [x for x in (proc.stdout + proc.stderr).splitlines() if x.strip()]
    error = f"exit code {proc.returncode}: " + (lines[-1] if lines else "")
    print(error, flush=True)
    return seconds, error


def read_run(folder: Path, run: dict) -> dict:
    """Sharpe ratios per model and split from ``folder/results.json`` (seeds checked)."""
    res = json.loads((folder / "results.json").read_text())
    spec = res["spec"]
    got = (spec["train"]["seed"], spec["data"].get("seed", 0))
    if got != (run["train_seed"], run["market_seed"]):
        raise SystemExit(f"{folder}: train/market seed {got}, expected "
                         f"{(run['train_seed'], run['market_seed'])}")  # fmt: skip
    m = res["metrics"]
    row = {split: {k: m[k][split]["sharpe"] for k in MODELS} for split in ("val", "test")}
    for split in ("val", "test"):
        row[split]["dmpo_minus_equal_weight"] = m["dmpo"][split]["sharpe"] - m[
            "equal_weight"][split]["sharpe"]  # fmt: skip
        row[split]["dmpo_minus_two_stage"] = m["dmpo"][split]["sharpe"] - m[
            "two_stage"][split]["sharpe"]  # fmt: skip
    row["max_violation"] = max(m["dmpo"][s]["max_violation"] for s in ("val", "test"))
    row["best_epoch"] = res.get("best_epoch", {}).get("dmpo")
    row["data"] = {k: res["data"].get(k) for k in ("name", "fingerprint", "notes")
                   if k in res["data"]}  # fmt: skip
    return row


def summarise(rows: list[dict], threshold: float) -> dict:
    """Mean, sd (n-1), min, max per quantity and split; wins of DMPO over EW and two-stage."""
    out = {"n": len(rows)}
    for split in ("test", "val"):
        s = {}
        for key in (*MODELS, "dmpo_minus_equal_weight", "dmpo_minus_two_stage"):
            xs = [r[split][key] for r in rows]
            s[key] = {"mean": statistics.fmean(xs),
                      "sd": statistics.stdev(xs) if len(xs) > 1 else float("nan"),
                      "min": min(xs), "max": max(xs)}  # fmt: skip
        s["dmpo_beats_equal_weight"] = sum(r[split]["dmpo_minus_equal_weight"] > 0 for r in rows)
        s["dmpo_beats_two_stage"] = sum(r[split]["dmpo_minus_two_stage"] > 0 for r in rows)
        s[f"edge_at_least_{threshold}"] = sum(
            r[split]["dmpo_minus_equal_weight"] >= threshold for r in rows
        )
        out[split] = s
    return out


def print_table(title: str, rows: list[dict], summary: dict, seed_key: str) -> None:
    print(f"\n{title}")
    head = (f"{'seed':>4}  {'DMPO':>6} {'2-stage':>7} {'direct':>6} {'EW':>6} {'D-EW':>6} "
            f"{'D-2st':>6}   val: {'DMPO':>5} {'EW':>5} {'D-EW':>6}")  # fmt: skip
    print(head)
    for r in rows:
        t, v = r["test"], r["val"]
        print(f"{r[seed_key]:>4}  {t['dmpo']:+6.2f} {t['two_stage']:+7.2f} {t['direct']:+6.2f} "
              f"{t['equal_weight']:+6.2f} {t['dmpo_minus_equal_weight']:+6.2f} "
              f"{t['dmpo_minus_two_stage']:+6.2f}        {v['dmpo']:+5.2f} "
              f"{v['equal_weight']:+5.2f} {v['dmpo_minus_equal_weight']:+6.2f}")  # fmt: skip
    for stat in ("mean", "sd", "min"):
        t, v = summary["test"], summary["val"]
        print(
            f"{stat:>4}  {t['dmpo'][stat]:+6.2f} {t['two_stage'][stat]:+7.2f} "
            f"{t['direct'][stat]:+6.2f} {t['equal_weight'][stat]:+6.2f} "
            f"{t['dmpo_minus_equal_weight'][stat]:+6.2f} "
            f"{t['dmpo_minus_two_stage'][stat]:+6.2f}        {v['dmpo'][stat]:+5.2f} "
            f"{v['equal_weight'][stat]:+5.2f} {v['dmpo_minus_equal_weight'][stat]:+6.2f}"
        )
    n, t, v = summary["n"], summary["test"], summary["val"]
    print(
        f"test: DMPO beats equal weight on {t['dmpo_beats_equal_weight']}/{n} seeds, "
        f"two-stage on {t['dmpo_beats_two_stage']}/{n}; validation: "
        f"{v['dmpo_beats_equal_weight']}/{n} and {v['dmpo_beats_two_stage']}/{n}"
    )


def git_state() -> dict:
    def git(*a):
        p = subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True)
        return p.stdout.strip() if p.returncode == 0 else None

    dirty = git("status", "--porcelain", "--untracked-files=no", "--", "mpo")
    return {"commit": git("rev-parse", "HEAD"),
            "mpo_dirty": None if dirty is None else bool(dirty)}  # fmt: skip


def versions() -> dict:
    from mpo.io import package_versions

    return package_versions()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--train-seeds", type=int, nargs="*", default=[0, 1, 2, 3, 4])
    p.add_argument(
        "--market-seeds",
        type=int,
        nargs="*",
        default=[1, 2, 3, 4],
        help="Market seeds (the fixed one is added: it is train sweep's run).",
    )
    p.add_argument("--fixed-market-seed", type=int, default=0)
    p.add_argument("--fixed-train-seed", type=int, default=0)
    p.add_argument("--runs", type=Path, default=DEFAULT_RUNS, help="Parent of the run folders.")
    p.add_argument(
        "--collect",
        type=Path,
        default=None,
        help="Only read the run folders under DIR (no training).",
    )
    p.add_argument("--spec", type=Path, default=SPEC)
    p.add_argument("--data", default="synthetic")
    p.add_argument(
        "--threshold",
        type=float,
        default=0.5,
        help="The slow test's margin over equal weight (counted per sweep).",
    )
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = p.parse_args()
    if args.fixed_market_seed not in args.market_seeds and args.market_seeds:
        args.market_seeds = [args.fixed_market_seed, *args.market_seeds]
    runs_dir = (args.collect or args.runs).resolve()
    records, seen = [], {}
    for run in plan(args):
        argv, copy = command(run, runs_dir, args.spec, args.data)
        folder = runs_dir / run["name"]
        seconds, how, error = None, "read", None
        if run["name"] in seen:
            seconds, how = seen[run["name"]]["seconds"], "same run as the train sweep"
            error = seen[run["name"]].get("error")
        elif args.collect is None and not (folder / "results.json").exists():
            (seconds, error), how = train(argv), "trained"
            folder.mkdir(parents=True, exist_ok=True)  # kept for a later --collect or rerun
            (folder / TIMING).write_text(json.dumps({"seconds": seconds, "error": error}))
        else:  # read: seconds and error as this script recorded them, where it did
            kept = json.loads((folder / TIMING).read_text()) if (folder / TIMING).exists() else {}
            seconds = kept.get("seconds")
            if not (folder / "results.json").exists():
                error = kept.get("error") or f"no {folder / 'results.json'} (unfinished or failed)"
        rec = {**run, "command": shlex.join(argv), "spec_copy": None if copy is None else
               copy.read_text(), "seconds": seconds, "how": how}  # fmt: skip
        if error is None:
            rec.update(read_run(folder, run))
        else:  # a failed run is recorded (and counted), not averaged
            rec.update(how="failed", error=error)
        seen.setdefault(run["name"], rec)
        records.append(rec)
        print(f"{run['name']} ({run['sweep']} sweep): {how}"
              + ("" if seconds is None else f", {seconds:.0f} s"), flush=True)  # fmt: skip
    sweeps = {}
    for sweep, key, title in (
        ("train", "train_seed", f"training seeds, market seed {args.fixed_market_seed} "
         "(test Sharpe; D = DMPO)"),
        ("market", "market_seed", f"market seeds, training seed {args.fixed_train_seed} "
         "(test Sharpe; D = DMPO)"),
    ):  # fmt: skip
        rows = [r for r in records if r["sweep"] == sweep and "error" not in r]
        failed = [r for r in records if r["sweep"] == sweep and "error" in r]
        if not rows:
            continue
        sweeps[sweep] = summarise(rows, args.threshold)
        sweeps[sweep]["failed"] = {r[key]: r["error"] for r in failed}
        print_table(title, rows, sweeps[sweep], key)
        for r in failed:
            print(f"seed {r[key]} failed ({r['command']}): {r['error']}")
    result = {
        "description": "mpo train SPEC --data synthetic per seed: Sharpe of DMPO, two-stage, "
        "direct and equal weight on val and test (benchmarks/seed_dependence.py)",
        "date": date.today().isoformat(),
        "spec": str(args.spec),
        "data": args.data,
        "fixed_market_seed": args.fixed_market_seed,
        "fixed_train_seed": args.fixed_train_seed,
        "threshold": args.threshold,
        "script_command": shlex.join(["python", "benchmarks/seed_dependence.py", *sys.argv[1:]]),
        "runs": records,
        "summary": sweeps,
        "versions": versions(),
        "git": git_state(),
        "cpu": {"count": os.cpu_count(), "torch_threads": 1},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwritten to {args.out}")


if __name__ == "__main__":
    main()

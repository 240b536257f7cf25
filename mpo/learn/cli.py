"""``mpo train``: DMPO end to end beside three baselines on the same windows.

``register(app)`` adds the command to the ``mpo`` typer app. The run folder holds
``dmpo.pt``, ``two_stage.pt``, ``direct.pt`` (checkpoints), ``results.json`` (metrics,
histories, spec, seed, data fingerprint, package versions) and ``curves.png`` (loss and
validation Sharpe per epoch). Ctrl-C during DMPO training writes
``dmpo-interrupted.pt``; ``--resume`` continues from it.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Annotated

import pandas as pd
import typer

from mpo.errors import MpoError

__all__ = ["register", "run_experiment"]

logger = logging.getLogger(__name__)

REMEDIES = ("none", "l1_penalty", "larger_delta", "learned_delta", "curriculum")


def load_training_market(spec, data: str | None, seed: int | None, adv: float | None):
    """The spec's market (``--data`` overrides the source; synthetic gets ``predictability``)."""
    from mpo.data.sources import load_market_data
    from mpo.data.synthetic import make_synthetic

    d = spec.data
    source = data or d.source
    custom = data is not None and data != d.source
    if source == "synthetic":
        market = make_synthetic(
            n_assets=d.n_assets,
            n_periods=d.n_periods,
            seed=d.seed if seed is None else seed,
            predictability=d.predictability,
            **({} if (adv or d.adv) is None else {"adv": adv or d.adv}),
        )
        return market if d.tickers is None or custom else market.select(d.tickers)
    return load_market_data(
        source,
        tickers=None if custom else d.tickers,
        start=None if custom else d.start,
        end=None if custom else d.end,
        adv=adv or d.adv,
    )


def _checkpoint(state_dict, spec, ds, train_split, kind: str, seed: int, history=None, splits=None):
    from mpo.learn.checkpoint import Checkpoint

    return Checkpoint(
        kind=kind,
        state_dict=state_dict,
        encoder_config=spec.encoder_config(ds.n_assets).to_dict(),
        feature_config=ds.spec.to_dict(),
        qp_config=spec.qp_options().to_dict(),  # the costs are in extra["spec"]["costs"]
        tickers=list(ds.tickers),
        train_window=[str(train_split.start.date()), str(train_split.end.date())],
        fingerprint=ds.fingerprint,
        seed=seed,
        extra={"history": history or [], "spec": spec.model_dump(), "splits": splits or {}},
    )


def run_experiment(
    spec,
    market,
    run_dir: Path,
    *,
    progress: bool = True,
    resume: Path | None = None,
    remedies: tuple[str, ...] = (),
) -> dict:
    """Train DMPO and the baselines, evaluate val/test sequentially, save the run folder.

    Returns the JSON-able results dict (also written to ``run_dir / "results.json"``).
    ``remedies``: extra DMPO runs with these starvation remedies (the comparison table).
    """
    from mpo.io import package_versions, write_json
    from mpo.learn.baselines import (
        direct_decider,
        equal_weight_decider,
        train_direct,
        train_two_stage,
        two_stage_decider,
    )
    from mpo.learn.checkpoint import check_compatible, load_checkpoint, save_checkpoint
    from mpo.learn.dataset import chronological_split, make_dataset
    from mpo.learn.train import TrainingCosts, dmpo_decider, run_sequential, train_dmpo

    run_dir.mkdir(parents=True, exist_ok=True)
    costs = TrainingCosts.from_spec(spec)
    ds = make_dataset(market, spec.feature_spec(), costs.model.estimates)
    s = spec.split
    train, val, test = chronological_split(ds, s.val, s.test, s.purge)
    seed = spec.train.seed
    state = None
    if resume is not None:
        ck = load_checkpoint(resume)
        check_compatible(
            ck, tickers=ds.tickers, feature_config=ds.spec.to_dict(), fingerprint=ds.fingerprint
        )
        state = ck.training_state

    def on_interrupt(st: dict) -> None:
        ck = _checkpoint(st["model"], spec, ds, train, "dmpo", seed, st["history"])
        ck.training_state = st
        save_checkpoint(ck, run_dir / "dmpo-interrupted.pt")

    splits = {sp.name: sp.describe() for sp in (train, val, test)}

    def save(tr, kind: str) -> None:
        ck = _checkpoint(tr.model.state_dict(), spec, ds, train, kind, seed, tr.fit.history, splits)
        save_checkpoint(ck, run_dir / f"{kind}.pt")

    dmpo = train_dmpo(spec, ds, train, val, progress=progress, resume=state,
                      on_interrupt=on_interrupt)  # fmt: skip
    if dmpo.fit.interrupted:
        raise KeyboardInterrupt(str(run_dir / "dmpo-interrupted.pt"))
    save(dmpo, "dmpo")
    two = train_two_stage(spec, ds, train, val, progress=progress)
    direct = train_direct(spec, ds, train, val, progress=progress)
    if two.fit.interrupted or direct.fit.interrupted:
        raise KeyboardInterrupt(f"{run_dir / 'dmpo.pt'} (DMPO finished; baselines interrupted)")
    n, q = ds.n_assets, spec.qp
    deciders = {
        "dmpo": lambda sp: dmpo_decider(dmpo.model, ds, sp),
        "two_stage": lambda sp: two_stage_decider(two.model, ds, sp, spec.baselines.lw_lookback),
        "direct": lambda sp: direct_decider(direct.model, ds, sp),
        "equal_weight": lambda sp: equal_weight_decider(n, q.w_max, q.delta),
    }
    extra_runs = {}
    for remedy in remedies:
        if remedy == spec.train.remedy:
            continue
        other = spec.with_updates(train={"remedy": remedy})
        tr = train_dmpo(other, ds, train, val, progress=progress)
        extra_runs[remedy] = tr
        deciders[f"dmpo[{remedy}]"] = lambda sp, m=tr.model: dmpo_decider(m, ds, sp)
    metrics = {}
    for name, make in deciders.items():
        for split in (val, test):
            ev = run_sequential(name, make(split), ds, split, costs, q.w_max)
            metrics.setdefault(name, {})[split.name] = ev.metrics()
    save(two, "two_stage")
    save(direct, "direct")
    histories = {"dmpo": dmpo.fit.history, "two_stage": two.fit.history,
                 "direct": direct.fit.history}  # fmt: skip
    histories.update({f"dmpo[{r}]": tr.fit.history for r, tr in extra_runs.items()})
    results = {
        "spec": spec.model_dump(),
        "seed": seed,
        "data": market.describe(),
        "volume_note": market.volume_note,
        "splits": {sp.name: sp.describe() for sp in (train, val, test)},
        "remedy": spec.train.remedy,
        "metrics": metrics,
        "history": histories,
        "best_epoch": {"dmpo": dmpo.fit.best_epoch},
        "versions": package_versions(),
    }
    write_json(results, run_dir / "results.json")
    save_curves(histories, run_dir / "curves.png")
    return results


def save_curves(histories: dict, target: Path) -> None:
    """PNG of training loss and validation score per epoch, one line per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mpo.io import atomic_path

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for name, hist in histories.items():
        if not hist:
            continue
        ep = [h["epoch"] for h in hist]
        ax1.plot(ep, [h["loss"] for h in hist], marker="o", label=name)
        if name != "two_stage":
            ax2.plot(ep, [h["val"] for h in hist], marker="o", label=name)
    ax1.set(title="training loss", xlabel="epoch")
    ax2.set(title="validation Sharpe (one step from EW)", xlabel="epoch")
    ax1.legend(fontsize=8)
    ax2.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(target) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def format_results(results: dict) -> str:
    """Validation/test table: Sharpe, turnover/yr, cost/yr, starved share per model."""
    rows = {}
    for name, by_split in results["metrics"].items():
        row = {}
        for split in ("val", "test"):
            m = by_split[split]
            row[f"{split} Sharpe"] = f"{m['sharpe']:+.2f}"
            row[f"{split} turnover/yr"] = f"{m['annual_turnover']:.2f}x"
            row[f"{split} cost/yr"] = f"{m['annual_cost']:.2%}"
        st = by_split["test"]["starved_share"]
        row["test starved"] = "" if st != st else f"{st:.0%}"
        row["max violation"] = f"{max(b['max_violation'] for b in by_split.values()):.1e}"
        rows[name] = row
    return pd.DataFrame(rows).T.to_string()


def register(app: typer.Typer) -> None:
    """Add ``mpo train`` to ``app``."""

    @app.command()
    def train(
        spec: Annotated[
            Path, typer.Argument(help="Training spec (TOML), e.g. policies/dmpo.toml.")
        ],
        data: Annotated[
            str | None, typer.Option("--data", help="sp20 | synthetic | dow30-2014 | files:DIR.")
        ] = None,
        epochs: Annotated[int | None, typer.Option("--epochs", help="DMPO epochs.")] = None,
        seed: Annotated[int | None, typer.Option("--seed", help="Training seed.")] = None,
        adv: Annotated[
            float | None, typer.Option("--adv", help="Assumed $ volume for data without volumes.")
        ] = None,
        out: Annotated[Path, typer.Option("--out", help="Parent folder of run folders.")] = Path(
            "runs"
        ),
        resume: Annotated[
            Path | None, typer.Option("--resume", help="dmpo-interrupted.pt to continue from.")
        ] = None,
        compare_remedies: Annotated[
            bool, typer.Option("--compare-remedies", help="Also train every starvation remedy.")
        ] = False,
        no_progress: Annotated[bool, typer.Option("--no-progress", help="Hide bars.")] = False,
        run_dir_opt: Annotated[
            Path | None,
            typer.Option(
                "--run-dir",
                help="Write the run here (e.g. runs/dmpo, where policies/dmpo_*.toml look) "
                "instead of OUT/<stamp>-train-<name>.",
            ),
        ] = None,
    ) -> None:
        """Train DMPO through the QP layer and compare it with three baselines."""
        os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
        import torch

        from mpo.learn.config import load_train_spec

        torch.set_num_threads(1)  # tiny batched solves: threads cost ~10x on 2 cores

        try:
            ts = load_train_spec(spec)
            updates = {}
            if epochs is not None:
                updates["epochs"] = epochs
            if seed is not None:
                updates["seed"] = seed
            if updates:
                ts = ts.with_updates(train=updates)
            market = load_training_market(ts, data, seed, adv)
            d = market.describe()
            typer.echo(
                f"data: {d['name']}, {len(d['tickers'])} assets, {d['start']} to {d['end']} "
                f"({d['periods']} periods), fingerprint {d['fingerprint']}"
            )
            typer.echo(market.volume_note)
            stamp = pd.Timestamp.now().strftime("%Y%m%d-%H%M%S")
            run_dir = run_dir_opt or out / f"{stamp}-train-{ts.name}"
            results = run_experiment(
                ts, market, run_dir, progress=not no_progress, resume=resume,
                remedies=REMEDIES if compare_remedies else (),
            )  # fmt: skip
        except KeyboardInterrupt as exc:
            typer.secho(
                f"interrupted: resumable checkpoint at {exc} (mpo train {spec} --resume {exc})",
                err=True,
            )
            raise typer.Exit(code=130) from None
        except MpoError as exc:
            typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
            raise typer.Exit(code=2) from None
        sp = results["splits"]
        typer.echo(
            f"splits: train {sp['train']['start']}..{sp['train']['end']}, val "
            f"{sp['val']['start']}..{sp['val']['end']}, test {sp['test']['start']}.."
            f"{sp['test']['end']}; remedy {results['remedy']}, delta {ts.qp.delta}\n"
            f"costs: {ts.costs.describe()}; impact at a portfolio value of "
            f"${ts.costs.value:,.0f}\n"
        )
        typer.echo(format_results(results))
        typer.echo(f"\nresults written to {run_dir}")

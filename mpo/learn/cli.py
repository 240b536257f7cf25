"""``mpo train``: DMPO end to end beside three baselines on the same windows.

``register(app)`` adds the command to the ``mpo`` typer app. The run folder holds
``dmpo.pt``, ``two_stage.pt``, ``direct.pt`` (checkpoints), ``results.json`` (metrics,
histories, spec, seed, data fingerprint, package versions) and ``curves.png`` (loss and
validation Sharpe per epoch). Training is durable (:mod:`mpo.learn.progress`): every
model writes ``<kind>-progress.pt`` at the end of every epoch, so rerunning the same
command after a kill (or Ctrl-C) resumes from the last completed epoch with the same
final weights; ``--resume`` names the folder explicitly. ``--run-dir`` over a finished
run (``results.json``) is refused unless ``--force``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Annotated

import typer

from mpo.cli_errors import one_line_errors
from mpo.errors import CheckpointError, MpoError
from mpo.learn.reporting import format_results, save_curves

__all__ = ["load_training_data", "load_training_market", "register", "run_experiment"]

logger = logging.getLogger(__name__)

REMEDIES = ("none", "l1_penalty", "larger_delta", "learned_delta", "curriculum")


def load_training_data(spec, data: str | None, seed: int | None, adv: float | None):
    """The spec's market and its regime labels by date (``None``: the data have none).

    ``--data`` overrides the source; synthetic gets ``predictability`` and, with
    ``[data.regimes]``, planted regimes (their labels are the second item).
    """
    from mpo.data.sources import load_market_data
    from mpo.data.synthetic import make_synthetic, simulate_market

    d = spec.data
    source = data or d.source
    custom = data is not None and data != d.source
    if source == "synthetic":
        kwargs = dict(
            n_assets=d.n_assets,
            n_periods=d.n_periods,
            seed=d.seed if seed is None else seed,
            predictability=d.predictability,
            **({} if (adv or d.adv) is None else {"adv": adv or d.adv}),
        )
        regimes = None
        if d.regimes is None:
            market = make_synthetic(**kwargs)
        else:
            sim = simulate_market(**kwargs, regimes=d.regimes.switching())
            market, regimes = sim.data, sim.truth.regimes
        return (market if d.tickers is None or custom else market.select(d.tickers)), regimes
    if d.regimes is not None:
        logger.warning("[data.regimes] plants regimes in the synthetic market only; the %r "
                       "data have no regime labels.", source)  # fmt: skip
    market = load_market_data(
        source,
        tickers=None if custom else d.tickers,
        start=None if custom else d.start,
        end=None if custom else d.end,
        adv=adv or d.adv,
    )
    return market, None


def load_training_market(spec, data: str | None, seed: int | None, adv: float | None):
    """The market of :func:`load_training_data` (without its regime labels)."""
    return load_training_data(spec, data, seed, adv)[0]


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


def _reused_state(final: Path, kind: str, identity) -> dict | None:
    """The finished training state in ``final`` (a checkpoint of this run), else ``None``."""
    from mpo.learn.checkpoint import load_checkpoint
    from mpo.learn.progress import RunIdentity

    if not final.is_file():
        return None
    try:
        ck = load_checkpoint(final)
    except MpoError as exc:
        logger.warning("%s; training %s again.", exc, kind)
        return None
    saved = RunIdentity(ck.extra.get("spec", {}), ck.fingerprint, ck.seed)
    identity.check(saved, final)
    if ck.training_state is None:
        logger.warning("%s holds no training state (older mpo); training %s again.", final, kind)
        return None
    logger.info("%s already trained (%s): not retrained.", kind, final)
    return ck.training_state


def _legacy_state(path: Path, identity) -> dict | None:
    """The training state of an interrupt checkpoint (``dmpo-interrupted.pt``, ``--resume``)."""
    from mpo.learn.checkpoint import load_checkpoint
    from mpo.learn.progress import RunIdentity

    ck = load_checkpoint(path)
    identity.check(RunIdentity(ck.extra.get("spec", {}), ck.fingerprint, ck.seed), path)
    if ck.training_state is None:
        raise CheckpointError(f"{str(path)!r} holds no training state to resume from.")
    return ck.training_state


def _train_durably(kind: str, spec, run_dir: Path, fingerprint: str, train_fn, to_checkpoint,
                   legacy: Path | None = None):  # fmt: skip
    """``train_fn(resume=, checkpoint=)`` with a progress file per epoch; reuse if finished.

    The final checkpoint ``<kind>.pt`` (with the finished training state) is written as
    soon as training ends and the progress file is then removed.
    """
    from mpo.learn.checkpoint import save_checkpoint
    from mpo.learn.progress import RunIdentity, load_progress, progress_path, save_progress

    identity = RunIdentity(spec.model_dump(), fingerprint, spec.train.seed)
    final, ppath = run_dir / f"{kind}.pt", progress_path(run_dir, kind)
    state = reused = _reused_state(final, kind, identity)
    if state is None:
        state = load_progress(ppath, kind, identity)
    if state is None and legacy is not None and legacy.is_file():
        state = _legacy_state(legacy, identity)
    tr = train_fn(resume=state, checkpoint=lambda st: save_progress(ppath, kind, identity, st))
    if tr.fit.interrupted:
        raise KeyboardInterrupt(str(run_dir))
    if reused is None:
        ck = to_checkpoint(tr, kind, spec)
        ck.training_state = tr.fit.state
        save_checkpoint(ck, final)
    ppath.unlink(missing_ok=True)
    return tr


def _limit_box(spec, ds, split, value: float):
    """The ``[qp]`` participation/liquidity box of a sequential decider, or ``None``."""
    from mpo.learn.limits import decision_box

    q = spec.qp
    return decision_box(spec.qp_options().limits, ds, split, value, q.horizon, q.w_max)


def run_experiment(
    spec,
    market,
    run_dir: Path,
    *,
    progress: bool = True,
    resume: Path | None = None,
    remedies: tuple[str, ...] = (),
    force: bool = False,
    trials: int | None = None,
    regimes=None,
) -> dict:
    """Train DMPO and the baselines, evaluate val/test sequentially, save the run folder.

    Returns the JSON-able results dict (also written to ``run_dir / "results.json"``,
    last). ``remedies``: extra DMPO runs with these starvation remedies (the comparison
    table). Durable: every model writes ``<kind>-progress.pt`` at the end of every
    epoch; rerunning over an interrupted ``run_dir`` resumes each model from its last
    completed epoch (same final weights) and does not retrain finished ones
    (``<kind>.pt``); another spec, data or seed is refused naming the field. A
    finished ``run_dir`` (``results.json``) is refused unless ``force`` (which clears
    it first). ``resume``: an interrupt checkpoint (``dmpo-interrupted.pt`` of older
    versions) DMPO starts from when it has no progress file. ``regimes``: the regime of
    each date (a ``pd.Series`` of integers, e.g. ``SyntheticTruth.regimes``), the labels of
    ``[train] regime_loss`` (required with it: :class:`SpecError` otherwise) and of the
    regime head's scores (``results["regimes"]``, :func:`mpo.learn.regimes.regime_scores`).
    """
    from mpo.io import package_versions, write_json
    from mpo.learn.regimes import check_regime_labels

    check_regime_labels(spec, regimes, market.name)
    from mpo.learn.baselines import (
        direct_decider,
        equal_weight_decider,
        train_direct,
        train_two_stage,
        two_stage_decider,
    )
    from mpo.learn.dataset import chronological_split, make_dataset
    from mpo.learn.progress import clean_leftovers, prepare_run_dir
    from mpo.learn.train import TrainingCosts, dmpo_decider, run_sequential
    from mpo.learn.train import train_dmpo as train_dmpo_labelled

    prepare_run_dir(run_dir, force=force)
    search = None
    if trials:
        search = _search(spec, market, run_dir, trials, progress, force, regimes)
        spec = search.spec
    costs = TrainingCosts.from_spec(spec)
    ds = make_dataset(market, spec.feature_spec(), costs.model.estimates, adv=spec.has_limits)
    s = spec.split
    if search is None:
        train, val, test = chronological_split(ds, s.val, s.test, s.purge)
    else:
        from mpo.learn.trials import aligned_splits

        train, val, test = aligned_splits(ds, search.dates)
    seed = spec.train.seed
    splits = {sp.name: sp.describe() for sp in (train, val, test)}

    def to_checkpoint(tr, kind: str, sp):
        ck = _checkpoint(tr.model.state_dict(), sp, ds, train, kind.split("-")[0], seed,
                         tr.fit.history, splits)  # fmt: skip
        ck.extra["best_epoch"] = tr.fit.best_epoch
        return ck

    def durable(kind, sp, fn, legacy=None):
        return _train_durably(kind, sp, run_dir, ds.fingerprint,
                              lambda **kw: fn(sp, ds, train, val, progress=progress, **kw),
                              to_checkpoint, legacy)  # fmt: skip

    def train_dmpo(sp, *args, **kw):
        return train_dmpo_labelled(sp, *args, regimes=regimes, **kw)

    legacy = resume if resume is not None else run_dir / "dmpo-interrupted.pt"
    dmpo = durable("dmpo", spec, train_dmpo, legacy)
    two = durable("two_stage", spec, train_two_stage)
    direct = durable("direct", spec, train_direct)
    n, q = ds.n_assets, spec.qp
    deciders = {
        "dmpo": lambda sp: dmpo_decider(dmpo.model, ds, sp, value=costs.value),
        "two_stage": lambda sp: two_stage_decider(
            two.model, ds, sp, spec.baselines.lw_lookback, box=_limit_box(spec, ds, sp, costs.value)
        ),
        "direct": lambda sp: direct_decider(
            direct.model, ds, sp, box=_limit_box(spec, ds, sp, costs.value)
        ),
        "equal_weight": lambda sp: equal_weight_decider(
            n, q.w_max, q.delta, box=_limit_box(spec, ds, sp, costs.value)
        ),
    }
    extra_runs = {}
    for remedy in remedies:
        if remedy == spec.train.remedy:
            continue
        other = spec.with_updates(train={"remedy": remedy})
        tr = durable(f"dmpo-{remedy}", other, train_dmpo)
        extra_runs[remedy] = tr
        deciders[f"dmpo[{remedy}]"] = lambda sp, m=tr.model: dmpo_decider(
            m, ds, sp, value=costs.value
        )
    metrics = {}
    for name, make in deciders.items():
        for split in (val, test):
            ev = run_sequential(name, make(split), ds, split, costs, q.w_max)
            metrics.setdefault(name, {})[split.name] = ev.metrics()
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
    if search is not None:
        results["trials"] = search.record
    dmpos = {"dmpo": dmpo.model, **{f"dmpo[{r}]": tr.model for r, tr in extra_runs.items()}}
    scores = _regime_record(spec, dmpos, ds, (train, val, test), regimes)
    if scores is not None:
        results["regimes"] = scores
    save_curves(histories, run_dir / "curves.png", metrics=metrics)
    clean_leftovers(run_dir)
    write_json(results, run_dir / "results.json")  # last: marks the run finished
    return results


def _regime_record(spec, models: dict, ds, splits, regimes) -> dict | None:
    """``results["regimes"]``: each DMPO model's regime-head scores, where labels exist."""
    from mpo.learn.regimes import regime_scores

    if regimes is None or not spec.encoder.regimes:
        return None
    scored = {name: regime_scores(m, ds, splits, regimes) for name, m in models.items()}
    scored = {name: s for name, s in scored.items() if s is not None}
    if not scored:
        return None
    return {"n_regimes": int(regimes.max()) + 1, "regime_loss": spec.train.regime_loss,
            "models": scored}  # fmt: skip


def _search(spec, market, run_dir: Path, n_trials: int, progress: bool, force: bool,
            regimes=None):  # fmt: skip
    """The ``--trials`` search; its selected checkpoint becomes ``run_dir / dmpo.pt``."""
    from mpo.learn.train import train_dmpo
    from mpo.learn.trials import clear_search, run_search

    if force:
        clear_search(run_dir)

    def train_trial(sp, ds, train, val, folder: Path):
        splits = {x.name: x.describe() for x in (train, val)}

        def to_checkpoint(tr, kind, s):
            ck = _checkpoint(tr.model.state_dict(), s, ds, train, "dmpo", s.train.seed,
                             tr.fit.history, splits)  # fmt: skip
            ck.extra["best_epoch"] = tr.fit.best_epoch
            return ck

        def fn(**kw):
            return train_dmpo(sp, ds, train, val, progress=progress, regimes=regimes, **kw)

        return _train_durably("dmpo", sp, folder, ds.fingerprint, fn, to_checkpoint)

    search = run_search(spec, market, run_dir, n_trials, train_trial)
    search.install(run_dir)  # the selected trial's model is the run's DMPO: not retrained
    return search


def _format_search(record: dict) -> str:
    """The ``--trials`` summary printed above the results table."""
    sel, dsr = record["selected"], record["deflated"]
    params = ", ".join(f"{k}={v:.4g}" for k, v in sel["params"].items())
    return (
        f"trials: {dsr['n_trials']} on the validation split; selected #{sel['number']} "
        f"({params}), validation Sharpe {sel['val_sharpe']:+.2f}; deflated Sharpe ratio "
        f"{dsr['dsr']:.3f} (PSR {dsr['psr']:.3f}, trial-Sharpe variance "
        f"{dsr['trial_sharpe_variance']:.2e} per period)"
    )


def _choose_run_dir(ts, market, out: Path, run_dir: Path | None, resume: Path | None,
                    force: bool, trials: int | None = None
                    ) -> tuple[Path, Path | None]:  # fmt: skip
    """The run folder and the interrupt checkpoint (``--resume FILE``) to start DMPO from.

    ``--run-dir`` wins, then ``--resume`` (a folder, or a file's folder); otherwise the
    newest unfinished ``OUT/*-train-<name>`` of the same spec, data and seed (with
    ``trials``: or of the same study) is resumed (unless ``force``), or a new
    ``OUT/<stamp>-train-<name>`` is made.
    """
    from mpo.learn.progress import RunIdentity, find_unfinished

    legacy = None
    if resume is not None:
        if not resume.exists():
            raise CheckpointError(f"--resume {str(resume)!r} does not exist.")
        legacy = None if resume.is_dir() or resume.name.endswith("-progress.pt") else resume
        run_dir = run_dir or (resume if resume.is_dir() else resume.parent)
    if run_dir is not None:
        return run_dir, legacy
    identity = RunIdentity(ts.model_dump(), market.fingerprint(), ts.train.seed)
    candidates = list(out.glob(f"*-train-{ts.name}"))
    found = None if force else find_unfinished(candidates, identity)
    if found is None and trials and not force:
        from mpo.learn.trials import find_unfinished_search

        found = find_unfinished_search(candidates, ts, market)
    if found is not None:
        typer.echo(f"resuming the interrupted run in {found}")
        return found, None
    from mpo.io import new_run_dir

    return new_run_dir(out, f"train-{ts.name}"), None


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
            Path | None,
            typer.Option(
                "--resume",
                help="Run folder (or a file in it, e.g. dmpo-progress.pt or an older "
                "dmpo-interrupted.pt) to continue; reruns resume automatically anyway.",
            ),
        ] = None,
        force: Annotated[
            bool,
            typer.Option(
                "--force", help="Overwrite a finished run in --run-dir (its files are removed)."
            ),
        ] = False,
        compare_remedies: Annotated[
            bool, typer.Option("--compare-remedies", help="Also train every starvation remedy.")
        ] = False,
        trials: Annotated[
            int | None,
            typer.Option(
                "--trials",
                help="First search N trials of lr, hidden, delta, l1_penalty and window "
                "(Optuna, validation split only); the selected trial's model is the run's.",
            ),
        ] = None,
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

        run_dir = None
        with one_line_errors(unexpected=False):  # MpoError, OSError: one line, exit code 2
            try:
                ts = load_train_spec(spec)
                updates = {}
                if epochs is not None:
                    updates["epochs"] = epochs
                if seed is not None:
                    updates["seed"] = seed
                if updates:
                    ts = ts.with_updates(train=updates)
                market, regimes = load_training_data(ts, data, seed, adv)
                d = market.describe()
                typer.echo(
                    f"data: {d['name']}, {len(d['tickers'])} assets, {d['start']} to {d['end']} "
                    f"({d['periods']} periods), fingerprint {d['fingerprint']}"
                )
                typer.echo(market.volume_note)
                run_dir, legacy = _choose_run_dir(ts, market, out, run_dir_opt, resume, force,
                                                  trials)  # fmt: skip
                results = run_experiment(
                    ts, market, run_dir, progress=not no_progress, resume=legacy,
                    remedies=REMEDIES if compare_remedies else (), force=force, trials=trials,
                    regimes=regimes,
                )  # fmt: skip
            except KeyboardInterrupt as exc:
                typer.secho(
                    f"interrupted: every completed epoch is kept in {str(exc) or run_dir}; rerun "
                    f"the same command (or mpo train {spec} --run-dir {str(exc) or run_dir}) to "
                    "resume.",
                    err=True,
                )
                raise typer.Exit(code=130) from None
        sp = results["splits"]
        typer.echo(
            f"splits: train {sp['train']['start']}..{sp['train']['end']}, val "
            f"{sp['val']['start']}..{sp['val']['end']}, test {sp['test']['start']}.."
            f"{sp['test']['end']}; remedy {results['remedy']}, delta {ts.qp.delta}\n"
            f"costs: {ts.costs.describe()}; impact at a portfolio value of "
            f"${ts.costs.value:,.0f}\n"
        )
        if "trials" in results:
            typer.echo(_format_search(results["trials"]) + "\n")
        typer.echo(format_results(results))
        if "regimes" in results:
            from mpo.learn.regimes import format_regime_scores

            typer.echo("\n" + format_regime_scores(results["regimes"]))
        typer.echo(f"\nresults written to {run_dir}")

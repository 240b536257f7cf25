"""The ``mpo`` command line (typer). Only this module and scripts print."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Annotated

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # small solves: threads cost ~2.5x on 2 cores

import pandas as pd
import typer

from mpo.cli_errors import one_line_errors
from mpo.report import format_table

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Portfolio backtests: Hold, equal weight, SPO and MPO (Boyd et al. 2017) in cvxportfolio; "
    "Optuna tuning; DMPO training.",
)

DataOpt = Annotated[
    str | None,
    typer.Option(
        "--data",
        help="sp20 | dow30-2014 | synthetic | files:DIR | yfinance (default: the spec's [data]).",
    ),
]
TickersOpt = Annotated[
    str | None, typer.Option("--tickers", help="Comma-separated tickers (required for yfinance).")
]
StartOpt = Annotated[str | None, typer.Option("--start", help="First date of data to load.")]
EndOpt = Annotated[str | None, typer.Option("--end", help="Last date of data to load.")]
BtStartOpt = Annotated[
    str | None, typer.Option("--backtest-start", help="First trading date of the backtest.")
]
BtEndOpt = Annotated[str | None, typer.Option("--backtest-end", help="Last date of the backtest.")]
AdvOpt = Annotated[
    float | None,
    typer.Option("--adv", help="Assumed average daily dollar volume, for data without volumes."),
]
OutOpt = Annotated[Path, typer.Option("--out", help="Parent folder of run folders.")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Seed (synthetic data, bootstrap CIs).")]
QuietOpt = Annotated[bool, typer.Option("--no-progress", help="Hide progress bars.")]
ReportOpt = Annotated[
    bool, typer.Option("--report/--no-report", help="Write report.html (figures, table).")
]


def _load_market(ref, data, tickers, start, end, adv, seed):
    """Market data for specs whose first is ``ref`` (the CLI options override its [data])."""
    from mpo.data.sources import load_market_data

    custom_data = data is not None and data != ref.data.source
    source = data or ref.data.source
    ticker_list = [t.strip() for t in tickers.split(",") if t.strip()] if tickers else None
    market = load_market_data(
        source,
        tickers=ticker_list or (None if custom_data else ref.data.tickers),
        start=start or (None if custom_data else ref.data.start),
        end=end or (None if custom_data else ref.data.end),
        adv=adv or ref.data.adv,
        seed=seed,
        max_jump=ref.data.max_jump or None,
        max_date_gap=ref.data.max_date_gap or None,
    )
    d = market.describe()
    typer.echo(
        f"data: {d['name']}, {len(d['tickers'])} assets, {d['start']} to {d['end']} "
        f"({d['periods']} periods), fingerprint {d['fingerprint']}"
    )
    typer.echo(market.volume_note)
    typer.echo(f"costs: {ref.costs.describe()}")
    return market, custom_data


def _apply_tuned(spec, path: Path):
    """``spec`` with the parameters of ``<spec>.tuned.json`` (from ``mpo tune``), if any."""
    import json

    from mpo.errors import SpecError

    tuned_path = Path(path).with_suffix(".tuned.json")
    if not tuned_path.is_file():
        return spec
    try:
        info = json.loads(tuned_path.read_text())
        params = dict(info["params"])
    except (ValueError, KeyError, TypeError) as exc:
        raise SpecError(f"cannot read tuned parameters {str(tuned_path)!r}: {exc}") from None
    if "planning_horizon" in params:
        params["planning_horizon"] = int(params["planning_horizon"])
    out = spec.with_updates(objective=params, name=f"{spec.name}-tuned")
    w = info.get("windows", {})
    typer.echo(
        f"{spec.name}: tuned parameters from {tuned_path} ("
        + ", ".join(f"{k}={v:.4g}" for k, v in params.items())
        + f"; tuned on {w.get('train', ['?', '?'])[0]} to {w.get('train', ['?', '?'])[1]})"
    )
    return out


def _run(
    spec_paths: list[Path],
    data: str | None,
    tickers: str | None,
    start: str | None,
    end: str | None,
    backtest_start: str | None,
    backtest_end: str | None,
    adv: float | None,
    out: Path,
    seed: int,
    no_progress: bool,
    report: bool = True,
    tuned: bool = False,
) -> None:
    from mpo.backtest import run_backtests
    from mpo.config import load_spec

    for value, option in (
        (start, "--start"),
        (end, "--end"),
        (backtest_start, "--backtest-start"),
        (backtest_end, "--backtest-end"),
    ):
        _date(value, option)
    specs = [load_spec(p) for p in spec_paths]
    if tuned:
        specs = [_apply_tuned(s, p) for s, p in zip(specs, spec_paths, strict=True)]
    ref = specs[0]
    market, custom_data = _load_market(ref, data, tickers, start, end, adv, seed)
    bt_start = backtest_start or ref.backtest.start
    bt_end = backtest_end or ref.backtest.end
    if custom_data and not backtest_start and not backtest_end:
        cal = market.calendar
        inside = (bt_start is None or pd.Timestamp(bt_start) >= cal[0]) and (
            bt_end is None or pd.Timestamp(bt_end) <= cal[-1]
        )
        if inside:
            typer.echo(
                f"note: --data {data} replaces the specs' default data; their backtest window "
                f"{bt_start or 'start'} to {bt_end or 'end'} is kept (it lies in the data)."
            )
        else:
            typer.echo(
                f"note: --data {data} replaces the specs' default data and covers "
                f"{cal[0].date()} to {cal[-1].date()}, outside the "
                f"specs' backtest window {bt_start} to {bt_end}: the backtest starts as soon as "
                "every policy has enough history (set --backtest-start/--backtest-end to choose)."
            )
            bt_start = bt_end = None
    from mpo.backtest import save_result
    from mpo.io import new_run_dir

    name = "-".join(s.name for s in specs)[:60].rstrip(".-_")
    run_dir = new_run_dir(out, name)
    run = run_backtests(
        specs,
        market,
        start=bt_start,
        end=bt_end,
        progress=not no_progress,
        seed=seed,
        on_failure="record",
        on_result=lambda r: save_result(r, run_dir / r.name),  # each saved as it finishes
    )
    for name, reason in run.failures.items():
        typer.secho(f"FAILED {name}: {reason}", fg=typer.colors.RED, err=True)
    typer.echo(
        f"backtest: {run.start.date()} to {run.end.date()} (decisions up to "
        f"{run.last_decision()}, whose return ends at {run.end.date()}'s price)\n"
    )
    typer.echo(format_table(run.table()))
    for r in run.results.values():
        if r.solves.get("fallback") or r.solves.get("inaccurate"):
            typer.secho(
                f"note: {r.name}: of {r.solves['periods']} solves, {r.solves['fallback']} used a "
                f"fallback solver and {r.solves['inaccurate']} an inaccurate solution "
                f"({_statuses(r.solves)}; dates in run.json 'solves').",
                fg=typer.colors.YELLOW,
            )
    run_dir = run.save(run_dir)
    if report:
        from mpo.report import write_report

        write_report(run, run_dir / "report.html", title=f"mpo: {', '.join(run.results)}")
        typer.echo(f"\nresults and report.html written to {run_dir}")
    else:
        typer.echo(f"\nresults written to {run_dir}")
    if run.failures:
        typer.secho(
            f"{len(run.failures)} policy(ies) failed ({', '.join(run.failures)}); the others' "
            f"results are saved, the reasons are in {run_dir / 'run.json'}.",
            fg=typer.colors.RED,
            err=True,
        )
        raise typer.Exit(code=1)


def _statuses(solves: dict) -> str:
    """``"optimal_inaccurate x13"``: what the inaccurate solves ended with."""
    return ", ".join(f"{k} x{v}" for k, v in solves.get("inaccurate_statuses", {}).items()) or "-"


def _tune(
    spec_path: Path,
    trials: int | None,
    data: str | None,
    tickers: str | None,
    start: str | None,
    end: str | None,
    adv: float | None,
    train: tuple[str, str] | None,
    test: tuple[str, str] | None,
    purge: str | None,
    storage: str | None,
    study: str | None,
    workers: int,
    seed: int,
    objective: str | None,
    out: Path,
    no_progress: bool,
    timeout: float | None,
) -> None:
    import optuna

    from mpo.config import load_spec
    from mpo.tuning import tune

    if not logging.getLogger().isEnabledFor(logging.INFO):
        optuna.logging.set_verbosity(optuna.logging.WARNING)
    for value, option in ((start, "--start"), (end, "--end")):
        _date(value, option)
    for pair, option in ((train, "--train"), (test, "--test")):
        for value in pair or ():
            _date(value, option)
    spec = load_spec(spec_path)
    market, _ = _load_market(spec, data, tickers, start, end, adv, seed)
    storage = storage or str(out / "studies.journal")
    study_name = study or f"{spec.name}-{objective or spec.tuning.objective}"
    from mpo.tuning.storage import redact

    shown = redact(storage)
    typer.echo(f"study: {study_name!r} in {shown} (watch it: optuna-dashboard {shown})")
    try:
        result = tune(
            spec,
            market,
            trials=trials,
            train=train,
            test=test,
            purge=purge,
            storage=storage,
            study_name=study_name,
            workers=workers,
            seed=seed,
            objective=objective,
            progress=not no_progress,
            timeout=timeout,
        )
    except KeyboardInterrupt:
        typer.secho(
            f"\ninterrupted: finished trials are kept in {shown} (study {study_name!r}); run "
            "the same command again to resume.",
            fg=typer.colors.YELLOW,
            err=True,
        )
        raise typer.Exit(code=130) from None
    w = result.windows
    s = result.summary()
    typer.echo(
        f"train {w.train_start.date()} to {w.train_end.date()} | purge {w.gap} periods "
        f"(>= {w.purge}; longest lookback {w.lookback}) | test {w.test_start.date()} to "
        f"{w.test_end.date()}"
    )
    typer.echo(
        f"trials: {s['n_finished']} finished, {s['n_failed']} failed; best #{result.best_number}: "
        + ", ".join(f"{k}={v:.4g}" for k, v in result.best_params.items())
        + f"; train {result.objective} {result.best_value:.3f}"
    )
    d = result.deflated
    typer.echo(
        f"selection among {d['n_trials']} trials: deflated Sharpe ratio (P[true train Sharpe > 0]"
        f" after selection) {d['dsr']:.3f}; without the correction (PSR) {d['psr']:.3f}"
    )
    typer.echo(f"\nout of sample, {w.test_start.date()} to {w.test_end.date()}:\n")
    typer.echo(format_table(result.table()))
    from mpo.io import new_run_dir

    run_dir = result.save(new_run_dir(out, f"tune-{spec.name}"), spec_path=spec_path)
    typer.echo(
        f"\nresults, trial history and plots written to {run_dir}; best parameters in "
        f"{spec_path.with_suffix('.tuned.json')}"
    )


def _guard(fn, *args) -> None:
    """Run a command: an input error is one message and exit code 2; a traceback only with -v."""
    with one_line_errors():
        fn(*args)


def _date(value: str | None, option: str) -> str | None:
    """``value`` if it reads as a date; :class:`~mpo.errors.SpecError` naming ``option`` if not."""
    if value is None:
        return None
    from mpo.config import check_date
    from mpo.errors import SpecError

    try:
        check_date(value)
    except ValueError as exc:
        raise SpecError(f"{option}: {exc}.") from None
    return value


@app.callback()
def _main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log at INFO level.")] = False,
) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(name)s %(levelname)s: %(message)s",
    )


@app.command()
def backtest(
    spec: Annotated[Path, typer.Argument(help="Policy spec (TOML), e.g. policies/mpo.toml.")],
    data: DataOpt = None,
    tickers: TickersOpt = None,
    start: StartOpt = None,
    end: EndOpt = None,
    backtest_start: BtStartOpt = None,
    backtest_end: BtEndOpt = None,
    adv: AdvOpt = None,
    out: OutOpt = Path("runs"),
    seed: SeedOpt = 0,
    no_progress: QuietOpt = False,
    report: ReportOpt = True,
) -> None:
    """Backtest one policy beside Hold and print the metrics table."""
    _guard(
        _run,
        [spec],
        data,
        tickers,
        start,
        end,
        backtest_start,
        backtest_end,
        adv,
        out,
        seed,
        no_progress,
        report,
    )


@app.command()
def compare(
    specs: Annotated[list[Path], typer.Argument(help="Policy specs (TOML).")],
    data: DataOpt = None,
    tickers: TickersOpt = None,
    start: StartOpt = None,
    end: EndOpt = None,
    backtest_start: BtStartOpt = None,
    backtest_end: BtEndOpt = None,
    adv: AdvOpt = None,
    out: OutOpt = Path("runs"),
    seed: SeedOpt = 0,
    no_progress: QuietOpt = False,
    report: ReportOpt = True,
    tuned: Annotated[
        bool,
        typer.Option(
            "--tuned", help="Use the parameters of <spec>.tuned.json (mpo tune) where present."
        ),
    ] = False,
) -> None:
    """Backtest several policies (and Hold) on the same market; one table and an HTML report."""
    _guard(
        _run,
        list(specs),
        data,
        tickers,
        start,
        end,
        backtest_start,
        backtest_end,
        adv,
        out,
        seed,
        no_progress,
        report,
        tuned,
    )


@app.command()
def tune(
    spec: Annotated[Path, typer.Argument(help="SPO or MPO policy spec (TOML).")],
    trials: Annotated[
        int | None,
        typer.Option("--trials", help="Finished trials the study should reach ([tuning] trials)."),
    ] = None,
    data: DataOpt = None,
    tickers: TickersOpt = None,
    start: StartOpt = None,
    end: EndOpt = None,
    adv: AdvOpt = None,
    train: Annotated[
        tuple[str, str] | None,
        typer.Option("--train", help="Training window: START END (inclusive dates)."),
    ] = None,
    test: Annotated[
        tuple[str, str] | None,
        typer.Option("--test", help="Test window: START END (default: the spec's backtest)."),
    ] = None,
    purge: Annotated[
        str | None,
        typer.Option(
            "--purge", help="Periods between train and test, e.g. 600d (default: longest lookback)."
        ),
    ] = None,
    storage: Annotated[
        str | None,
        typer.Option(
            "--storage",
            help="Journal file path or SQLAlchemy URL, e.g. postgresql://u:p@host/db "
            "(default: OUT/studies.journal).",
        ),
    ] = None,
    study: Annotated[
        str | None,
        typer.Option("--study", help="Study name; an existing study is resumed."),
    ] = None,
    workers: Annotated[int, typer.Option("--workers", help="Worker processes.")] = 1,
    seed: SeedOpt = 0,
    objective: Annotated[
        str | None,
        typer.Option("--objective", help="sharpe | return_at_risk | information_ratio."),
    ] = None,
    out: OutOpt = Path("runs"),
    no_progress: QuietOpt = False,
    timeout: Annotated[
        float | None, typer.Option("--timeout", help="Stop starting trials after SECONDS.")
    ] = None,
) -> None:
    """Tune gamma_risk/gamma_trade with Optuna on a training window; test the winner vs Hold."""
    _guard(
        _tune,
        spec,
        trials,
        data,
        tickers,
        start,
        end,
        adv,
        train,
        test,
        purge,
        storage,
        study,
        workers,
        seed,
        objective,
        out,
        no_progress,
        timeout,
    )


def _register_commands() -> None:
    from mpo.dashboard.cli import register as register_dashboard
    from mpo.learn.cli import register as register_train
    from mpo.learn.explain_cli import register as register_explain
    from mpo.learn.shrink_cli import register as register_shrink
    from mpo.research.cli import register as register_walkforward

    register_train(app)
    register_explain(app)
    register_shrink(app)
    register_dashboard(app)
    register_walkforward(
        app,
        _guard,
        {"data": DataOpt, "tickers": TickersOpt, "adv": AdvOpt, "seed": SeedOpt,
         "quiet": QuietOpt, "report": ReportOpt},
    )  # fmt: skip


_register_commands()

if __name__ == "__main__":  # pragma: no cover
    app()

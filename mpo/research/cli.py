"""``mpo walkforward``: refit through time, stitch one out-of-sample run, many universes, on Dask.

``register(app)`` adds the command to the ``mpo`` typer app. The default run
folder is ``runs/walkforward-<hash of the configuration>``: running the same
command again resumes it (finished tasks are skipped).
"""

import hashlib
import json
import logging
from pathlib import Path
from typing import Annotated

import typer

__all__ = ["register", "universes_for"]

logger = logging.getLogger(__name__)


def universes_for(
    market,
    *,
    source: str,
    k: int | None,
    size: int | None,
    seed: int,
    files: list[Path] | None,
    loader=None,
) -> dict:
    """Universe name -> data: the whole market, K drawn sub-universes, listed files, or
    (``synthetic`` without a size) K independently seeded synthetic markets."""
    from mpo.data.universes import draw_universes, load_universe
    from mpo.errors import ResearchError

    if files:
        if k is not None:
            raise ResearchError("give either --universes K or --universe-file, not both.")
        return {Path(f).stem: market.select(load_universe(f, known=market.tickers)) for f in files}
    if k is None:
        if size is not None:
            raise ResearchError("--universe-size needs --universes K.")
        return {"main": market}
    if isinstance(k, bool) or k < 1:
        raise ResearchError(f"--universes must be >= 1, got {k!r}.")
    if size is None:
        if source != "synthetic" or loader is None:
            raise ResearchError(
                f"--universes {k} on data {market.name!r} needs --universe-size m (tickers per "
                f"universe, at most {market.n_assets})."
            )
        return {f"s{i:02d}": loader(seed + i) for i in range(k)}
    if size > market.n_assets:
        raise ResearchError(
            f"--universe-size {size} is larger than the {market.n_assets} tickers of data "
            f"{market.name!r}; use at most {market.n_assets}."
        )
    try:
        drawn = draw_universes(market.tickers, k, size, seed)
    except Exception as exc:  # SpecError/DataError from the draw, reworded for the options
        raise ResearchError(f"--universes {k} --universe-size {size}: {exc}") from None
    return {f"u{i:02d}": market.select(t) for i, t in enumerate(drawn)}


def _run_id(specs, universes, options: dict) -> str:
    text = json.dumps(
        {
            "specs": [s.model_dump() for s in specs],
            "data": {u: m.fingerprint() for u, m in universes.items()},
            **options,
        },
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def _walkforward(
    specs, data, tickers, start, end, adv, train, test, anchored, purge, trials, workers,
    scheduler, storage, n_universes, universe_size, universe_seed, universe_files, out, dry_run,
    seed, no_progress, report, force,
) -> None:  # fmt: skip
    from mpo.config import check_date, load_spec
    from mpo.data.sources import load_market_data
    from mpo.errors import ResearchError
    from mpo.report.tables import AGGREGATE_LAYOUT, WALKFORWARD_LAYOUT, format_table
    from mpo.research import plan, walk_forward

    for value, option in ((start, "--start"), (end, "--end")):
        if value is not None:
            try:
                check_date(value)
            except ValueError as exc:
                raise ResearchError(f"{option}: {exc}.") from None
    loaded = [load_spec(p) for p in specs]
    ref = loaded[0]
    source = data or ref.data.source
    ticker_list = [t.strip() for t in tickers.split(",") if t.strip()] if tickers else None
    own = data is None or data == ref.data.source

    def load(s: int):
        return load_market_data(
            source,
            tickers=ticker_list or (ref.data.tickers if own else None),
            adv=adv or ref.data.adv,
            seed=s,
            max_jump=ref.data.max_jump or None,
            max_date_gap=ref.data.max_date_gap or None,
        )

    dated = [str(p) for p, s in zip(specs, loaded, strict=True) if s.data.start or s.data.end]
    if dated:
        typer.echo(
            f"note: walkforward loads the whole history of the data; the [data] start/end of "
            f"{', '.join(dated)} are not used (--start/--end set the schedule)"
        )
    market = load(seed)
    d = market.describe()
    typer.echo(
        f"data: {d['name']}, {len(d['tickers'])} assets, {d['start']} to {d['end']} "
        f"({d['periods']} periods), fingerprint {d['fingerprint']}"
    )
    universes = universes_for(
        market, source=source, k=n_universes, size=universe_size, seed=universe_seed,
        files=universe_files, loader=load,
    )  # fmt: skip
    options = {
        "train": train, "test": test, "start": start, "end": end, "anchored": anchored,
        "purge": purge, "trials": trials, "seed": seed,
    }  # fmt: skip
    root = out or Path("runs") / f"walkforward-{_run_id(loaded, universes, options)}"
    p = plan(
        loaded, universes, root, train=train, test=test, start=start, end=end,
        anchored=anchored, purge=purge, trials=trials, seed=seed, storage=storage,
    )  # fmt: skip
    typer.echo(p.describe())
    if dry_run:
        return
    try:
        result = walk_forward(
            p, workers=workers, scheduler=scheduler, progress=not no_progress, force=force,
            report=report,
        )  # fmt: skip
    except KeyboardInterrupt:
        typer.secho(
            f"\ninterrupted: finished tasks are kept in {root}; run the same command again to "
            "resume.",
            fg=typer.colors.YELLOW,
            err=True,
        )
        raise typer.Exit(code=130) from None
    if result.skipped:
        typer.echo(f"{result.skipped} task(s) finished in an earlier run were skipped")
    f0, f1 = p.folds[0], p.folds[-1]
    first = next(iter(result.metrics))
    typer.echo(
        f"\nstitched out of sample, {f0.test_start.date()} to {f1.test_end.date()} "
        f"({len(p.folds)} folds, universe {first!r}):\n"
    )
    typer.echo(format_table(result.table(), WALKFORWARD_LAYOUT))
    agg = result.aggregate_table()
    if agg is not None:
        typer.echo(f"\npooled over {result.aggregate['n_universes']} universes:\n")
        typer.echo(format_table(agg, AGGREGATE_LAYOUT))
    for key, why in result.failures.items():
        typer.secho(f"failed: {key}: {why}", fg=typer.colors.RED, err=True)
    typer.echo(f"\nresults written to {root} (folds.csv, summary.json, report.html)")
    if result.failures:
        raise typer.Exit(code=1)


def register(app: typer.Typer, guard, options: dict) -> None:
    """Add ``mpo walkforward`` to ``app``.

    ``guard(fn, *args)`` runs the command (one line per input error, exit code
    2); ``options`` holds the shared option types of :mod:`mpo.cli` (passed
    down so that this module does not import the top layer).
    """
    DataOpt, TickersOpt, AdvOpt = options["data"], options["tickers"], options["adv"]
    SeedOpt, QuietOpt, ReportOpt = options["seed"], options["quiet"], options["report"]

    @app.command()
    def walkforward(
        specs: Annotated[list[Path], typer.Argument(help="Policy specs (TOML).")],
        data: DataOpt = None,
        tickers: TickersOpt = None,
        start: Annotated[
            str | None,
            typer.Option(
                "--start",
                help="First training date (default: as early as the policies' history allows).",
            ),  # fmt: skip
        ] = None,
        end: Annotated[str | None, typer.Option("--end", help="Last test date.")] = None,
        adv: AdvOpt = None,
        train: Annotated[
            str, typer.Option("--train", help="Training window: 4y, 18m, 26w or 252d (periods).")
        ] = "3y",
        test: Annotated[
            str, typer.Option("--test", help="Test window and step between folds (e.g. 1y).")
        ] = "1y",
        anchored: Annotated[
            bool, typer.Option("--anchored", help="Expanding training windows from --start.")
        ] = False,
        purge: Annotated[
            str, typer.Option("--purge", help="auto | lookback | N periods (see README).")
        ] = "auto",
        trials: Annotated[
            int | None, typer.Option("--trials", help="Optuna trials per fold for tuned specs.")
        ] = None,
        workers: Annotated[int, typer.Option("--workers", help="Local Dask worker processes.")] = 1,
        scheduler: Annotated[
            str | None,
            typer.Option("--scheduler", help="tcp://HOST:PORT of a running dask scheduler."),
        ] = None,
        storage: Annotated[
            str | None,
            typer.Option(
                "--storage",
                help="Optuna storage (default: the run's journal file; a "
                "PostgreSQL URL for workers on several machines).",
            ),  # fmt: skip
        ] = None,
        universes: Annotated[
            int | None, typer.Option("--universes", help="Number of universes K.")
        ] = None,
        universe_size: Annotated[
            int | None, typer.Option("--universe-size", help="Tickers per drawn universe.")
        ] = None,
        universe_seed: Annotated[
            int, typer.Option("--universe-seed", help="Seed of the universe draw.")
        ] = 0,
        universe_file: Annotated[
            list[Path] | None,
            typer.Option("--universe-file", help="A universe file (repeat for several)."),
        ] = None,
        out: Annotated[
            Path | None,
            typer.Option("--out", help="Run folder (default runs/walkforward-<config hash>)."),
        ] = None,
        dry_run: Annotated[
            bool, typer.Option("--dry-run", help="Print the folds and the work; run nothing.")
        ] = False,
        seed: SeedOpt = 0,
        no_progress: QuietOpt = False,
        report: ReportOpt = True,
        force: Annotated[
            bool, typer.Option("--force", help="Reuse an --out folder of another configuration.")
        ] = False,
    ) -> None:
        """Walk forward: refit each spec per fold, stitch one out-of-sample run, compare."""
        guard(
            _walkforward, specs, data, tickers, start, end, adv, train, test, anchored, purge,
            trials, workers, scheduler, storage, universes, universe_size, universe_seed,
            universe_file, out, dry_run, seed, no_progress, report, force,
        )  # fmt: skip

"""``mpo shrink``: the decision-aware shrinkage study (:mod:`mpo.learn.shrink`).

``register(app)`` adds the command to the ``mpo`` typer app. The run folder
(``OUT/<stamp>-shrink`` or ``--run-dir``) holds ``results.json`` (config, seeds, per-seed
metrics and training histories, summary, timing, package versions), ``per_seed.csv`` and
``shrink.png``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from mpo.cli_errors import one_line_errors
from mpo.errors import MpoError

__all__ = ["register"]


def register(app: typer.Typer) -> None:
    """Add ``mpo shrink`` to ``app``."""

    @app.command()
    def shrink(
        seeds: Annotated[int, typer.Option("--seeds", help="Number of universes.")] = 10,
        first_seed: Annotated[int, typer.Option("--first-seed", help="Seed of the first.")] = 0,
        assets: Annotated[int, typer.Option("--assets", help="Assets N per universe.")] = 40,
        lookback: Annotated[
            int, typer.Option("--lookback", help="Months T per covariance estimate (N ~ T).")
        ] = 48,
        months: Annotated[
            int, typer.Option("--months", help="Months simulated per universe (incl. lookback).")
        ] = 360,
        factors: Annotated[int, typer.Option("--factors", help="Risk factors.")] = 3,
        alpha: Annotated[
            float, typer.Option("--alpha", help="Monthly return per s.d. of the signal.")
        ] = 0.005,
        market_vol: Annotated[
            float, typer.Option("--market-vol", help="Monthly volatility of the market factor.")
        ] = 0.045,
        lam: Annotated[
            float, typer.Option("--lam", help="Weight of mu_hat against 1/2 w'Sigma w.")
        ] = 0.2,
        cost_bps: Annotated[float, typer.Option("--cost-bps", help="Cost per L1 trade.")] = 10.0,
        turnover: Annotated[
            float, typer.Option("--turnover", help="Monthly L1 turnover limit (inf: none).")
        ] = 0.5,
        w_max: Annotated[float | None, typer.Option("--w-max", help="Weight cap.")] = None,
        epochs: Annotated[int, typer.Option("--epochs", help="End-to-end epochs.")] = 30,
        learned_sigma: Annotated[
            bool,
            typer.Option("--learned-sigma/--no-learned-sigma", help="Also learn Sigma = L L'."),
        ] = True,
        out: Annotated[Path, typer.Option("--out", help="Parent folder of run folders.")] = Path(
            "runs"
        ),
        run_dir: Annotated[
            Path | None, typer.Option("--run-dir", help="Write here instead of OUT/<stamp>-shrink.")
        ] = None,
    ) -> None:
        """Plug-in vs Ledoit-Wolf vs decision-aware shrinkage (delta learned through the QP)."""
        os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
        from mpo.learn.shrink import ShrinkConfig, run_study
        from mpo.learn.shrink_report import delta_table, format_summary, save_study

        with one_line_errors():
            try:
                if seeds < 1:
                    raise MpoError(f"--seeds must be >= 1, got {seeds}.")
                cfg = ShrinkConfig(
                    seeds=tuple(range(first_seed, first_seed + seeds)), n_assets=assets,
                    lookback=lookback, months=months, n_factors=factors, alpha=alpha, lam=lam,
                    market_vol=market_vol,
                    cost_bps=cost_bps, turnover=turnover,
                    w_max=w_max, epochs=epochs, learned_sigma=learned_sigma,
                )  # fmt: skip
                sp = cfg.splits()
                typer.echo(
                    f"{seeds} universes of {assets} assets, covariance from {lookback} months "
                    f"(N/T = {assets / lookback:.2f}); decision months: {sp.train} train, {sp.val} "
                    f"validation, {sp.test} test"
                )
                results = run_study(cfg)
                if run_dir is None:
                    from mpo.io import new_run_dir

                    run_dir = new_run_dir(out, "shrink")
                save_study(results, run_dir)
            except ValueError as exc:  # the study configuration's own checks
                raise MpoError(str(exc)) from None
        typer.echo("\nout-of-sample (test months) net Sharpe over seeds; edge: mean (s.e.)")
        typer.echo(format_summary(results))
        typer.echo("\nper seed")
        typer.echo(delta_table(results))
        typer.echo(f"\n{results['timing']['total']:.0f} s; results written to {run_dir}")

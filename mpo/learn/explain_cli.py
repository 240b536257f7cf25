"""``mpo explain``: what the trained encoders look at (see :mod:`mpo.learn.explain`).

``register(app)`` adds the command to the ``mpo`` typer app. ``CHECKPOINT`` is a
checkpoint file (``dmpo.pt``, ``two_stage.pt``) or an ``mpo train`` run folder (both,
side by side). The data default to the training spec's (``--data`` overrides the
source, as in ``mpo train``). Written atomically into the run folder (or ``--out``):
``explain-<date>.csv`` (long attributions), ``explain-<date>-checks.csv`` (``f(X)``,
``f(X0)``, sums and convergence deltas per output), ``explain-<date>.png`` (heatmaps)
and ``explain-<date>.json`` (settings and feature shares); a single file adds its kind
to the name (``explain-dmpo-<date>.csv``). :func:`write_explanation` and
:func:`save_heatmaps` write them from an :class:`~mpo.learn.explain.Explanation` (the
attribution itself is :func:`mpo.learn.explain.explain`: data, no files).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Annotated

import pandas as pd
import typer

from mpo.cli_errors import one_line_errors
from mpo.errors import CheckpointError

__all__ = [
    "load_explain_market",
    "output_stem",
    "register",
    "save_heatmaps",
    "write_explanation",
]

logger = logging.getLogger(__name__)


def load_explain_market(models, data: str | None, adv: float | None):
    """The market of the checkpoints' training spec (``data`` overrides its source).

    A synthetic market is regenerated as trained: with the spec's data seed, or with the
    training seed where ``mpo train --seed`` set both (chosen by the data fingerprint).
    """
    from mpo.learn.cli import load_training_market
    from mpo.learn.config import parse_train_spec

    first = models[0]
    raw = (first.ckpt.extra or {}).get("spec")
    if not raw:
        if data is None:
            raise CheckpointError(
                f"checkpoint {str(first.path)!r} records no training spec; give --data."
            )
        raw = {}
    spec = parse_train_spec(raw, source=f"the spec in {str(first.path)!r}")
    market = load_training_market(spec, data, None, adv)
    source = data or spec.data.source
    if market.fingerprint() != first.ckpt.fingerprint and source == "synthetic":
        alt = load_training_market(spec, data, first.ckpt.seed, adv)
        if alt.fingerprint() == first.ckpt.fingerprint:
            market = alt
    if market.fingerprint() != first.ckpt.fingerprint:
        logger.info("the data are not the training data (fingerprint %s, trained on %s).",
                    market.fingerprint(), first.ckpt.fingerprint)  # fmt: skip
    return market


def output_stem(models, dates, single_file: bool) -> str:
    """``explain[-<kind>]-<date>`` (``<first>_<last>`` for several dates)."""
    days = sorted({pd.Timestamp(d).date() for d in dates})
    when = str(days[0]) if len(days) == 1 else f"{days[0]}_{days[-1]}"
    kind = f"-{models[0].name}" if single_file else ""
    return f"explain{kind}-{when}"


# ------------------------------------------------------------------ files
def _heat(frame: pd.DataFrame, rows: str, cols: str) -> pd.DataFrame:
    a = frame.assign(attribution=frame["attribution"].abs())
    table = a.groupby([rows, cols], sort=False)["attribution"].sum().unstack(cols)
    return table / max(float(table.to_numpy().sum()), 1e-300)


def save_heatmaps(frame: pd.DataFrame, target: str | Path) -> Path:
    """PNG: per ``model/target/method`` a feature x lag and an asset x feature heatmap of the
    absolute attribution (summed over outputs and dates; shares of the panel's total)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mpo.io import atomic_path

    groups = list(frame.groupby(["model", "target", "method"], sort=False))
    fig, axes = plt.subplots(len(groups), 2, figsize=(11, 2.6 * len(groups) + 0.5), squeeze=False)
    for (key, g), (ax1, ax2) in zip(groups, axes, strict=True):
        fl = _heat(g, "feature", "lag").sort_index(axis=1)
        af = _heat(g, "asset", "feature")
        for ax, table, xlabel in ((ax1, fl, "lag (0 = newest)"), (ax2, af, "feature")):
            im = ax.imshow(table.to_numpy(), aspect="auto", cmap="viridis")
            ax.set_xticks(range(table.shape[1]), [str(c) for c in table.columns], fontsize=7)
            ax.set_yticks(range(table.shape[0]), [str(r) for r in table.index], fontsize=7)
            ax.set_xlabel(xlabel, fontsize=8)
            fig.colorbar(im, ax=ax, fraction=0.04)
        ax1.set_title(f"{'/'.join(key)}: feature x lag", fontsize=9)
        ax2.set_title(f"{'/'.join(key)}: asset x feature", fontsize=9)
    fig.tight_layout()
    with atomic_path(target) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return Path(target)


def write_explanation(expl, folder: str | Path, stem: str = "explain") -> dict:
    """Write ``<stem>.csv`` (long attributions), ``<stem>-checks.csv``, ``<stem>.png`` and
    ``<stem>.json`` (settings, feature shares) atomically into ``folder``; their paths."""
    from mpo.io import atomic_path, write_json

    folder = Path(folder)
    paths = {k: folder / f"{stem}{s}" for k, s in
             (("csv", ".csv"), ("checks", "-checks.csv"), ("png", ".png"), ("json", ".json"))}  # fmt: skip
    for key, table in (("csv", expl.frame), ("checks", expl.checks)):
        out = table.assign(date=table["date"].dt.strftime("%Y-%m-%d"))
        with atomic_path(paths[key]) as tmp:
            out.to_csv(tmp, index=False)
    save_heatmaps(expl.frame, paths["png"])
    from mpo.learn.explain import feature_table

    shares = feature_table(expl.frame)
    shares = shares.astype(object).where(shares.notna(), None)  # all-zero columns: null
    write_json({**expl.settings, "feature_shares": shares.to_dict()}, paths["json"])
    logger.info("attributions written to %s", paths["csv"])
    return paths


def _run(checkpoint: Path, data, dates, out, methods, targets, baseline, step, delta, steps,
         adv, seed) -> tuple[str, dict, bool]:  # fmt: skip
    import torch

    from mpo.learn.explain import (
        explain,
        find_checkpoints,
        format_feature_table,
        load_explained_model,
    )

    torch.set_num_threads(1)  # tiny batched solves: threads cost ~10x on 2 cores
    found = find_checkpoints(checkpoint)
    models = [load_explained_model(p) for p in found.values()]
    market = load_explain_market(models, data, adv)
    expl = explain(
        models, market, dates or None, methods=methods, targets=targets, baseline=baseline,
        step=step, delta=delta, n_steps=steps, seed=seed,
    )  # fmt: skip
    used = list(expl.frame["date"].unique())
    folder = out if out is not None else (checkpoint if checkpoint.is_dir() else checkpoint.parent)
    paths = write_explanation(expl, folder, output_stem(models, used, "" in found))
    return format_feature_table(expl.frame), paths, bool(expl.checks["starved"].any())


def register(app: typer.Typer) -> None:
    """Add ``mpo explain`` to ``app``."""

    @app.command()
    def explain(
        checkpoint: Annotated[
            Path, typer.Argument(help="Checkpoint file (dmpo.pt, two_stage.pt) or run folder.")
        ],
        data: Annotated[
            str | None,
            typer.Option("--data", help="sp20 | synthetic | files:DIR (default: the spec's)."),
        ] = None,
        date: Annotated[
            list[str] | None,
            typer.Option("--date", help="Decision date YYYY-MM-DD (repeatable; default: last)."),
        ] = None,
        out: Annotated[
            Path | None, typer.Option("--out", help="Folder of the outputs (default: the run's).")
        ] = None,
        method: Annotated[
            list[str] | None,
            typer.Option(
                "--method",
                help="saliency | integrated_gradients | gradient_shap | shap (repeatable; "
                "default: saliency and integrated_gradients).",
            ),
        ] = None,
        target: Annotated[
            list[str] | None,
            typer.Option("--target", help="mu_hat | weights (repeatable; default: both)."),
        ] = None,
        baseline: Annotated[
            str,
            typer.Option("--baseline", help="Integrated-gradients baseline: zeros | window_mean."),
        ] = "zeros",
        step: Annotated[
            int, typer.Option("--step", help="Planning step explained (0: the traded one).")
        ] = 0,
        delta: Annotated[
            float | None,
            typer.Option("--delta", help="Turnover limit of the decisions (inf: none)."),
        ] = None,
        steps: Annotated[
            int, typer.Option("--n-steps", help="Integration points / SHAP samples.")
        ] = 32,
        adv: Annotated[
            float | None, typer.Option("--adv", help="Assumed $ volume for data without volumes.")
        ] = None,
        seed: Annotated[int, typer.Option("--seed", help="Seed of the sampling methods.")] = 0,
    ) -> None:
        """Attribute mu_hat and the QP decision w* to input features, assets and lags."""
        os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
        from mpo.errors import SpecError
        from mpo.validation import check_date

        with one_line_errors():
            for value in date or ():
                try:
                    check_date(value)
                except ValueError as exc:
                    raise SpecError(f"--date: {exc}.") from None
            if delta is not None and not delta > 0:
                raise SpecError(f"--delta must be > 0 (or inf), got {delta}.")
            table, paths, starved = _run(
                checkpoint, data, list(date or ()), out,
                tuple(method or ("saliency", "integrated_gradients")),
                tuple(target or ("mu_hat", "weights")), baseline, step, delta, steps, adv, seed,
            )  # fmt: skip
        typer.echo("share of total absolute attribution per feature:")
        typer.echo(table)
        if starved:
            typer.echo(
                "note: the turnover limit pins some decisions (gradient starvation): their "
                "weight attributions are zero; --delta inf shows the unconstrained decision."
            )
        typer.echo(f"\nattributions written to {paths['csv']} (heatmaps {paths['png']})")

"""The walk-forward HTML report: built from a hand-made run folder, robust to missing pieces."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from html_helpers import Collect

from mpo.errors import MpoError
from mpo.io import write_json, write_parquet
from mpo.report import render_walkforward_report, write_walkforward_report

FOLDS = [
    {"fold": 0, "train_start": "2015-01-02", "train_end": "2016-12-20", "purge": 5,
     "test_start": "2017-01-03", "test_end": "2017-12-29"},
    {"fold": 1, "train_start": "2015-01-02", "train_end": "2017-12-20", "purge": 5,
     "test_start": "2018-01-02", "test_end": "2018-12-31"},
    {"fold": 2, "train_start": "2015-01-02", "train_end": "2018-12-20", "purge": 5,
     "test_start": "2019-01-02", "test_end": "2019-12-31"},
]  # fmt: skip
POLICIES = ("hold", "equal_weight", "spo")
BOLD = "<b>bold"  # a name that would inject markup if not escaped (a valid folder name)


def _metrics(policy: str, rng: np.random.Generator) -> dict:
    row = {
        "sharpe": rng.normal(0.5, 0.2), "sharpe_ci_low": -0.2, "sharpe_ci_high": 1.2,
        "annual_return": 0.08, "annual_volatility": 0.15, "max_drawdown": 0.2,
        "annual_turnover": 1.5, "spread_cost": 0.001, "impact_cost": 0.0002,
        "holding_cost": None,
    }  # fmt: skip
    if policy != "hold":
        row |= {"sharpe_vs_hold": 0.1, "sharpe_vs_hold_ci_low": -0.3, "sharpe_vs_hold_ci_high": 0.5}
    if policy not in ("hold", "equal_weight"):  # spo's CI vs equal weight excludes zero
        row |= {"sharpe_vs_equal_weight": 0.4, "sharpe_vs_equal_weight_ci_low": 0.15,
                "sharpe_vs_equal_weight_ci_high": 0.65, "p_vs_equal_weight_holm": 0.012,
                "dsr": 0.91, "n_trials": 40}  # fmt: skip
    return row


def _folds_rows(universe: str, policies, tuned: bool, rng) -> list[dict]:
    rows = []
    for policy in policies:
        for f in FOLDS:
            fitted = tuned and policy not in ("hold", "equal_weight")
            row = {"universe": universe, "spec": policy, **f, "fit": "tuned" if fitted else "none",
                   "n_trials": 40 if fitted else 0, "train_sharpe": rng.normal(),
                   "test_sharpe": rng.normal()}  # fmt: skip
            if tuned:
                gamma = 10.0 ** (f["fold"] - 1) if fitted else np.nan  # 0.1, 1, 10: log axis
                row |= {"param_gamma_risk": gamma, "param_delta": 0.5 if fitted else np.nan}
                row["params"] = json.dumps({"gamma_risk": gamma} if fitted else {})
            else:
                row["params"] = "{}"
            rows.append(row)
    return rows


def make_run(
    root: Path, n_universes: int = 1, policies=POLICIES, tuned: bool = True, skip=()
) -> Path:
    """A walk-forward run folder as mpo.research writes it (``skip``: policies without returns)."""
    rng = np.random.default_rng(0)
    index = pd.bdate_range(FOLDS[0]["test_start"], FOLDS[-1]["test_end"])
    universes, rows = {}, []
    for u in range(n_universes):
        name, path = (f"u{u:02d}", f"universes/u{u:02d}") if n_universes > 1 else ("main", ".")
        for policy in policies:
            if policy in skip:
                continue
            r = rng.normal(3e-4, 1e-2, len(index))
            frame = pd.DataFrame(
                {"net_return": r, "gross_return": r + 1e-5, "cash_return": 1e-4,
                 "value": 1e6 * np.cumprod(1 + r), "turnover": 0.01}, index=index,
            )  # fmt: skip
            write_parquet(frame, root / path / policy / "returns.parquet")
        universes[name] = {
            "path": path,
            "tickers": ["AAPL", "KO", "XOM"],
            "policies": {p: _metrics(p, rng) for p in policies},
        }
        rows += _folds_rows(name, policies, tuned, rng)
    aggregate = None
    if n_universes > 1:
        aggregate = {"n_universes": n_universes, "policies": {
            "spo": {"mean_sharpe": 0.6, "sd_sharpe": 0.2, "win_rate_vs_equal_weight": 0.5,
                    "win_rate_vs_hold": 1.0, "mean_diff_vs_equal_weight": 0.2,
                    "mean_diff_vs_equal_weight_ci_low": -0.1,
                    "mean_diff_vs_equal_weight_ci_high": 0.5},
            "equal_weight": {"mean_sharpe": 0.5, "win_rate_vs_hold": 0.5},
        }}  # fmt: skip
    config = {"train": 504, "test": 252, "anchored": True, "specs": list(policies)}
    write_json(
        {"kind": "walkforward", "config": config, "folds": FOLDS, "universes": universes,
         "aggregate": aggregate}, root / "summary.json",
    )  # fmt: skip
    pd.DataFrame(rows).to_csv(root / "folds.csv", index=False)
    return root


def parse(text: str) -> Collect:
    parser = Collect()
    parser.feed(text)
    parser.close()
    assert parser.stack == [], parser.stack
    return parser


def figures(parser: Collect) -> list[str]:
    return [a["id"] for t, a in parser.tags if t == "figure"]


@pytest.fixture(scope="module")
def single(tmp_path_factory) -> tuple[Path, str]:
    root = make_run(tmp_path_factory.mktemp("wf1"))
    path = write_walkforward_report(root, title="wf <test>")
    return path, path.read_text(encoding="utf-8")


def test_single_universe_report_has_tables_figures_and_notes(single):
    path, text = single
    assert path.name == "report.html" and text.startswith("<!DOCTYPE html>")
    parser = parse(text)
    assert figures(parser) == ["fig-equity", "fig-folds", "fig-params"]
    assert text.count("<img") == 3 and 'src="data:image/png;base64,' in text
    body = " ".join(parser.text)
    assert all(p in body for p in POLICIES)
    assert "3 folds, test periods 2017-01-03 to 2019-12-31; 1 universe(s)" in body
    assert "wf <test>" in body and "wf &lt;test&gt;" in text  # the title is escaped
    assert "dSharpe vs EW 95% CI" in body and "p vs EW (Holm)" in body and "DSR" in body
    assert "[+0.15, +0.65]" in body and "0.012" in body and "Sharpe 95% CI" in body
    assert "excluding zero for: spo (+0.40 [+0.15, +0.65])" in body
    assert len([t for t, _ in parser.tags if t == "table"]) == 1
    assert not list(path.parent.glob(".report.html.*"))  # the atomic write left no temp file


def test_render_returns_the_same_document_as_the_file(single):
    path, _ = single
    text = render_walkforward_report(path.parent, title="wf <test>")
    strip = re.compile(r"report created [0-9T:-]+")
    assert strip.sub("", text) == strip.sub("", path.read_text(encoding="utf-8"))


def test_two_universes_show_aggregate_and_win_rates(tmp_path):
    root = make_run(tmp_path, n_universes=2)
    parser = parse(write_walkforward_report(root).read_text(encoding="utf-8"))
    assert figures(parser) == ["fig-equity", "fig-folds", "fig-params", "fig-wins"]
    body = " ".join(parser.text)
    assert "2 universe(s)" in body and "Across 2 universes" in body
    assert "first universe (u00) of 2" in body and "mean over universes" in body
    assert "spo in 2 of 2 universes" in body
    assert "the mean difference has a 95% CI excluding zero for: none of them" in body
    assert "wins vs EW" in body and "50%" in body
    assert len([t for t, _ in parser.tags if t == "table"]) == 3  # two universes + aggregate


def test_many_universes_show_only_the_first_table(tmp_path):
    root = make_run(tmp_path, n_universes=4, tuned=False)
    parser = parse(render_walkforward_report(root))
    assert len([t for t, _ in parser.tags if t == "table"]) == 2  # the first + the aggregate
    assert "only the first of 4 universes" in " ".join(parser.text)


def test_names_are_escaped(tmp_path):
    root = make_run(tmp_path, policies=(*POLICIES, BOLD))
    text = render_walkforward_report(root)
    assert "<b>" not in text and "&lt;b&gt;bold" in text
    assert figures(parse(text)) == ["fig-equity", "fig-folds", "fig-params"]


def test_no_tuned_spec_means_no_parameter_figure(tmp_path):
    parser = parse(render_walkforward_report(make_run(tmp_path, tuned=False)))
    assert figures(parser) == ["fig-equity", "fig-folds"]
    assert "no parameter-stability figure" in " ".join(parser.text)


def test_missing_returns_are_reported_not_raised(tmp_path, caplog):
    root = make_run(tmp_path, skip=("spo",))
    with caplog.at_level(logging.WARNING, logger="mpo.report.walkforward"):
        parser = parse(render_walkforward_report(root))
    body = " ".join(parser.text)
    assert "spo in main: returns.parquet is missing" in body
    assert any("spo" in r.getMessage() and "missing" in r.getMessage() for r in caplog.records)
    assert figures(parser) == ["fig-equity", "fig-folds", "fig-params"]


def test_no_returns_and_empty_folds_give_sentences(tmp_path):
    root = make_run(tmp_path, skip=POLICIES)
    (root / "folds.csv").write_text("")
    parser = parse(render_walkforward_report(root))
    assert figures(parser) == []
    body = " ".join(parser.text)
    assert "no equity curves" in body and "no per-fold figure" in body


def test_a_universe_path_outside_the_run_folder_is_not_read(tmp_path):
    outside = make_run(tmp_path / "other")  # a complete run next to ours
    root = make_run(tmp_path / "run")
    summary = json.loads((root / "summary.json").read_text())
    summary["universes"]["main"]["path"] = f"../{outside.name}"
    write_json(summary, root / "summary.json")
    body = " ".join(parse(render_walkforward_report(root)).text)
    assert "hold in main: it names no folder inside the run folder" in body
    assert "no equity curves" in body


def test_missing_summary_raises_naming_the_folder(tmp_path):
    folder = tmp_path / "half-done"
    folder.mkdir()
    with pytest.raises(MpoError, match="half-done.*not a finished walk-forward run"):
        write_walkforward_report(folder)
    assert not (folder / "report.html").exists()


def test_a_summary_of_another_kind_raises(tmp_path):
    write_json({"kind": "backtest", "universes": {}}, tmp_path / "summary.json")
    with pytest.raises(MpoError, match="kind='backtest'"):
        render_walkforward_report(tmp_path)


def test_failures_created_and_versions_of_the_run_are_shown(tmp_path):
    root = make_run(tmp_path)
    summary = json.loads((root / "summary.json").read_text())
    summary |= {
        "failures": {"main/spo/fold-1": "SolverError: <infeasible>"},
        "versions": {"mpo": "9.9.9", "cvxportfolio": "1.0", "cvxpy": "1.1"},
        "created": "2024-05-01T12:00:00",
    }
    write_json(summary, root / "summary.json")
    text = render_walkforward_report(root)
    body = " ".join(parse(text).text)
    assert "Tasks that failed in the run: main/spo/fold-1: SolverError: <infeasible>." in body
    assert "&lt;infeasible&gt;" in text
    assert "run created 2024-05-01T12:00:00" in body and "run with mpo 9.9.9" in body

"""The HTML report: self-contained, renders, holds the table and the figures."""

from __future__ import annotations

import base64
import dataclasses
import io
import re

import matplotlib.image as mpimg
import matplotlib.pyplot as plt
import numpy as np
import pytest
from html_helpers import Collect

from mpo.backtest import run_backtests
from mpo.report import write_report
from mpo.report.figures import costs_figure


@pytest.fixture(scope="module")
def run(market, make_spec):
    specs = [make_spec("spo"), make_spec("equal_weight", name="ew", rebalance_every=21)]
    return run_backtests(specs, market, start="2017-06-01", progress=False)


def test_report_is_self_contained_html_with_table_and_figures(run, tmp_path):
    path = write_report(run, tmp_path / "report.html", title="test report", notes="a note")
    text = path.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>")
    parser = Collect()
    parser.feed(text)
    parser.close()
    assert parser.stack == ["html"] or parser.stack == [], parser.stack  # balanced tags
    body = " ".join(parser.text)
    for name in ("hold", "spo", "ew"):
        assert name in body
    assert "Sharpe 95% CI" in body and "dSharpe vs Hold" in body and "a note" in body
    tables = [a for t, a in parser.tags if t == "table"]
    assert len(tables) == 1 and "metrics" in tables[0]["class"]
    cells = [t for t, _ in parser.tags if t == "td"]
    assert len(cells) >= 3 * 10  # 3 policies x the metric columns
    imgs = [a for t, a in parser.tags if t == "img"]
    assert len(imgs) == 4
    for a in imgs:
        assert a["src"].startswith("data:image/png;base64,")  # nothing external to fetch
        png = base64.b64decode(a["src"].split(",", 1)[1])
        image = mpimg.imread(io.BytesIO(png), format="png")
        assert image.shape[0] > 100 and image.shape[1] > 300
        assert image.std() > 0.01  # not a blank picture
    assert "http://" not in text and "https://" not in text
    assert not list(tmp_path.glob("*.tmp"))


@pytest.fixture(scope="module")
def run_with_fee(run):
    """``run`` whose metrics also hold a new cost term's ``fixed_fee_cost``."""
    results = {
        name: dataclasses.replace(r, metrics={**r.metrics, "fixed_fee_cost": 0.001 * (i + 1)})
        for i, (name, r) in enumerate(run.results.items())
    }
    return dataclasses.replace(run, results=results)


def test_cost_chart_stacks_every_cost_term(run_with_fee):
    table = run_with_fee.table()
    assert [c for c in table.columns if c.endswith("_cost")] == [
        "spread_cost",
        "impact_cost",
        "holding_cost",
        "fixed_cost",
        "fixed_fee_cost",
    ]
    fig = costs_figure(table)
    try:
        ax = fig.axes[1]
        labels = [t.get_text() for t in ax.get_legend().get_texts()]
        assert labels == ["spread", "impact", "holding", "fixed", "fixed_fee"]
        bars = ax.containers
        assert [b.get_label() for b in bars] == labels
        tops = np.array([p.get_y() + p.get_height() for p in bars[-1].patches])
        expected = table[
            ["spread_cost", "impact_cost", "holding_cost", "fixed_cost", "fixed_fee_cost"]
        ]
        np.testing.assert_allclose(tops, expected.sum(axis=1).to_numpy(), rtol=1e-12)
    finally:
        plt.close(fig)


def test_report_shows_a_new_cost_term_in_table_and_chart(run_with_fee, tmp_path):
    text = write_report(run_with_fee, tmp_path / "report.html").read_text(encoding="utf-8")
    assert "<th>fixed_fee/yr</th>" in text and "<th>spread/yr</th>" in text
    caption = re.search(r'<figure id="fig-costs"><figcaption>([^<]*)</figcaption>', text)
    assert caption, text[-3000:]
    assert "spread, impact, holding, fixed, fixed_fee" in caption.group(1)


def _chromium() -> str | None:
    import shutil

    return next(
        (
            p
            for p in (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome"))
            if p
        ),
        None,
    )


@pytest.mark.skipif(_chromium() is None, reason="no headless Chromium (.ci/run installs it)")
def test_report_renders_in_a_headless_browser(run, tmp_path):
    """Chromium loads the file, builds the table and decodes every figure."""
    import re
    import subprocess

    text = write_report(run, tmp_path / "report.html").read_text(encoding="utf-8")
    probe = (
        '<script>window.addEventListener("load", () => {'
        "const ok = [...document.images].filter(i => i.complete && i.naturalWidth > 0).length;"
        'document.body.setAttribute("data-images-ok", ok);'
        'document.body.setAttribute("data-cells", document.querySelectorAll("td").length);'
        "});</script></body>"
    )
    page = tmp_path / "probe.html"
    page.write_text(text.replace("</body>", probe), encoding="utf-8")
    dom = subprocess.run(
        [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=5000",
         "--dump-dom", page.as_uri()],
        capture_output=True, text=True, timeout=120,
    ).stdout  # fmt: skip
    assert re.search(r'data-images-ok="4"', dom), dom[-2000:]
    cells = int(re.search(r'data-cells="(\d+)"', dom).group(1))
    assert cells >= 3 * 10
    assert "dSharpe vs Hold" in dom and "Equity curves" in dom

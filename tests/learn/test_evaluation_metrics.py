"""Training evaluation metrics per split: maximum drawdown, concentration (HHI, effective
names), turnover and cost, against hand computations on tiny deterministic paths; the
table and the curves show them."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from _helpers import tiny_spec

from mpo.learn.dataset import FeatureSpec, Split, WindowDataset
from mpo.learn.evaluation import Evaluation, herfindahl, run_sequential
from mpo.learn.losses import TrainingCosts
from mpo.learn.reporting import format_results, save_curves

TOL = {"rel": 1e-12, "abs": 1e-15}  # pytest.approx


def _hand_evaluation() -> Evaluation:
    """Two assets, four periods; numbers chosen so every metric is a short fraction."""
    dates = pd.bdate_range("2021-01-04", periods=4)
    net = np.array([0.10, -0.20, 0.05, -0.10])
    return Evaluation(
        name="hand",
        dates=dates,
        net=net,
        gross=net,
        cost=np.array([0.0, 0.001, 0.0004, 0.0006]),
        turnover=np.array([0.0, 1.0, 0.4, 0.6]),  # ||w - w_prev||_1
        excess=net,
        weights=np.array([[0.5, 0.5], [1.0, 0.0], [0.8, 0.2], [0.5, 0.5]]),
        max_violation=0.0,
    )


def test_metrics_by_hand():
    m = _hand_evaluation().metrics()
    # value 1, 1.1, 0.88, 0.924, 0.8316: peak 1.1, trough 0.8316 -> 1 - 0.8316 / 1.1
    assert m["max_drawdown"] == pytest.approx(0.244, **TOL)
    # HHI per decision 0.5, 1, 0.64 + 0.04, 0.5 -> mean 0.67
    assert m["mean_hhi"] == pytest.approx(0.67, **TOL)
    assert m["effective_names"] == pytest.approx(1 / 0.67, **TOL)
    # turnover counted as cvxportfolio does (sum |z| / 2): (0 + 1 + 0.4 + 0.6) / 2
    assert m["total_turnover"] == pytest.approx(1.0, **TOL)
    assert m["annual_turnover"] == pytest.approx(0.25 * 252, **TOL)
    assert m["total_cost"] == pytest.approx(0.002, **TOL)
    assert m["annual_cost"] == pytest.approx(0.0005 * 252, **TOL)
    assert m["periods"] == 4


def test_herfindahl_extremes_and_gross_normalisation():
    h = herfindahl(np.array([[0.25] * 4, [0.0, 1.0, 0.0, 0.0], [0.5, -0.5, 0, 0], [0.0] * 4]))
    np.testing.assert_allclose(h[:3], [0.25, 1.0, 0.5], rtol=1e-12)
    assert np.isnan(h[3])  # no position: undefined, not a division warning


def test_a_run_without_losses_has_no_drawdown():
    ev = _hand_evaluation()
    ev.net = np.array([0.01, 0.0, 0.02, 0.01])
    assert ev.metrics()["max_drawdown"] == 0.0


def _tiny_dataset(returns: np.ndarray) -> WindowDataset:
    D, n = returns.shape
    t64 = lambda x: torch.tensor(x, dtype=torch.float64)  # noqa: E731
    return WindowDataset(
        features=torch.zeros((D, n, 1), dtype=torch.float64),
        returns=t64(returns),
        cash=torch.zeros(D, dtype=torch.float64),
        sigma=torch.full((D, n), 0.01, dtype=torch.float64),
        volume=torch.full((D, n), 1e9, dtype=torch.float64),
        dates=pd.bdate_range("2021-01-04", periods=D),
        tickers=["A", "B"],
        spec=FeatureSpec(window=1),
    )


def test_sequential_run_metrics_equal_a_hand_loop_with_drift():
    """A fixed sequence of targets traded from equal weight under a 10 bp spread: the
    turnover counts the drift between decisions, the cost is 10 bp of it."""
    returns = np.array([[0.10, -0.10], [-0.20, 0.00], [0.05, 0.05], [0.00, -0.30]])
    targets = np.array([[0.5, 0.5], [1.0, 0.0], [0.8, 0.2], [0.5, 0.5]])
    ds = _tiny_dataset(returns)
    split = Split("test", np.arange(4), ds.dates[0], ds.dates[-1])
    costs = TrainingCosts.from_spec(tiny_spec(costs={"half_spread": 1e-3, "impact": 0.0}))

    def decide(k, w_prev):
        return torch.tensor(targets[k], dtype=torch.float64), 2.0, False  # no turnover limit

    m = run_sequential("fixed", decide, ds, split, costs, None).metrics()
    # independent loop: drift w (1 + r) / (1 + w'r), trade to the target, pay 10 bp
    w_prev, turns, nets = np.array([0.5, 0.5]), [], []
    for w, r in zip(targets, returns, strict=True):
        z = np.abs(w - w_prev).sum()
        turns.append(z)
        nets.append(w @ r - 1e-3 * z)
        w_prev = w * (1 + r) / (1 + w @ r)
    value = np.concatenate([[1.0], np.cumprod(1 + np.array(nets))])
    assert m["max_drawdown"] == pytest.approx(np.max(1 - value / np.maximum.accumulate(value)),
                                              **TOL)  # fmt: skip
    assert m["total_turnover"] == pytest.approx(sum(turns) / 2, **TOL)
    assert m["total_cost"] == pytest.approx(1e-3 * sum(turns), **TOL)
    assert m["effective_names"] == pytest.approx(1 / 0.67, **TOL)
    assert m["max_drawdown"] > 0.2  # the -20% and -15% periods: not vacuous


def _results() -> dict:
    m = _hand_evaluation().metrics()
    return {"metrics": {"dmpo": {"val": m, "test": m}, "equal_weight": {"val": m, "test": m}}}


def test_table_shows_drawdown_and_effective_names():
    text = format_results(_results())
    header = text.splitlines()[0]
    assert "val max DD" in header and "test max DD" in header and "test names" in header
    dmpo = next(line for line in text.splitlines() if line.startswith("dmpo"))
    assert "24.4%" in dmpo and "1.5" in dmpo  # max drawdown, 1 / 0.67 names


def test_table_of_older_results_without_the_new_metrics():
    res = _results()
    for by_split in res["metrics"].values():
        for split in by_split:
            by_split[split] = {k: v for k, v in by_split[split].items()
                               if k not in ("max_drawdown", "effective_names")}  # fmt: skip
    assert "val Sharpe" in format_results(res)


def test_curves_add_panels_for_split_metrics_and_recorded_epoch_metrics(tmp_path):
    import matplotlib.image as mpimg

    hist = [{"epoch": 0, "loss": 1.0, "val": 0.1}, {"epoch": 1, "loss": 0.5, "val": 0.3}]
    plain, full = tmp_path / "plain.png", tmp_path / "full.png"
    save_curves({"dmpo": hist}, plain)
    recorded = [{**h, "val_max_drawdown": 0.1 * h["epoch"]} for h in hist]
    save_curves({"dmpo": recorded}, full, metrics=_results()["metrics"])
    (h_plain, w_plain), (h_full, w_full) = (mpimg.imread(p).shape[:2] for p in (plain, full))
    # two panels in a row; then + one per-epoch panel (recorded) + two per-split panels,
    # five panels three to a row
    assert (h_full, w_full) == (2 * h_plain, w_plain * 3 // 2)

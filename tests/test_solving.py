"""The solver chain: fallbacks in order, inaccurate solves counted or refused, partial records."""

from __future__ import annotations

import json

import cvxpy as cp
import numpy as np
import pandas as pd
import pytest
from spec_helpers import TIGHT

from mpo.backtest import run_backtests
from mpo.errors import SolverError
from mpo.policies import solving

#: CLARABEL stopped after 2 iterations: status user_limit (an inaccurate solution).
STOPPED = {**TIGHT, "max_iter": 2}


@pytest.fixture(scope="module")
def window(market):
    return dict(start=market.calendar[100], end=market.calendar[106], progress=False)


@pytest.fixture(scope="module")
def reference(market, make_spec, window):
    """The accurate run: CLARABEL with tight tolerances."""
    spec = make_spec("spo", name="spo")
    return run_backtests([spec], market, include_hold=False, **window).results["spo"]


def test_a_fallback_solver_replaces_a_stopped_solve_and_is_counted(
    market, make_spec, window, reference
):
    spec = make_spec(
        "spo", name="spo", backtest={"solver_options": STOPPED, "fallback_solver": "clarabel"}
    )
    r = run_backtests([spec], market, include_hold=False, **window).results["spo"]
    # every period: primary stopped by max_iter, fallback (same solver, default options) accurate
    assert r.solves["periods"] == 6
    assert r.solves["fallback"] == 6 and r.solves["inaccurate"] == 0
    assert r.solves["fallback_solvers"] == {"CLARABEL": 6}
    assert r.metrics["fallback_solves"] == 6
    # the fallback's decisions are the accurate ones, independently solved: to CLARABEL's
    # default tolerances (the fallback's options), which give weights to ~4e-6 on this problem
    np.testing.assert_allclose(r.weights.to_numpy(), reference.weights.to_numpy(), atol=2e-5)


def test_an_inaccurate_solution_is_used_counted_and_warned(
    market, make_spec, window, reference, caplog
):
    spec = make_spec("spo", name="spo", backtest={"solver_options": STOPPED})
    with caplog.at_level("WARNING", logger="mpo"):
        r = run_backtests([spec], market, include_hold=False, **window).results["spo"]
    assert r.solves["inaccurate"] == 6 and r.solves["fallback"] == 0
    assert r.metrics["inaccurate_solves"] == 6
    first = str(window["start"].date())
    assert r.solves["dates"][0] == f"{first} inaccurate (CLARABEL: user_limit)"
    assert r.solves["inaccurate_statuses"] == {"user_limit": 6}
    # one warning per policy (not per period) names the count and the first dates
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warned) == 1 and "6 an inaccurate solution (first: " + first in warned[0]
    # really a different (inaccurate) answer, not silently the accurate one
    assert np.abs(r.weights.to_numpy() - reference.weights.to_numpy()).max() > 1e-3


def test_inaccurate_error_stops_the_policy_naming_the_date(market, make_spec, window):
    spec = make_spec("spo", name="spo", backtest={"solver_options": STOPPED, "inaccurate": "error"})
    first = str(window["start"].date())
    with pytest.raises(SolverError, match=rf"policy 'spo' at {first}.*no solver reached"):
        run_backtests([spec], market, include_hold=False, **window)


def test_the_chain_is_tried_in_order(market, make_spec, window, reference, monkeypatch):
    """First fallback raises, the second solves: each period is one 'fallback' by the second."""
    real = cp.Problem.solve

    def flaky(self, *args, **kwargs):
        if kwargs.get("solver") == "SCS":
            raise cp.SolverError("SCS broke")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(cp.Problem, "solve", flaky)
    spec = make_spec(
        "spo",
        name="spo",
        backtest={"solver_options": STOPPED, "fallback_solver": ["scs", "clarabel"]},
    )
    r = run_backtests([spec], market, include_hold=False, **window).results["spo"]
    assert r.solves["fallback_solvers"] == {"CLARABEL": 6}
    np.testing.assert_allclose(r.weights.to_numpy(), reference.weights.to_numpy(), atol=2e-5)


def test_every_solver_failing_names_each_and_the_fix(market, make_spec, window, monkeypatch):
    def broken(self, *args, **kwargs):
        raise cp.SolverError(f"{kwargs.get('solver')} broke")

    monkeypatch.setattr(cp.Problem, "solve", broken)
    spec = make_spec("spo", name="spo", backtest={"fallback_solver": ["scs"]})
    with pytest.raises(SolverError) as err:
        run_backtests([spec], market, include_hold=False, **window)
    msg = str(err.value)
    assert "CLARABEL: CLARABEL broke" in msg and "SCS: SCS broke" in msg
    assert "fallback_solver" in msg


def test_a_failed_policy_keeps_its_record_up_to_the_failure(
    market, make_spec, window, tmp_path, monkeypatch
):
    """Solves 1-3 succeed, the 4th fails: the partial record has decisions 1-3, the others run."""
    real = solving._ChainedProblem.solve
    calls = {"n": 0}

    def fail_fourth(self, **kwargs):
        if self._owner.policy_name == "bad":
            calls["n"] += 1
            if calls["n"] == 4:
                raise cp.SolverError("boom")
        return real(self, **kwargs)

    monkeypatch.setattr(solving._ChainedProblem, "solve", fail_fourth)
    ok = make_spec("spo", name="ok")
    bad = make_spec("spo", name="bad")
    run = run_backtests([ok, bad], market, on_failure="record", **window)
    cal = market.calendar
    start = cal.get_loc(window["start"])
    assert set(run.results) == {"hold", "ok"}
    assert f"policy 'bad' at {cal[start + 3].date()}" in run.failures["bad"]
    partial = run.partials["bad"]
    assert list(partial.index) == list(cal[start : start + 3])
    # the record equals what the same policy did in a run that did not fail
    np.testing.assert_allclose(
        partial.drop(columns="value").to_numpy(),
        run.results["ok"].weights.iloc[:3].to_numpy(),
        atol=1e-12,
    )
    np.testing.assert_allclose(
        partial["value"].to_numpy(), run.results["ok"].value.iloc[:3].to_numpy(), rtol=1e-12
    )
    run_dir = run.save(tmp_path / "run")
    saved = pd.read_parquet(run_dir / "bad" / "partial.parquet")
    pd.testing.assert_frame_equal(saved, partial, check_freq=False)
    meta = json.loads((run_dir / "run.json").read_text())
    assert meta["partial"]["bad"] == {
        "file": "bad/partial.parquet",
        "periods": 3,
        "through": str(cal[start + 2].date()),
    }
    assert meta["solves"]["ok"]["periods"] == 6


def test_results_are_saved_as_each_policy_finishes(market, make_spec, window):
    seen = []
    run_backtests(
        [make_spec("spo", name="a"), make_spec("equal_weight", name="b")],
        market,
        on_result=lambda r: seen.append(r.name),
        **window,
    )
    assert seen == ["hold", "a", "b"]


def test_the_window_covers_prices_from_start_to_end(market, make_spec):
    """[start, end]: decisions start .. the period before end, whose return ends at end's price.

    The row dated t is the return from t to the next date, so the last return row is the
    period before ``end`` and nothing inside the window is dropped (the issue's "end clipped
    by a day" is this convention, now stated in run.json and the CLI line).
    """
    cal = market.calendar
    run = run_backtests(
        [make_spec("equal_weight")], market, start=cal[100], end=cal[105], progress=False
    )
    r = run.results["equal_weight"]
    assert list(r.returns.index) == list(cal[100:105])
    assert run.end == cal[105] and run.last_decision() == str(cal[104].date())
    # the return of the last row is the market's return dated cal[104] (cal[104] -> cal[105])
    expected = market.returns_with_cash().loc[cal[104]]
    w = r.weights.loc[cal[104]]
    gross = float((w * (1 + expected)).sum() - 1)
    assert r.gross_returns.loc[cal[104]] == pytest.approx(gross, abs=1e-12)


@pytest.mark.parametrize(
    "n, horizon, options, expected",
    [(20, 3, {}, None), (100, 3, {}, True), (150, 1, {}, None), (100, 3, {"ignore_dpp": False},
                                                                 False)],
)  # fmt: skip
def test_the_compile_path_follows_assets_times_horizon(make_spec, n, horizon, options, expected):
    """DPP is skipped from n * H >= IGNORE_DPP_FROM (measured in benchmarks/scale.py), unless
    solver_options choose."""
    from mpo.policies import IGNORE_DPP_FROM, build_policy

    kind = "spo" if horizon == 1 else "mpo"
    spec = make_spec(
        kind,
        objective={"planning_horizon": horizon},
        backtest={"solver_options": options},
    )
    policy = build_policy(spec, [f"A{i}" for i in range(n)])
    assert policy.cvxpy_kwargs.get("ignore_dpp") is expected
    if not options:
        assert (n * horizon >= IGNORE_DPP_FROM) == (expected is True)


def test_a_failed_tuning_trial_is_logged_in_one_line_without_a_traceback():
    import logging

    import mpo.tuning.workers  # noqa: F401  (installs the filter)
    from mpo.tuning.trial import TrialFailure

    record = logging.LogRecord(
        "optuna.study._optimize", logging.WARNING, __file__, 1, "Trial %d failed.", (3,),
        (TrialFailure, TrialFailure("solver failure: policy 'mpo' at 2016-04-08"), None),
    )  # fmt: skip
    assert logging.getLogger("optuna.study._optimize").filter(record)
    assert record.exc_info is None
    assert record.getMessage() == "Trial 3 failed."

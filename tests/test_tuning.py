"""Optuna tuning: windows and purge, look-ahead, trial values vs independent backtests,
failures, resume after a real kill, several workers, storages and bad input."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
from optuna.trial import TrialState
from spec_helpers import spec_dict

from mpo.backtest import run_backtests
from mpo.config import parse_spec
from mpo.errors import SpecError, TuningError
from mpo.metrics import periods_per_year, sharpe_ratio
from mpo.tuning import (
    OBJECTIVES,
    TrialFailure,
    TrialRunner,
    TuningJob,
    TuningObjective,
    open_storage,
    parse_purge,
    resolve_windows,
    tune,
)

ROOT = Path(__file__).parents[1]

# On the 375-period `market` fixture (2017-01-03 .. 2018-06-29); the spec's lookback is 61.
TRAIN = ("2017-04-13", "2017-08-31")
TEST = ("2017-12-14", "2018-06-21")


def tiny_spec(kind="spo", **tuning):
    t = {"trials": 4, "sub_periods": 3, **tuning}
    return parse_spec(spec_dict(kind, tuning=t))


@pytest.fixture(autouse=True)
def _quiet_optuna():
    optuna.logging.set_verbosity(optuna.logging.WARNING)


def _journal(tmp_path) -> str:
    return str(tmp_path / "studies.journal")


def _job(spec, market, windows, objective="sharpe", prune=False, sub_periods=1) -> TuningJob:
    """A one-trial job for running TrialRunner directly (no storage needed)."""
    return TuningJob(
        spec=spec,
        market=market,
        windows=windows,
        objective=objective,
        storage="",
        study_name="",
        n_trials=1,
        seed=0,
        prune=prune,
        sub_periods=sub_periods,
    )


# ------------------------------------------------------------------ end to end
def test_tiny_study_end_to_end(market, tmp_path):
    spec = tiny_spec()
    res = tune(
        spec,
        market,
        trials=5,
        train=TRAIN,
        test=TEST,
        storage=_journal(tmp_path),
        seed=1,
        progress=False,
    )
    finished = res.trials[res.trials["state"].isin(["COMPLETE", "PRUNED"])]
    assert len(finished) >= 5
    done = res.trials[res.trials["state"] == "COMPLETE"]
    assert res.best_value == pytest.approx(done["value"].max(), abs=0)
    assert res.tuned_spec.objective.gamma_risk == res.best_params["gamma_risk"]
    assert res.tuned_spec.objective.gamma_trade == res.best_params["gamma_trade"]
    # the search space of the seed article
    assert (done["param_gamma_risk"].between(0.01, 1000)).all()
    assert (done["param_gamma_trade"].between(1e-4, 25)).all()
    table = res.table()
    assert list(table.index) == ["hold", "equal_weight", "spo-untuned", "spo-tuned"]
    assert res.test.start == pd.Timestamp(TEST[0])
    assert {"sharpe_ci_low", "sharpe_vs_hold_ci_low"} <= set(table.columns)
    d = res.deflated
    assert 0.0 <= d["dsr"] <= d["psr"] <= 1.0  # deflating can only lower the probability
    assert d["n_trials"] == len(finished)  # pruned trials were tried too

    spec_path = tmp_path / "myspec.toml"
    run_dir = res.save(tmp_path / "run", spec_path=spec_path)
    for name in ("trials.csv", "tuning.json", "history.png", "slices.png", "risk_return.png"):
        assert (run_dir / name).stat().st_size > 0, name
    assert (run_dir / "test" / "run.json").exists()
    tuned = json.loads((tmp_path / "myspec.tuned.json").read_text())
    assert tuned["params"] == res.best_params
    summary = json.loads((run_dir / "tuning.json").read_text())
    assert summary["windows"]["train"] == ["2017-04-13", "2017-08-31"]
    assert summary["config"]["train_data_fingerprint"]
    assert "cvxportfolio" in summary["versions"] and summary["seed"] == 1
    assert len(pd.read_csv(run_dir / "trials.csv")) == len(res.trials)


def test_trial_value_equals_an_independent_backtest(market, tmp_path):
    """A trial's Sharpe (on truncated data, with the pruning watcher) equals the Sharpe of the
    same spec backtested on the full data by run_backtests; intermediate values are the
    Sharpe ratios of the first periods."""
    spec = tiny_spec()
    res = tune(
        spec,
        market,
        trials=3,
        train=TRAIN,
        test=TEST,
        storage=_journal(tmp_path),
        evaluate=False,
        progress=False,
    )
    study = optuna.load_study(study_name=res.study_name, storage=open_storage(res.storage))
    trial = study.best_trial
    checked = spec.with_updates(objective=dict(trial.params))
    run = run_backtests(
        [checked], market, start=TRAIN[0], end=TRAIN[1], include_hold=False, progress=False
    )
    r = run.results[checked.name]
    excess = (r.returns - r.cash_returns).to_numpy()
    ppy = periods_per_year(r.returns.index)
    assert trial.value == pytest.approx(sharpe_ratio(excess, ppy), abs=1e-10)
    assert trial.user_attrs["annual_turnover"] == pytest.approx(
        r.metrics["annual_turnover"], abs=1e-10
    )
    assert trial.intermediate_values, "pruning needs intermediate values"
    for step, value in trial.intermediate_values.items():
        assert value == pytest.approx(sharpe_ratio(excess[:step], ppy), abs=1e-10)


def test_test_window_data_never_reaches_the_objective(market, tmp_path):
    """Perturb every data point after the training window: the study is bit-identical."""
    spec = tiny_spec()
    w = resolve_windows(spec, market, train=TRAIN, test=TEST)
    rng = np.random.default_rng(0)
    future = market.calendar > w.train_end
    returns = market.returns.copy()
    returns.loc[future] = rng.normal(0, 0.05, size=(future.sum(), returns.shape[1]))
    volumes = market.volumes.copy()
    volumes.loc[future] *= 10.0
    cash = market.cash_return.copy()
    cash.loc[future] = 5e-4
    perturbed = replace(market, returns=returns, volumes=volumes, cash_return=cash)

    values = []
    for i, m in enumerate((market, perturbed)):
        res = tune(
            spec,
            m,
            trials=3,
            train=TRAIN,
            test=TEST,
            storage=str(tmp_path / f"s{i}.journal"),
            seed=3,
            evaluate=False,
            progress=False,
        )
        values.append(res.trials[["number", "value", "param_gamma_risk"]])
    pd.testing.assert_frame_equal(values[0], values[1])
    # and the workers' data really ends with the training window
    job = _job(spec, market.slice(end=w.train_end), w, prune=True, sub_periods=3)
    assert TrialRunner(job).job.market.calendar[-1] == w.train_end


# -------------------------------------------------------------------- windows
@pytest.mark.parametrize(
    ("train", "test", "purge", "message"),
    [
        (("2017-04-13", "2018-01-31"), TEST, None, "overlaps the test window"),
        (("2017-04-13", "2017-11-30"), TEST, None, "periods apart, but the purge is"),
        (("2017-04-13", "2017-08-31"), TEST, "100d", "periods apart, but the purge is 100"),
        (TRAIN, TEST, 10, "shorter than the longest lookback"),
        (TRAIN, ("2019-01-01", "2019-06-30"), None, "test window 2019-01-01"),
        (("2018-07-01", "2018-12-31"), TEST, None, "starts after the test window ends"),
        (("2017-02-01", "2017-08-31"), TEST, None, "earliest training start"),
        (("2017-08-20", "2017-08-31"), TEST, None, "at least 20 are needed"),
        (TRAIN, TEST, "ten days", "cannot read purge"),
    ],
)
def test_bad_windows_are_rejected(market, train, test, purge, message):
    with pytest.raises(TuningError, match=message):
        resolve_windows(tiny_spec(), market, train=train, test=test, purge=purge)


def test_window_defaults_follow_the_purge(market):
    spec = tiny_spec()
    w = resolve_windows(spec, market, test=TEST)
    cal = market.calendar
    assert w.purge == w.lookback == 61
    assert w.gap == w.purge  # the training window ends exactly one purge before the test
    assert cal.get_loc(w.test_start) - cal.get_loc(w.train_end) - 1 == 61
    assert cal.get_loc(w.train_start) == w.lookback  # as early as the history allows
    # a tuned planning horizon lengthens the lookback
    mpo = parse_spec(
        spec_dict(
            "mpo",
            tuning={"params": {"planning_horizon": {"low": 1, "high": 8, "log": False}}},
        )
    )
    assert resolve_windows(mpo, market, test=TEST).lookback > w.lookback


def test_parse_purge():
    assert parse_purge("600d") == parse_purge("600") == parse_purge(600) == 600
    assert parse_purge(None) is None
    with pytest.raises(TuningError, match="600d"):
        parse_purge("3m")


# ------------------------------------------------------------------ bad specs
@pytest.mark.parametrize(
    ("tuning", "message"),
    [
        ({"params": {"gama_risk": {"low": 1, "high": 2}}}, "unknown tuning parameter 'gama_risk'"),
        ({"params": {"gamma_risk": {"low": 10, "high": 1}}}, "empty or inverted"),
        ({"params": {"gamma_trade": {"low": -1, "high": 1, "log": False}}}, "must be >= 0"),
        ({"params": {"gamma_trade": {"low": 0, "high": 1}}}, "log-uniform range needs low > 0"),
        ({"params": {}}, "empty"),
        ({"objective": "sortino"}, "tuning.objective"),
        (
            {"params": {"planning_horizon": {"low": 1, "high": 3}}},
            "needs kind='mpo'|not tunable for kind='spo'",
        ),
        ({"trials": 0}, "tuning.trials"),
    ],
)
def test_bad_search_space_is_a_spec_error(tuning, message):
    with pytest.raises(SpecError, match=message):
        parse_spec(spec_dict("spo", tuning=tuning))


def test_bad_arguments(market, tmp_path):
    spec = tiny_spec()
    kw = {"train": TRAIN, "test": TEST, "progress": False, "storage": _journal(tmp_path)}
    with pytest.raises(TuningError, match="no parameters to tune; kinds with tunable parameters: spo, mpo"):
        tune(parse_spec(spec_dict("hold")), market, **kw)
    with pytest.raises(TuningError, match="unknown objective 'sortino'"):
        tune(spec, market, objective="sortino", **kw)
    with pytest.raises(TuningError, match="workers must be >= 1"):
        tune(spec, market, workers=0, **kw)
    with pytest.raises(TuningError, match="trials must be >= 1"):
        tune(spec, market, trials=0, **kw)
    with pytest.raises(TuningError, match="SQLite storage .* one worker"):
        tune(spec, market, workers=2, **{**kw, "storage": f"sqlite:///{tmp_path}/s.db"})


def test_unreachable_storage_url_is_named_without_its_password():
    with pytest.raises(TuningError, match="cannot reach storage") as err:
        open_storage("postgresql://mpo:secret@127.0.0.1:1/mpo")
    assert "secret" not in str(err.value) and "mpo:***@127.0.0.1:1" in str(err.value)
    with pytest.raises(TuningError, match="cannot open the journal storage"):
        open_storage("/proc/no/such/dir/studies.journal")


def test_resuming_with_other_settings_is_refused(market, tmp_path):
    spec = tiny_spec()
    kw = {"test": TEST, "storage": _journal(tmp_path), "evaluate": False, "progress": False}
    tune(spec, market, trials=1, train=TRAIN, study_name="s", **kw)
    with pytest.raises(TuningError, match="different configuration.*windows"):
        tune(spec, market, trials=2, train=("2017-04-20", "2017-08-31"), study_name="s", **kw)


# ------------------------------------------------------------------- failures
def test_failed_trials_are_recorded_with_their_reason(market, tmp_path):
    """min_weight 0.2 on 8 assets with leverage 1 is infeasible: every trial fails, the study
    records why and stops, and tune says so instead of crashing."""
    spec = parse_spec(
        spec_dict("spo", constraints={"min_weight": 0.2, "max_weight": 0.3}, tuning={"trials": 2})
    )
    with pytest.raises(TuningError, match="no completed trial; trials failed, e.g.: infeasible"):
        tune(spec, market, train=TRAIN, test=TEST, storage=_journal(tmp_path), progress=False)
    study = optuna.load_study(study_name="spo-sharpe", storage=open_storage(_journal(tmp_path)))
    failed = study.get_trials(states=(TrialState.FAIL,))
    assert len(failed) == 5  # stops after max(trials, 5) failures
    assert all("infeasible" in t.user_attrs["fail_reason"] for t in failed)


def test_undefined_objective_fails_the_trial(market):
    """A policy that never leaves cash has no excess-return variance: its Sharpe is undefined
    and the trial fails with that reason instead of returning a meaningless number."""
    spec = parse_spec(spec_dict("spo", backtest={"initial": "cash"}, tuning={"prune": False}))
    w = resolve_windows(spec, market, train=TRAIN, test=TEST)
    job = _job(spec, market.slice(end=w.train_end), w, prune=False, sub_periods=1)
    runner = TrialRunner(job)
    with pytest.raises(TrialFailure, match="undefined"):
        runner.evaluate({"gamma_risk": 1.0, "gamma_trade": 1e4})
    value, attrs = runner.evaluate({"gamma_risk": 1.0, "gamma_trade": 1.0})
    assert np.isfinite(value) and attrs["annual_volatility"] > 0


# ------------------------------------------------------- resume after kill -9
def _write_kill_spec(tmp_path) -> Path:
    spec = tmp_path / "kill.toml"
    spec.write_text(
        """
name = "spo"
kind = "spo"
[data]
source = "sp20"
tickers = ["AAPL", "JNJ", "JPM", "KO", "MSFT", "PG"]
adv = 1e8
start = "2017-01-01"
end = "2018-06-30"
[forecast]
lookback = 60
[risk]
lookback = 60
[constraints]
max_weight = 0.4
[tuning]
train_start = "2017-04-13"
train_end = "2017-08-31"
test_start = "2017-12-14"
test_end = "2018-03-29"
prune = false
"""
    )
    return spec


def test_study_killed_mid_way_resumes_without_losing_trials(tmp_path):
    spec_path = _write_kill_spec(tmp_path)
    storage = str(tmp_path / "kill.journal")
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "mpo",
        "tune",
        str(spec_path),
        "--trials",
        "8",
        "--storage",
        storage,
        "--study",
        "k",
        "--out",
        str(tmp_path / "runs"),
        "--no-progress",
    ]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    finished_before: dict[int, float] = {}
    try:
        while time.monotonic() < deadline:
            time.sleep(0.3)
            if proc.poll() is not None:
                pytest.fail(f"tune exited before the kill: {proc.stderr.read().decode()[-2000:]}")
            if not Path(storage).exists():
                continue
            try:
                study = optuna.load_study(study_name="k", storage=open_storage(storage))
            except KeyError:
                continue
            done = study.get_trials(states=(TrialState.COMPLETE,))
            running = study.get_trials(states=(TrialState.RUNNING,))
            if len(done) >= 2 and running and running[0].params:
                finished_before = {t.number: t.value for t in done}
                os.kill(proc.pid, signal.SIGKILL)  # a real kill -9 of the worker process
                break
        else:
            pytest.fail("the study did not reach 2 finished trials in time")
    finally:
        proc.kill()
        proc.wait()
    study = optuna.load_study(study_name="k", storage=open_storage(storage))
    (orphan,) = study.get_trials(states=(TrialState.RUNNING,))  # left behind by the kill

    # resume: the same command
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "out of sample" in proc.stdout

    study = optuna.load_study(study_name="k", storage=open_storage(storage))
    trials = study.get_trials()
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) >= 8
    by_number = {t.number: t for t in trials}
    for number, value in finished_before.items():  # nothing finished was lost or rerun
        assert by_number[number].state == TrialState.COMPLETE
        assert by_number[number].value == value
    dead = by_number[orphan.number]
    assert dead.state == TrialState.FAIL and "died" in dead.user_attrs["fail_reason"]
    (retry,) = [t for t in trials if t.user_attrs.get("retry_of") == orphan.number]
    assert retry.state == TrialState.COMPLETE and retry.params == orphan.params
    assert not study.get_trials(states=(TrialState.RUNNING,))


# ---------------------------------------------------------------- two workers
def test_two_worker_processes_share_one_journal_study(market, tmp_path):
    spec = tiny_spec(prune=False)
    res = tune(
        spec,
        market,
        trials=6,
        train=TRAIN,
        test=TEST,
        storage=_journal(tmp_path),
        workers=2,
        evaluate=False,
        progress=False,
    )
    done = res.trials[res.trials["state"] == "COMPLETE"]
    assert len(done) >= 6
    assert done["worker"].nunique() == 2  # two processes did the work
    assert os.getpid() not in {int(w.rsplit(":", 1)[1]) for w in done["worker"]}
    params = done[["param_gamma_risk", "param_gamma_trade"]]
    assert not params.duplicated().any()  # workers do not replay each other's random points


@pytest.mark.skipif(
    not os.environ.get("MPO_TEST_POSTGRES_URL"),
    reason="set MPO_TEST_POSTGRES_URL (as .ci/run does) to test a PostgreSQL storage",
)
def test_postgresql_storage_with_two_workers(market, tmp_path):
    url = os.environ["MPO_TEST_POSTGRES_URL"]
    name = f"pg-{os.getpid()}-{time.time_ns()}"
    res = tune(
        tiny_spec(prune=False),
        market,
        trials=4,
        train=TRAIN,
        test=TEST,
        storage=url,
        study_name=name,
        workers=2,
        evaluate=False,
        progress=False,
    )
    assert (res.trials["state"] == "COMPLETE").sum() >= 4
    assert res.trials["worker"].nunique() == 2
    optuna.delete_study(study_name=name, storage=url)


# ------------------------------------------------------------------------ CLI
def test_cli_tune_prints_the_out_of_sample_table(tmp_path):
    from typer.testing import CliRunner

    from mpo.cli import app

    spec_path = _write_kill_spec(tmp_path)
    result = CliRunner().invoke(
        app,
        [
            "tune",
            str(spec_path),
            "--trials",
            "3",
            "--out",
            str(tmp_path / "runs"),
            "--no-progress",
            "--seed",
            "2",
        ],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    out = result.output
    assert "deflated Sharpe ratio" in out and "optuna-dashboard" in out
    assert re.search(r"purge \d+ periods \(>= 61; longest lookback 61\)", out), out
    for name in ("hold", "equal_weight", "spo-untuned", "spo-tuned"):
        assert f"\n{name} " in out, out
    assert (tmp_path / "runs" / "studies.journal").exists()
    assert json.loads((tmp_path / "kill.tuned.json").read_text())["params"]
    (run_dir,) = (tmp_path / "runs").glob("*-tune-spo")
    assert (run_dir / "risk_return.png").exists()
    assert "<table" in (run_dir / "report.html").read_text()

    # `mpo compare --tuned` picks the tuned parameters up from <spec>.tuned.json
    tuned = json.loads((tmp_path / "kill.tuned.json").read_text())["params"]
    result = CliRunner().invoke(
        app,
        ["compare", str(spec_path), "--tuned", "--backtest-start", "2018-03-01", "--no-progress",
         "--no-report", "--out", str(tmp_path / "cmp")],
        catch_exceptions=False,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "tuned parameters from" in result.output and "\nspo-tuned " in result.output
    (cmp_dir,) = (tmp_path / "cmp").iterdir()
    used = json.loads((cmp_dir / "run.json").read_text())["specs"]["spo-tuned"]["objective"]
    assert used["gamma_risk"] == tuned["gamma_risk"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--purge", "5"], "shorter than the longest lookback"),
        (["--train", "2017-04-13", "2018-01-10"], "overlaps the test window"),
        (["--storage", "postgresql://u:pw@127.0.0.1:1/db"], "cannot reach storage"),
        (["--objective", "calmar"], "unknown objective 'calmar'"),
    ],
)
def test_cli_tune_bad_input_exits_with_a_specific_message(tmp_path, args, message):
    from typer.testing import CliRunner

    from mpo.cli import app

    spec_path = _write_kill_spec(tmp_path)
    result = CliRunner().invoke(
        app, ["tune", str(spec_path), "--out", str(tmp_path), "--no-progress", *args]
    )
    assert result.exit_code == 2, result.output
    assert message in result.output


def test_sqlite_storage_single_worker_and_resume(market, tmp_path):
    url = f"sqlite:///{tmp_path}/studies.db"
    kw = {"train": TRAIN, "test": TEST, "storage": url, "evaluate": False, "progress": False}
    first = tune(tiny_spec(), market, trials=2, **kw)
    again = tune(tiny_spec(), market, trials=3, **kw)  # resumes: runs one more trial only
    assert (first.trials["state"] == "COMPLETE").sum() == 2
    assert (again.trials["state"] == "COMPLETE").sum() == 3
    pd.testing.assert_series_equal(
        first.trials["value"], again.trials["value"].iloc[:2], check_names=False
    )


# ---------------------------------------------------------- objective registry
def test_objectives_are_registered_and_unknown_names_list_them(market, tmp_path):
    from mpo.tuning import get_objective

    assert {"sharpe", "return_at_risk", "information_ratio"} <= set(OBJECTIVES.names())
    with pytest.raises(TuningError, match="unknown objective 'sharp'") as err:
        get_objective("sharp")
    msg = str(err.value)
    assert "sharpe, return_at_risk, information_ratio" in msg and "Did you mean 'sharpe'" in msg
    assert get_objective("information_ratio").needs_hold
    assert not get_objective("sharpe").needs_hold and not get_objective("sharpe").constrained


def test_builtin_objectives_match_their_formulas():
    """Each objective against its closed form, on fixed returns (tolerance 1e-12)."""
    from mpo.tuning import RISK_CAP_PENALTY, get_objective

    rng = np.random.default_rng(0)
    r, cash, hold = rng.normal(5e-4, 0.01, 250), np.full(250, 1e-4), rng.normal(3e-4, 0.01, 250)
    tuning = tiny_spec(risk_cap=0.1).tuning
    ppy = 252.0
    got = {k: get_objective(k).value(r, cash, hold, ppy, tuning) for k in OBJECTIVES.names()}
    np.testing.assert_allclose(got["sharpe"], sharpe_ratio(r - cash, ppy), rtol=1e-12)
    np.testing.assert_allclose(got["information_ratio"], sharpe_ratio(r - hold, ppy), rtol=1e-12)
    vol = np.std(r, ddof=1) * np.sqrt(ppy)
    assert vol > 0.1  # the cap binds
    expected = np.mean(r - cash) * ppy - RISK_CAP_PENALTY * (vol - 0.1)
    np.testing.assert_allclose(got["return_at_risk"], expected, rtol=1e-12)
    # returns without variance: undefined, whatever the objective
    assert all(np.isnan(get_objective(k).value(cash, cash, cash, ppy, tuning)) for k in got)
    rar = get_objective("return_at_risk")
    assert rar.constrained and rar.settings(tuning) == {"risk_cap": 0.1}
    assert rar.feasible({"annual_volatility": 0.09}, tuning)
    assert not rar.feasible({"annual_volatility": 0.11}, tuning)
    assert not rar.feasible({}, tuning)  # a trial without metrics is not feasible


@pytest.fixture
def mean_excess_objective():
    """A custom objective registered for one test: annualised mean excess return."""

    class MeanExcess(TuningObjective):
        def score(self, returns, cash, hold, ppy, tuning):
            return float(np.mean(returns - cash) * ppy)

    OBJECTIVES.register("mean_excess_test", MeanExcess)
    yield MeanExcess
    OBJECTIVES.unregister("mean_excess_test")


def test_a_registered_objective_drives_tune(market, tmp_path, mean_excess_objective):
    spec = tiny_spec(prune=False)
    res = tune(
        spec,
        market,
        trials=2,
        train=TRAIN,
        test=TEST,
        storage=_journal(tmp_path),
        objective="mean_excess_test",
        evaluate=False,
        progress=False,
    )
    assert res.study_name == "spo-mean_excess_test" and res.objective == "mean_excess_test"
    assert res.config["objective"] == "mean_excess_test" and res.config["risk_cap"] is None
    checked = spec.with_updates(objective=dict(res.best_params))
    run = run_backtests(
        [checked], market, start=TRAIN[0], end=TRAIN[1], include_hold=False, progress=False
    )
    r = run.results[checked.name]
    ppy = periods_per_year(r.returns.index)
    expected = float(np.mean((r.returns - r.cash_returns).to_numpy()) * ppy)
    assert res.best_value == pytest.approx(expected, abs=1e-10)


def test_a_function_objective_gets_hold_returns_when_it_asks(market):
    from mpo.tuning import get_objective

    seen = []

    def beat_hold(returns, cash, hold, ppy, tuning):
        seen.append(hold)
        return float(np.mean(returns - hold) * ppy)

    beat_hold.needs_hold = True
    OBJECTIVES.register("beat_hold_test", beat_hold)
    try:
        assert get_objective("beat_hold_test").needs_hold
        spec = tiny_spec(prune=False)
        w = resolve_windows(spec, market, train=TRAIN, test=TEST)
        runner = TrialRunner(_job(spec, market.slice(end=w.train_end), w, "beat_hold_test"))
        value, _ = runner.evaluate({"gamma_risk": 1.0, "gamma_trade": 1.0})
    finally:
        OBJECTIVES.unregister("beat_hold_test")
    hold = runner.hold_returns()
    assert seen[-1] is not None and len(seen[-1]) == len(hold)
    np.testing.assert_allclose(seen[-1], hold.to_numpy(), rtol=0, atol=0)
    assert np.isfinite(value)


# ------------------------------------------------- one loop, enumerated costs
def test_trial_attrs_name_every_cost_term_of_the_backtest(market, monkeypatch):
    """Trials run through mpo.backtest.simulate, and every column of its costs frame (here
    with an extra term the simulator does not know) becomes a ``<term>_cost`` attribute."""
    import mpo.tuning.trial as trial_module

    real = trial_module.simulate
    calls = []

    def simulate_with_extra_term(policy, **kw):
        res = real(policy, **kw)
        res.costs["made_up"] = 0.5 * res.costs["spread"]
        calls.append(res)
        return res

    monkeypatch.setattr(trial_module, "simulate", simulate_with_extra_term)
    spec = tiny_spec(prune=False)
    w = resolve_windows(spec, market, train=TRAIN, test=TEST)
    runner = TrialRunner(_job(spec, market.slice(end=w.train_end), w))
    _, attrs = runner.evaluate({"gamma_risk": 1.0, "gamma_trade": 1.0})
    (res,) = calls
    assert {"spread", "impact", "holding", "made_up"} <= set(res.costs.columns)
    for col in res.costs.columns:
        frac = (res.costs[col] / res.value.reindex(res.returns.index)).mean() * runner.ppy
        assert attrs[f"{col}_cost"] == pytest.approx(frac, rel=1e-12, abs=1e-15), col
    assert attrs["made_up_cost"] == pytest.approx(0.5 * attrs["spread_cost"], rel=1e-12)
    assert attrs["spread_cost"] > 0


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        ("InfeasibleError", "infeasible: policy 'spo' at"),
        ("SolverError", "solver failure: policy 'spo' at"),
        ("ConvergenceError", "ConvergenceError: "),
    ],
)
def test_simulate_errors_become_trial_failures(market, monkeypatch, error, reason):
    import mpo.errors
    import mpo.tuning.trial as trial_module

    def failing(policy, **kw):
        raise getattr(mpo.errors, error)("policy 'spo' at 2017-05-01: no luck.")

    monkeypatch.setattr(trial_module, "simulate", failing)
    spec = tiny_spec(prune=False)
    w = resolve_windows(spec, market, train=TRAIN, test=TEST)
    runner = TrialRunner(_job(spec, market.slice(end=w.train_end), w))
    with pytest.raises(TrialFailure, match=re.escape(reason)):
        runner.evaluate({"gamma_risk": 1.0, "gamma_trade": 1.0})


def test_tuning_package_has_small_modules_and_no_backtest_loop():
    package = ROOT / "mpo" / "tuning"
    assert not (ROOT / "mpo" / "tuning.py").exists()
    modules = sorted(package.glob("*.py"))
    assert len(modules) >= 7
    for path in modules:
        source = path.read_text()
        n = len(source.splitlines())
        assert n < 600, f"{path.name} has {n} lines"
        assert ".backtest(" not in source, f"{path.name} runs the simulator itself"
        # objectives are dispatched through the registry, not compared by name
        assert not re.search(r"[=!]=\s*\"(sharpe|return_at_risk|information_ratio)\"", source)

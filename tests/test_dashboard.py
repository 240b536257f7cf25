"""``mpo dashboard``: run folders of every kind found, read and drawn; broken ones are one message.

The backtest (compare), tuning and training folders are made by the real commands on
small windows (module fixture, about 20 s together). The walk-forward folder is hand-made
in the exact layout ``mpo.research.walkforward`` writes, from the compare run's real
series: a real ``mpo walkforward``, even of Hold alone, takes minutes on two shared cores
(its Dask cluster); the slow test at the end runs one. Pages are checked headless with
Streamlit's ``AppTest`` (chart data decoded from the Vega-Lite elements), and once in a
real headless Chromium against ``streamlit run`` when one is installed.
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import typer
from cli_helpers import subcommand_app
from typer.testing import CliRunner

from mpo.dashboard import frames
from mpo.dashboard.cli import APP, register, require_streamlit, streamlit_command
from mpo.dashboard.errors import DashboardError, RunFolderError
from mpo.dashboard.runs import (
    discover_runs,
    load_backtest,
    load_run,
    load_train,
    load_tune,
    load_walkforward,
    read_policy,
    walkforward_series,
)
from mpo.io import write_json

pytest.importorskip("streamlit", reason="the dashboard extra: pip install -e '.[dashboard]'")
from streamlit.testing.v1 import AppTest

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()

TUNE_SPEC = """
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
train_start = "2017-06-01"
train_end = "2017-08-31"
test_start = "2017-12-14"
test_end = "2018-01-31"
prune = false
"""

TRAIN_SPEC = """
name = "tiny"
[data]
source = "synthetic"
n_assets = 5
n_periods = 280
predictability = 0.5
[features]
window = 5
[split]
val = 0.2
test = 0.2
[encoder]
hidden = 8
rank = 2
mu_scale = 0.01
[qp]
delta = 0.2
w_max = 0.5
[train]
epochs = 2
batch_size = 32
max_batches = 2
[baselines]
two_stage_epochs = 1
direct_epochs = 1
lw_lookback = 60
"""

COMPARED = ["hold", "equal_weight", "spo"]


def _mpo(*args: str) -> None:
    from mpo.cli import app

    result = runner.invoke(app, [*args, "--no-progress"], catch_exceptions=False)
    assert result.exit_code == 0, result.output


def make_walkforward(root: Path, backtest: Path, universes=("u00", "u01")) -> Path:
    """A walk-forward run folder in mpo.research's layout (summary.json, folds.csv,
    universes/<u>/<policy>/*.parquet), its series copied from the backtest run ``backtest``."""
    meta = json.loads((backtest / "run.json").read_text())
    index = pd.read_parquet(backtest / "hold" / "returns.parquet").index
    cut = len(index) // 2
    folds = [
        {"fold": k, "train_start": "2021-01-04", "train_end": str(index[a - 5].date()),
         "purge": 5, "test_start": str(index[a].date()), "test_end": str(index[b - 1].date()),
         "train_periods": 400, "test_periods": b - a}
        for k, (a, b) in enumerate([(5, cut), (cut, len(index))])
    ]  # fmt: skip
    info, rows = {}, []
    for i, u in enumerate(universes):
        for policy in COMPARED:
            shutil.copytree(backtest / policy, root / "universes" / u / policy)
        metrics = {
            p: {**m, "sharpe": m["sharpe"] + i, "dsr": 0.4} for p, m in meta["metrics"].items()
        }
        info[u] = {"path": f"universes/{u}", "tickers": ["AAPL", "KO"], "policies": metrics}
        for policy in COMPARED:
            for f in folds:
                tuned = policy == "spo"
                rows.append({"universe": u, "spec": policy, **f, "fit": "tuned" if tuned else "none",
                             "n_trials": 2 if tuned else 0,
                             "params": json.dumps({"gamma_risk": 3.0} if tuned else {}),
                             "train_sharpe": 0.5 if tuned else np.nan, "val_score": np.nan,
                             "test_sharpe": 0.1 * f["fold"] + i,
                             "param_gamma_risk": 3.0 if tuned else np.nan})  # fmt: skip
    aggregate = {
        "policies": {p: {"mean_sharpe": 0.5, "sd_sharpe": 0.1, "win_rate_vs_hold": 0.5}
                     for p in COMPARED},
        "n_universes": len(universes),
    }  # fmt: skip
    write_json({"kind": "walkforward", "train": "1y", "test": "3m"}, root / "config.json")
    pd.DataFrame(rows).to_csv(root / "folds.csv", index=False)
    write_json(
        {"kind": "walkforward", "config": {"train": "1y", "test": "3m", "purge": 5},
         "folds": folds, "universes": info, "aggregate": aggregate,
         "trials": {"n": 8}, "failures": {}},
        root / "summary.json",
    )  # fmt: skip
    return root


def _make_runs(tmp: Path) -> None:
    root = tmp / "runs"
    (tmp / "tune.toml").write_text(TUNE_SPEC)
    (tmp / "tiny.toml").write_text(TRAIN_SPEC)
    policies = ROOT / "policies"
    _mpo("compare", str(policies / "equal_weight.toml"), str(policies / "spo.toml"),
         "--backtest-start", "2022-11-15", "--no-report", "--out", str(root))  # fmt: skip
    _mpo("tune", str(tmp / "tune.toml"), "--trials", "2", "--out", str(root))
    _mpo("train", str(tmp / "tiny.toml"), "--out", str(root))
    (backtest,) = root.glob("*-equal_weight-spo")
    make_walkforward(root / "walkforward-test", backtest)
    (tmp / "done").touch()


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """One real run folder per command (and the hand-made walk-forward), under one root.

    Under pytest-xdist the workers share one set (made by the first, behind a file lock,
    in the session's temporary folder), so the commands run once per session.
    """
    if os.environ.get("PYTEST_XDIST_WORKER"):
        from filelock import FileLock  # a torch dependency

        tmp = tmp_path_factory.getbasetemp().parent / "dashboard-runs"
        with FileLock(f"{tmp}.lock"):
            if not (tmp / "done").is_file():
                shutil.rmtree(tmp, ignore_errors=True)
                tmp.mkdir()
                _make_runs(tmp)
    else:
        tmp = tmp_path_factory.mktemp("dashboard")
        _make_runs(tmp)
    root = tmp / "runs"
    (backtest,) = root.glob("*-equal_weight-spo")
    (tune,) = root.glob("*-tune-spo")
    (train,) = root.glob("*-train-tiny")
    walk = root / "walkforward-test"
    return {"root": root, "backtest": backtest, "tune": tune, "train": train, "walkforward": walk}


# ---------------------------------------------------------------------------- discovery and loading
def test_every_kind_is_found_once_and_nothing_else(runs):
    found = discover_runs(runs["root"])
    assert sorted((r.kind, r.path) for r in found) == sorted(
        (kind, runs[kind]) for kind in ("backtest", "tune", "train", "walkforward")
    )  # a tuning run's test/ and a walk-forward's universes/ are parts of them, not runs
    assert all(r.problem is None for r in found)
    (single,) = discover_runs(runs["backtest"])  # one run folder passed as the runs folder
    assert single.kind == "backtest" and single.label == runs["backtest"].name


def test_backtest_series_match_the_recorded_metrics(runs):
    view = load_backtest(runs["backtest"])
    assert list(view.metrics.index) == COMPARED and list(view.policies) == COMPARED
    growth = frames.equity(view.policies)
    dd = frames.drawdowns(view.policies)
    assert (dd <= 1e-15).all().all()
    # the drawdowns are those of mpo.metrics.max_drawdown that run.json records
    np.testing.assert_allclose(-dd.min(), view.metrics["max_drawdown"], rtol=1e-10)
    spo = view.policies["spo"].returns
    np.testing.assert_allclose(
        growth["spo"].to_numpy()[:-1] * spo["value"].iloc[0],
        spo["value"].to_numpy()[1:],
        rtol=1e-10,
    )  # growth of 1 follows the simulator's portfolio value
    w = frames.weights(view.policies["spo"], top=3)
    assert set(w["asset"]) <= set(view.policies["spo"].weights.columns) | {"other"}
    assert w.groupby("date")["weight"].sum().between(0.999, 1.001).all()  # weights incl. cash
    costs = frames.cumulative_costs(view.policies["spo"])
    last = costs.groupby("term")["dollars"].last()
    np.testing.assert_allclose(last, view.policies["spo"].costs.sum()[last.index], rtol=1e-12)
    yearly = frames.annual_costs(view.metrics)
    terms = {c.removesuffix("_cost") for c in view.metrics.columns if c.endswith("_cost")}
    assert set(yearly["term"]) == terms and {"spread", "impact"} <= terms  # every term named
    assert yearly.query("policy == 'hold'")["cost"].eq(0).all()


def test_tune_train_and_walkforward_views(runs):
    tune = load_tune(runs["tune"])
    assert len(tune.trials) == 2 and tune.params == ["gamma_risk", "gamma_trade"]
    best = frames.best_so_far(tune.trials)
    assert best["best"].is_monotonic_increasing
    assert best["best"].iloc[-1] == pytest.approx(tune.summary["best_train_value"])
    assert len(frames.param_frame(tune.trials, "gamma_risk")) == 2
    assert tune.test is not None and "spo-tuned" in tune.test.policies
    assert {"history", "slices"} <= set(tune.plots)

    train = load_train(runs["train"])
    table = frames.train_table(train.metrics)
    assert list(table.index) == ["dmpo", "two_stage", "direct", "equal_weight"]
    assert {"val sharpe", "test sharpe", "test annual_turnover"} <= set(table.columns)
    assert table.loc["dmpo", "test sharpe"] == train.results["metrics"]["dmpo"]["test"]["sharpe"]
    assert set(train.history["model"]) == {"dmpo", "two_stage", "direct"}
    assert train.history.query("model == 'dmpo'")["epoch"].tolist() == [0, 1]

    walk = load_walkforward(runs["walkforward"])
    assert list(walk.universes) == ["u00", "u01"] and len(walk.windows) == 2
    assert list(walk.aggregate.index) == COMPARED and (walk.aggregate["n_universes"] == 2).all()
    series, missing = walkforward_series(walk, "u01")
    assert list(series) == COMPARED and not missing
    assert frames.fold_sharpes(walk.folds, "u01")["test_sharpe"].min() == pytest.approx(1.0)


# ---------------------------------------------------------------------------- broken folders
@pytest.fixture
def broken(runs, tmp_path) -> Path:
    """A runs folder of broken and unfinished runs, and one good run missing a policy."""
    root = tmp_path / "broken"
    (root / "20261203-000000-crashed").mkdir(parents=True)
    bad = shutil.copytree(runs["backtest"], root / "bad-json")
    (bad / "run.json").write_text('{"metrics": {"hold": ')  # cut short
    part = shutil.copytree(runs["backtest"], root / "partial")
    shutil.rmtree(part / "spo")
    (part / "equal_weight" / "returns.parquet").write_bytes(b"not parquet")
    tune = shutil.copytree(runs["tune"], root / "tune-no-trials")
    (tune / "trials.csv").unlink()
    train = root / "train-interrupted"
    train.mkdir()
    (train / "dmpo-progress.pt").write_bytes(b"")
    running = shutil.copytree(runs["backtest"], root / "backtest-running")
    (running / "run.json").unlink()  # the policies' series are written first, run.json last
    return root


def test_broken_folders_are_listed_with_the_reason(broken):
    found = {r.label: r for r in discover_runs(broken)}
    assert "holds none of summary.json" in found["20261203-000000-crashed"].problem
    assert "unfinished training run" in found["train-interrupted"].problem
    assert "unfinished backtest" in found["backtest-running"].problem
    assert not [label for label in found if "/" in label]  # no policy folder listed as a run
    for label, match in (
        ("bad-json", "run.json' cannot be read"),
        ("tune-no-trials", "trials.csv' is missing"),
        ("20261203-000000-crashed", "holds none of"),
    ):
        with pytest.raises(RunFolderError, match=match):
            load_run(found[label])
    view = load_run(found["partial"])  # what can be read is shown; the rest is named
    assert list(view.policies) == ["hold"]
    assert "no folder" in view.missing["spo"] and "cannot be read" in view.missing["equal_weight"]
    with pytest.raises(RunFolderError, match="does not exist"):
        discover_runs(broken / "nope")
    with pytest.raises(RunFolderError, match="returns.parquet' is missing"):
        read_policy(broken / "20261203-000000-crashed")


# ---------------------------------------------------------------------------- the app, headless
def _app(root: Path | str) -> AppTest:
    at = AppTest.from_file(str(APP), default_timeout=60)
    at.session_state["runs_dir"] = str(root)
    return at.run()


def _charts(at: AppTest) -> dict[str, pd.DataFrame]:
    """Chart title -> the data it draws (the Vega-Lite datasets, decoded from Arrow)."""
    import pyarrow as pa

    out = {}
    for element in at.get("vega_lite_chart"):
        spec = json.loads(element.proto.spec)
        data = [pa.ipc.open_stream(d.data.data).read_pandas() for d in element.proto.datasets]
        out[spec["title"]] = max(data, key=len)  # the series, not the fold-boundary rules
    return out


def _select_run(at: AppTest, path: Path) -> AppTest:
    (title,) = [o for o in at.sidebar.selectbox(key="run").options if o.endswith(path.name)]
    return at.sidebar.selectbox(key="run").set_value(title).run()


def _ok(at: AppTest) -> None:
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]


EXPECTED_CHARTS = {
    "backtest": ["Equity curves (growth of 1, net of costs)", "Drawdowns from the running peak",
                 "Post-trade weights: hold", "Cumulative costs: hold ($)", "Turnover per period"],
    "tune": ["Trial values and best so far", "Objective against gamma_risk",
             "gamma_risk and gamma_trade (colour: objective)",
             "Trials: training-window risk and return", "Equity curves (growth of 1, net of costs)"],
    "train": ["Training loss per epoch", "Validation score per epoch"],
    "walkforward": ["Test Sharpe per fold", "Tuned gamma_risk per fold",
                    "Equity curves (growth of 1, net of costs)"],
}  # fmt: skip


@pytest.fixture(scope="module")
def app(runs) -> AppTest:
    return _app(runs["root"])


@pytest.mark.parametrize("kind", list(EXPECTED_CHARTS))
def test_every_kind_renders(app, runs, kind):
    at = _select_run(app, runs[kind])
    _ok(at)
    assert at.header[0].value == f"{kind} · {runs[kind].name}"
    charts = _charts(at)
    assert set(EXPECTED_CHARTS[kind]) <= set(charts), list(charts)
    assert all(len(frame) for frame in charts.values()), {k: len(v) for k, v in charts.items()}
    assert at.dataframe, "no table"
    if kind == "tune":
        assert {"spo-tuned", "spo-untuned"} <= set(
            charts["Drawdowns from the running peak"]["policy"]
        )
    if kind == "train":
        assert set(at.dataframe[0].value.index) == {"dmpo", "two_stage", "direct", "equal_weight"}


def test_policy_and_weight_selectors_change_the_charts(app, runs):
    at = _select_run(app, runs["backtest"])
    key = runs["backtest"].name
    assert set(_charts(at)["Equity curves (growth of 1, net of costs)"]["policy"]) == set(COMPARED)
    at.multiselect(key=f"policies@{key}").set_value(["spo", "hold"]).run()
    _ok(at)
    charts = _charts(at)
    assert set(charts["Equity curves (growth of 1, net of costs)"]["policy"]) == {"spo", "hold"}
    assert "showing spo, hold" in [c.value for c in at.caption]
    at.selectbox(key=f"weights@{key}").set_value("spo").run()
    weights = _charts(at)["Post-trade weights: spo"]
    spo = load_backtest(runs["backtest"]).policies["spo"].weights
    assert set(weights["asset"]) <= set(spo.columns) | {"other"}
    at.multiselect(key=f"policies@{key}").set_value([]).run()
    _ok(at)
    assert "Choose at least one of" in at.info[0].value and not _charts(at)


def test_tune_train_and_walkforward_selectors(app, runs):
    at = _select_run(app, runs["tune"])
    at.selectbox(key=f"param@{runs['tune'].name}").set_value("gamma_trade").run()
    charts = _charts(at)
    points = charts["Objective against gamma_trade"]
    assert "gamma_trade and gamma_risk (colour: objective)" in charts
    trials = pd.read_csv(runs["tune"] / "trials.csv")
    np.testing.assert_allclose(sorted(points["gamma_trade"]), sorted(trials["param_gamma_trade"]))

    at = _select_run(at, runs["train"])
    at.multiselect(key=f"models@{runs['train'].name}").set_value(["direct"]).run()
    assert set(_charts(at)["Training loss per epoch"]["model"]) == {"direct"}

    at = _select_run(at, runs["walkforward"])
    key = runs["walkforward"].name
    assert set(_charts(at)["Test Sharpe per fold"]["test_sharpe"]) == {0.0, 0.1}
    at.selectbox(key=f"universe@{key}").set_value("u01").run()
    _ok(at)
    assert set(_charts(at)["Test Sharpe per fold"]["test_sharpe"]) == {1.0, 1.1}
    assert at.subheader[0].value == "Stitched out of sample: u01"
    at.multiselect(key=f"specs@{key}").set_value(["spo"]).run()
    folds = next(d.value for d in at.dataframe if "fold" in d.value.columns)
    assert set(folds["spec"]) == {"spo"} and set(folds["universe"]) == {"u01"}

    at.sidebar.multiselect(key="kinds").set_value(["train"]).run()
    assert at.sidebar.selectbox(key="run").options == [f"train · {runs['train'].name}"]
    at.sidebar.multiselect(key="kinds").set_value(list(EXPECTED_CHARTS)).run()  # as it was
    assert len(at.sidebar.selectbox(key="run").options) == 4


def test_broken_empty_and_missing_folders_are_one_message(broken, tmp_path):
    at = _app(broken)
    assert not at.exception
    messages = {}
    for title in at.sidebar.selectbox(key="run").options:
        at.sidebar.selectbox(key="run").set_value(title).run()
        assert not at.exception, (title, at.exception)
        messages[title.split(" · ")[1]] = [e.value for e in at.error] + [
            w.value for w in at.warning
        ]
    assert "cut short" in messages["bad-json"][0]
    assert "trials.csv' is missing" in messages["tune-no-trials"][0]
    assert "unfinished training run" in messages["train-interrupted"][0]
    assert "holds none of" in messages["20261203-000000-crashed"][0]
    assert "unfinished backtest" in messages["backtest-running"][0]
    assert any("spo left out" in m for m in messages["partial"])

    (tmp_path / "empty").mkdir()
    at = _app(tmp_path / "empty")
    assert not at.exception and "No run folders" in at.info[0].value
    at = _app(tmp_path / "nowhere")
    assert not at.exception and "does not exist" in at.error[0].value


# ---------------------------------------------------------------------------- the command
def _cli() -> typer.Typer:
    return subcommand_app(register)


def test_the_command_runs_streamlit_on_the_app_with_the_runs_folder(tmp_path, monkeypatch):
    calls = []

    class FakePopen:
        def __init__(self, cmd):
            calls.append(cmd)

        def wait(self, timeout=None):
            return 0

    monkeypatch.setattr(subprocess, "Popen", FakePopen)
    res = runner.invoke(_cli(), ["dashboard", str(tmp_path), "--port", "8765", "--headless"])
    assert res.exit_code == 0, res.output
    (cmd,) = calls
    assert cmd[:5] == [sys.executable, "-m", "streamlit", "run", str(APP)]
    assert cmd[-2:] == ["--", str(tmp_path.resolve())]
    assert cmd[cmd.index("--server.port") + 1] == "8765"
    assert cmd[cmd.index("--server.headless") + 1] == "true"
    for args, match in (
        ([str(tmp_path / "nope")], "does not exist"),
        ([str(tmp_path), "--port", "70000"], "--port must be in 1..65535"),
    ):
        res = runner.invoke(_cli(), ["dashboard", *args])
        assert res.exit_code == 2, res.output
        assert res.output.startswith("error: ") and match in res.output, res.output


def test_without_streamlit_mpo_imports_and_the_command_says_how_to_install(tmp_path, monkeypatch):
    # no module of mpo but the Streamlit script imports streamlit, at any depth
    for path in sorted((ROOT / "mpo").rglob("*.py")):
        if path == APP:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            names += [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            assert not any(n.split(".")[0] == "streamlit" for n in names), path
    monkeypatch.setitem(sys.modules, "streamlit", None)  # "not installed"
    with pytest.raises(DashboardError, match=r"pip install 'mpo\[dashboard\]'"):
        require_streamlit()
    res = runner.invoke(_cli(), ["dashboard", str(tmp_path)])
    assert res.exit_code == 2
    assert (
        res.output.startswith("error: mpo dashboard needs streamlit")
        and "mpo[dashboard]" in res.output
    )


# ---------------------------------------------------------------------------- a real browser
def _chromium() -> str | None:
    return next(
        (
            shutil.which(n)
            for n in ("chromium", "chromium-browser", "google-chrome")
            if shutil.which(n)
        ),
        None,
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(port: int, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"streamlit exited with {proc.returncode}: {proc.stderr.read().decode()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    pytest.fail(f"streamlit did not answer on port {port} within {timeout} s")


def _devtools_page(proc: subprocess.Popen, profile: Path, timeout: float = 60) -> str:
    """The websocket URL of the page of a Chromium started with ``--remote-debugging-port=0``."""
    active = profile / "DevToolsActivePort"
    deadline = time.monotonic() + timeout
    while not (active.is_file() and active.read_text().strip()):
        if time.monotonic() > deadline or proc.poll() is not None:
            pytest.fail(f"Chromium did not start its DevTools server (exit {proc.poll()})")
        time.sleep(0.2)
    port = active.read_text().split()[0]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as r:
        return next(t for t in json.loads(r.read()) if t["type"] == "page")["webSocketDebuggerUrl"]


def _render(browser: str, profile: Path, url: str, expected: tuple, timeout: float = 120) -> tuple:
    """``(innerText, outerHTML)`` of ``url`` in headless Chromium once every ``expected`` text
    is shown and the script has finished (or after ``timeout`` seconds).

    ``--dump-dom --virtual-time-budget`` does not wait for a Streamlit page: virtual time
    runs on while the page waits on its websocket, so on a busy machine the DOM is dumped
    before the script's results arrive. Polling the live page over the DevTools protocol
    (with websockets, a streamlit dependency) waits in real time.
    """
    from websockets.sync.client import connect

    proc = subprocess.Popen(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--remote-debugging-port=0", f"--user-data-dir={profile}", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        with connect(_devtools_page(proc, profile), max_size=None, open_timeout=30) as ws:
            ids = iter(range(1, 1_000_000))

            def call(method: str, **params) -> dict:
                n = next(ids)
                ws.send(json.dumps({"id": n, "method": method, "params": params}))
                while (reply := json.loads(ws.recv(timeout=30))).get("id") != n:
                    pass
                return reply.get("result", {})

            def evaluate(expression: str) -> str:
                result = call("Runtime.evaluate", expression=expression, returnByValue=True)
                return str(result.get("result", {}).get("value") or "")

            call("Page.navigate", url=url)
            state = "document.querySelector('[data-test-script-state]')?.dataset.testScriptState"
            deadline, body = time.monotonic() + timeout, ""
            while time.monotonic() < deadline:
                time.sleep(0.5)
                body = evaluate("document.body ? document.body.innerText : ''")
                shown = all(text in body for text in expected)
                if shown and evaluate(f"String({state})") == "notRunning":
                    break
            return body, evaluate("document.documentElement.outerHTML")
    finally:
        proc.kill()
        proc.wait(timeout=30)


def test_the_dashboard_renders_in_a_headless_browser(runs, tmp_path):
    """``streamlit run`` as the command starts it; Chromium renders the page's policy names."""
    browser = _chromium()
    if browser is None:
        pytest.skip("no headless Chromium (chromium, chromium-browser or google-chrome; "
                    ".ci/run installs it): the real-browser check of the dashboard is skipped")  # fmt: skip
    port = _free_port()
    cmd = streamlit_command(runs["backtest"], port=port, address="127.0.0.1", headless=True)
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _wait_healthy(port, server)
        expected = ("showing hold, equal_weight, spo", "Equity curves (growth of 1, net of costs)")
        body, dom = _render(browser, tmp_path / "chrome", f"http://127.0.0.1:{port}/", expected)
    finally:
        server.kill()
        server.wait(timeout=30)
    assert server.poll() is not None
    assert all(text in body for text in expected), body[-3000:]  # caption, the chart's title
    assert f"backtest · {runs['backtest'].name}" in body
    assert set(COMPARED) <= set(body.splitlines())  # the policy chips of the multiselect
    assert "Traceback" not in body and "cannot be shown" not in body
    assert 'data-test-script-state="notRunning"' in dom  # the script finished


# ---------------------------------------------------------------------------- a real walk-forward
@pytest.mark.slow
def test_a_real_walkforward_run_renders(tmp_path):
    """The layout :func:`make_walkforward` copies, checked against ``mpo walkforward`` itself."""
    spec = tmp_path / "hold.toml"
    spec.write_text('name = "hold"\nkind = "hold"\n[data]\nsource = "synthetic"\n'
                    'tickers = ["S00", "S01", "S02"]\n')  # fmt: skip
    out = tmp_path / "wf"
    _mpo("walkforward", str(spec), "--train", "150d", "--test", "80d", "--end", "2011-08-12",
         "--no-report", "--out", str(out))  # fmt: skip
    view = load_walkforward(out)
    series, missing = walkforward_series(view, "main")
    assert list(series) == ["hold", "equal_weight"] and not missing
    assert not series["hold"].weights.empty and not series["hold"].costs.empty
    at = _app(out)
    _ok(at)
    assert {"Test Sharpe per fold", "Equity curves (growth of 1, net of costs)"} <= set(_charts(at))

"""Bring-your-own-model tables (mpo.forecast.files): reading, look-ups, validation, cvxportfolio."""

from __future__ import annotations

import logging

import cvxportfolio as cvx
import numpy as np
import pandas as pd
import pytest

from mpo.errors import DataError, SpecError
from mpo.forecast.files import (
    FileCovariance,
    FileEstimate,
    FileFactorModel,
    FileReturnsForecast,
    read_table,
)

TICKERS = ["AAA", "BBB", "CCC", "DDD"]
FACTORS = ["mkt", "value", "size"]
DATES = pd.bdate_range("2021-01-04", periods=8, name="date")
SUFFIXES = ["csv", "parquet", "pq"]
#: CLARABEL tolerances for the backtest comparisons.
TIGHT = {"tol_gap_abs": 1e-10, "tol_gap_rel": 1e-10, "tol_feas": 1e-10}


# ---------------------------------------------------------------------- builders


def wide(seed: int = 0, dates=DATES, tickers=TICKERS, scale: float = 0.01) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        rng.normal(0.0, scale, (len(dates), len(tickers))), index=dates, columns=tickers
    )


def per_step(horizon: int = 3, seed: int = 1, dates=DATES) -> pd.DataFrame:
    """(date, tau) x ticker; value = tau + a distinct small number, so steps differ."""
    parts = {tau: wide(seed + tau, dates) + tau for tau in range(horizon)}
    frame = pd.concat(parts, names=["tau", "date"]).swaplevel().sort_index()
    return frame


def psd(rng: np.random.Generator, n: int, scale: float = 1e-4) -> np.ndarray:
    a = rng.normal(size=(n, n))
    return scale * (a @ a.T / n + 0.1 * np.eye(n))


def covariances(seed: int = 2, dates=DATES, tickers=TICKERS) -> pd.DataFrame:
    """(date, ticker) x ticker stack of PSD matrices."""
    rng = np.random.default_rng(seed)
    blocks = {
        t: pd.DataFrame(psd(rng, len(tickers)), index=tickers, columns=tickers) for t in dates
    }
    return pd.concat(blocks, names=["date", "ticker"])


def factor_frames(seed: int = 3, dates=DATES, tickers=TICKERS, factors=FACTORS):
    """(F, Sigma_F, d) as cvxportfolio takes them, time varying."""
    rng = np.random.default_rng(seed)
    k, n = len(factors), len(tickers)
    F = pd.concat(
        {t: pd.DataFrame(rng.normal(0, 1, (k, n)), index=factors, columns=tickers) for t in dates},
        names=["date", "factor"],
    )
    SF = pd.concat(
        {t: pd.DataFrame(psd(rng, k), index=factors, columns=factors) for t in dates},
        names=["date", "factor"],
    )
    d = pd.DataFrame(rng.uniform(1e-5, 4e-5, (len(dates), n)), index=dates, columns=tickers)
    return F, SF, d


def write(frame: pd.DataFrame, path, index: bool = True):
    if path.suffix == ".csv":
        frame.to_csv(path, index=index)
    else:
        frame.to_parquet(path, index=index)
    return path


def hand_covariance(F_t: np.ndarray, SF_t: np.ndarray, d_t: np.ndarray) -> np.ndarray:
    """sum_ab F[a, i] SF[a, b] F[b, j] + d_i [i == j], by explicit loops."""
    k, n = F_t.shape
    out = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            out[i, j] = sum(F_t[a, i] * SF_t[a, b] * F_t[b, j] for a in range(k) for b in range(k))
        out[i, i] += d_t[i]
    return out


def assert_same_table(got: pd.DataFrame, want: pd.DataFrame) -> None:
    assert list(got.columns) == [str(c) for c in want.columns]
    assert got.index.nlevels == want.index.nlevels
    for level in range(want.index.nlevels):
        g = got.index.get_level_values(level)
        w = want.index.get_level_values(level)
        assert list(g) == list(w)
    assert got.dtypes.eq(np.float64).all()
    np.testing.assert_allclose(got.to_numpy(), want.to_numpy(), rtol=1e-15, atol=0)


# -------------------------------------------------------------------- read_table


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_round_trip_wide(tmp_path, suffix):
    frame = wide()
    got = read_table(write(frame, tmp_path / f"r.{suffix}"), what="returns forecast")
    assert isinstance(got.index, pd.DatetimeIndex) and got.index.name == "date"
    assert got.index.tz is None
    assert_same_table(got, frame)


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_round_trip_per_step(tmp_path, suffix):
    frame = per_step()
    got = read_table(write(frame, tmp_path / f"r.{suffix}"), what="returns forecast")
    assert list(got.index.names) == ["date", "tau"]
    assert pd.api.types.is_integer_dtype(got.index.get_level_values(1).dtype)
    assert_same_table(got, frame)


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_round_trip_covariance(tmp_path, suffix):
    frame = covariances()
    got = read_table(write(frame, tmp_path / f"c.{suffix}"), what="covariance")
    assert list(got.index.names) == ["date", "ticker"]
    assert_same_table(got, frame)


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_round_trip_factor_tables(tmp_path, suffix):
    F, SF, d = factor_frames()
    for name, frame in {"F": F, "SF": SF, "d": d, "SF0": SF.loc[DATES[0]]}.items():
        got = read_table(write(frame, tmp_path / f"{name}.{suffix}"), what=name)
        assert_same_table(got, frame)
    assert read_table(tmp_path / f"F.{suffix}", what="F").index.names == ["date", "factor"]
    assert read_table(tmp_path / f"SF0.{suffix}", what="SF").index.name == "factor"


def test_parquet_without_index_is_read_like_csv(tmp_path):
    frame = per_step()
    got = read_table(write(frame.reset_index(), tmp_path / "r.parquet", index=False), what="r")
    assert_same_table(got, frame)


def test_unnamed_index_columns(tmp_path):
    frame = covariances()
    frame.index.names = [None, None]  # pandas writes the header ",,AAA,..."
    got = FileCovariance(write(frame, tmp_path / "c.csv")).frame
    assert list(got.index.names) == ["date", "ticker"]
    assert_same_table(got, covariances())
    steps = per_step()
    steps.index.names = [None, None]
    with pytest.raises(DataError, match="data column 1 has no name.*second column tau"):
        _ = FileReturnsForecast(write(steps, tmp_path / "r.csv")).frame
    assert FileReturnsForecast(write(steps, tmp_path / "r.parquet")).per_step


def test_tz_aware_dates_become_naive(tmp_path):
    frame = wide()
    frame.index = frame.index.tz_localize("America/New_York")
    got = read_table(write(frame, tmp_path / "r.csv"), what="r")
    assert got.index.tz is None
    assert list(got.index) == list(DATES)


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        read_table(tmp_path / "nope.csv", what="returns forecast")
    with pytest.raises(DataError, match="nope.parquet"):
        FileReturnsForecast(tmp_path / "nope.parquet").values_in_time(DATES[0])


def test_unknown_suffix(tmp_path):
    path = tmp_path / "r.xlsx"
    path.write_text("x")
    with pytest.raises(DataError, match=r"suffix '\.xlsx'.*\.csv, \.parquet or \.pq"):
        read_table(path, what="returns forecast")


def test_unreadable_parquet(tmp_path):
    path = tmp_path / "r.parquet"
    path.write_bytes(b"this is not parquet")
    with pytest.raises(DataError, match="not a readable parquet"):
        read_table(path, what="returns forecast")


def test_semicolon_csv_is_named(tmp_path):
    path = tmp_path / "r.csv"
    wide().to_csv(path, sep=";", decimal=",")
    with pytest.raises(DataError) as info:
        read_table(path, what="returns forecast")
    message = str(info.value)
    assert "semicolon-separated" in message and "r.csv" in message
    assert "sep=';'" in message
    assert "empty" not in message


def test_empty_csv(tmp_path):
    path = tmp_path / "r.csv"
    path.write_text("")
    with pytest.raises(DataError, match="empty"):
        read_table(path, what="returns forecast")


def test_no_date_column(tmp_path):
    path = tmp_path / "r.csv"
    path.write_text("name,AAA\nfoo,0.1\nbar,0.2\n")
    with pytest.raises(
        DataError, match=r"first column 'name' holds no dates \(first value 'foo'\)"
    ):
        read_table(path, what="returns forecast")


def test_unparseable_date(tmp_path):
    path = tmp_path / "r.csv"
    path.write_text("date,AAA\n2021-01-04,0.1\nnot-a-date,0.2\n")
    with pytest.raises(DataError, match="cannot parse the date 'not-a-date' on data row 2"):
        read_table(path, what="returns forecast")


def test_unsorted_dates(tmp_path):
    frame = wide().iloc[[0, 2, 1, 3]]
    with pytest.raises(DataError, match="not sorted: 2021-01-05 .* comes after 2021-01-06"):
        read_table(write(frame, tmp_path / "r.csv"), what="returns forecast")


def test_duplicate_dates(tmp_path):
    frame = wide().iloc[[0, 1, 1, 2]]
    with pytest.raises(DataError, match="duplicate row for 2021-01-05"):
        read_table(write(frame, tmp_path / "r.parquet"), what="returns forecast")


def test_duplicate_date_tau(tmp_path):
    frame = per_step()
    frame = pd.concat([frame.iloc[:4], frame.iloc[[3]], frame.iloc[4:]])
    with pytest.raises(DataError, match=r"duplicate row for 2021-01-05 \(tau=0\)"):
        read_table(write(frame, tmp_path / "r.csv"), what="returns forecast")


def test_non_numeric_cell(tmp_path):
    frame = wide().astype(object)
    frame.iloc[2, 1] = "abc"
    with pytest.raises(DataError, match="non-numeric value 'abc' for 'BBB' on 2021-01-06"):
        read_table(write(frame, tmp_path / "r.csv"), what="returns forecast")


def test_non_numeric_cell_in_memory_two_levels():
    frame = covariances().astype(object)
    frame.iloc[5, 2] = "1,5"
    with pytest.raises(DataError, match=r"'1,5' for 'CCC' on 2021-01-05 \(ticker='BBB'\)"):
        _ = FileCovariance(frame).frame


def test_duplicate_header(tmp_path):
    path = tmp_path / "r.csv"
    path.write_text("date,AAA,AAA\n2021-01-04,0.1,0.2\n")
    with pytest.raises(DataError, match=r"duplicate column names \['AAA'\]"):
        read_table(path, what="returns forecast")


def test_negative_tau(tmp_path):
    path = tmp_path / "r.csv"
    path.write_text("date,tau,AAA\n2021-01-04,0,0.1\n2021-01-04,-1,0.2\n")
    with pytest.raises(DataError, match="tau must be an integer planning step >= 0, got '-1'"):
        read_table(path, what="returns forecast")


def test_wide_expected_but_per_step_given(tmp_path):
    path = write(per_step(), tmp_path / "sigma.csv")
    with pytest.raises(DataError, match=r"looks like a \(date, tau\) table"):
        _ = FileEstimate(path, what="sigma").frame


def test_two_levels_expected_but_wide_given(tmp_path):
    path = write(wide(), tmp_path / "cov.parquet")
    with pytest.raises(DataError, match=r"1 index level\(s\).*expected two"):
        _ = FileCovariance(path).frame


def test_bad_source_type():
    with pytest.raises(SpecError, match="got int"):
        FileReturnsForecast(3)
    with pytest.raises(SpecError, match="what must be one of"):
        FileEstimate(wide(), what="spread")


# ------------------------------------------------------------ FileReturnsForecast


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_returns_wide_values_in_time(tmp_path, suffix):
    frame = wide()
    path = write(frame, tmp_path / f"r.{suffix}")
    forecast = FileReturnsForecast(path)
    assert str(path) in repr(forecast)
    assert forecast.history() == 0
    assert not forecast.per_step
    for t in DATES:
        for step in (None, 0, 1, 2):
            got = forecast.values_in_time(t=t, past_returns=None, mpo_step=step)
            assert list(got.index) == TICKERS
            np.testing.assert_allclose(got.to_numpy(), frame.loc[t].to_numpy(), rtol=0, atol=0)


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_returns_per_step_values_in_time(tmp_path, suffix):
    frame = per_step(horizon=3)
    forecast = FileReturnsForecast(write(frame, tmp_path / f"r.{suffix}"))
    assert forecast.per_step
    for t in DATES:
        for tau in range(3):
            got = forecast.values_in_time(t, None, mpo_step=tau)
            np.testing.assert_allclose(got.to_numpy(), frame.loc[(t, tau)].to_numpy(), atol=0)
        np.testing.assert_allclose(
            forecast.values_in_time(t).to_numpy(), frame.loc[(t, 0)].to_numpy(), atol=0
        )


def test_returns_no_as_of_fallback():
    forecast = FileReturnsForecast(wide())
    saturday = pd.Timestamp("2021-01-09")
    with pytest.raises(DataError, match="no row for 2021-01-09.*no as-of fallback"):
        forecast.values_in_time(saturday)
    with pytest.raises(DataError, match=r"no row for 2021-01-05 \(tau=3\)"):
        FileReturnsForecast(per_step(horizon=3)).values_in_time(DATES[1], mpo_step=3)


def test_returns_validate_ok_and_extra_tickers_logged(caplog):
    forecast = FileReturnsForecast(wide())
    with caplog.at_level(logging.INFO, logger="mpo.forecast.files"):
        forecast.validate(DATES, TICKERS[:2])
    assert "ignoring 2 extra column(s) ['CCC', 'DDD']" in caplog.text
    FileReturnsForecast(per_step(horizon=3)).validate(DATES, TICKERS, horizon=3)


def test_returns_validate_first_missing_date(tmp_path):
    path = write(wide().drop(DATES[[3, 5]]), tmp_path / "r.csv")
    with pytest.raises(DataError) as info:
        FileReturnsForecast(path).validate(DATES, TICKERS)
    message = str(info.value)
    assert "no row for 2021-01-07, the first of 2" in message
    assert str(path) in message and "Add a row for every trading date" in message


def test_returns_validate_missing_tickers():
    with pytest.raises(DataError, match=r"no column for ticker\(s\) \['EEE', 'FFF'\]"):
        FileReturnsForecast(wide()).validate(DATES, [*TICKERS, "EEE", "FFF"])


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_returns_validate_non_finite(bad):
    frame = wide()
    frame.loc[DATES[4], "CCC"] = bad
    kind = "NaN" if np.isnan(bad) else "inf"
    forecast = FileReturnsForecast(frame)
    with pytest.raises(DataError, match=f"{kind} for 'CCC' on 2021-01-08"):
        forecast.validate(DATES, TICKERS)
    forecast.validate(DATES, ["AAA", "BBB"])  # an unused column may hold NaN
    forecast.validate(DATES[:4], TICKERS)  # so may an unused row


def test_returns_validate_missing_tau():
    frame = per_step(horizon=3).drop((DATES[2], 2))
    forecast = FileReturnsForecast(frame)
    forecast.validate(DATES, TICKERS, horizon=2)
    with pytest.raises(DataError, match=r"no row for \(2021-01-06, tau=2\)"):
        forecast.validate(DATES, TICKERS, horizon=3)
    with pytest.raises(DataError, match=r"no row for \(2021-01-04, tau=3\)"):
        forecast.validate(DATES, TICKERS, horizon=4)


def test_returns_validate_nan_in_per_step_row():
    frame = per_step(horizon=2)
    frame.loc[(DATES[1], 1), "BBB"] = np.nan
    with pytest.raises(DataError, match=r"NaN for 'BBB' on 2021-01-05 \(tau=1\)"):
        FileReturnsForecast(frame).validate(DATES, TICKERS, horizon=2)
    FileReturnsForecast(frame).validate(DATES, TICKERS, horizon=1)


def test_returns_validate_bad_horizon():
    with pytest.raises(SpecError, match="horizon must be an integer >= 1"):
        FileReturnsForecast(wide()).validate(DATES, TICKERS, horizon=0)


# ------------------------------------------------------------------ FileCovariance


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_covariance_values_in_time(tmp_path, suffix):
    frame = covariances()
    shuffled = frame.groupby(level=0, group_keys=False).apply(lambda b: b.iloc[::-1])
    cov = FileCovariance(write(shuffled, tmp_path / f"c.{suffix}"))
    cov.validate(DATES, TICKERS)
    for t in DATES:
        got = cov.values_in_time(t=t, past_returns=None)
        assert list(got.index) == TICKERS and list(got.columns) == TICKERS
        np.testing.assert_allclose(got.to_numpy(), frame.loc[t].to_numpy(), rtol=0, atol=0)
    with pytest.raises(DataError, match="no row for 2021-01-09"):
        cov.values_in_time(pd.Timestamp("2021-01-09"))


def test_covariance_validate_missing_date_and_ticker():
    frame = covariances().drop(DATES[6], level=0)
    with pytest.raises(DataError, match="no row for 2021-01-12, the first of 1"):
        FileCovariance(frame).validate(DATES, TICKERS)
    with pytest.raises(DataError, match=r"no column for ticker\(s\) \['ZZZ'\]"):
        FileCovariance(covariances()).validate(DATES, [*TICKERS, "ZZZ"])


def test_covariance_validate_not_square():
    frame = covariances().drop((DATES[3], "BBB"))
    with pytest.raises(DataError) as info:
        FileCovariance(frame).validate(DATES, TICKERS)
    message = str(info.value)
    assert "on 2021-01-07 is 3 x 4" in message
    assert "expected a square 4 x 4 matrix" in message
    assert "rows missing ['BBB']" in message


def test_covariance_validate_extra_row():
    frame = covariances()
    extra = frame.loc[[(DATES[2], "AAA")]].rename(index={"AAA": "EEE"}, level=1)
    with pytest.raises(DataError, match=r"on 2021-01-06 is 5 x 4.*rows not expected \['EEE'\]"):
        FileCovariance(pd.concat([frame, extra]).sort_index()).validate(DATES, TICKERS)


def test_covariance_validate_not_symmetric():
    frame = covariances()
    frame.loc[(DATES[5], "AAA"), "CCC"] += 1e-6
    with pytest.raises(DataError, match="on 2021-01-11 is not symmetric.*'AAA', 'CCC'"):
        FileCovariance(frame).validate(DATES, TICKERS)


def test_covariance_validate_not_psd():
    frame = covariances()
    block = frame.loc[DATES[2]].to_numpy()
    w, V = np.linalg.eigh(block)
    w[0] = -1e-5
    frame.loc[DATES[2]] = V @ np.diag(w) @ V.T
    smallest = np.linalg.eigvalsh(frame.loc[DATES[2]].to_numpy())[0]
    with pytest.raises(DataError) as info:
        FileCovariance(frame).validate(DATES, TICKERS)
    message = str(info.value)
    assert "on 2021-01-06 is not positive semidefinite" in message
    assert f"smallest eigenvalue {smallest:.6g}" in message
    assert "Clip the negative eigenvalues" in message and "FileFactorModel" in message


def test_covariance_validate_tiny_negative_eigenvalue_is_accepted():
    frame = covariances()
    block = frame.loc[DATES[2]].to_numpy()
    w, V = np.linalg.eigh(block)
    w[0] = -1e-13 * w[-1]
    frame.loc[DATES[2]] = (V @ np.diag(w) @ V.T + (V @ np.diag(w) @ V.T).T) / 2
    FileCovariance(frame).validate(DATES, TICKERS)


def test_covariance_validate_nan():
    frame = covariances()
    frame.loc[(DATES[1], "DDD"), "BBB"] = np.nan
    with pytest.raises(DataError, match=r"NaN for 'BBB' on 2021-01-05 \(ticker='DDD'\)"):
        FileCovariance(frame).validate(DATES, TICKERS)


# ------------------------------------------------------------------ FileFactorModel


def factor_model(tmp_path, suffix="csv", constant=False, frames=None):
    F, SF, d = frames or factor_frames()
    if constant:
        SF = SF.loc[DATES[0]]
    paths = [write(x, tmp_path / f"{n}.{suffix}") for n, x in zip("FSd", (F, SF, d), strict=True)]
    return FileFactorModel(*paths), (F, SF, d)


@pytest.mark.parametrize("suffix", SUFFIXES)
@pytest.mark.parametrize("constant", [False, True])
def test_factor_model_covariance_at_matches_hand(tmp_path, suffix, constant):
    model, (F, SF, d) = factor_model(tmp_path, suffix, constant)
    model.validate(DATES, TICKERS)
    assert model.factors == FACTORS and model.constant_factor_covariance is constant
    assert model.history() == 0 and "F." in repr(model)
    order = ["DDD", "AAA", "CCC"]
    cols = [TICKERS.index(c) for c in order]
    for t in DATES:
        SF_t = (SF if constant else SF.loc[t]).to_numpy()
        want = hand_covariance(F.loc[t].to_numpy()[:, cols], SF_t, d.loc[t].to_numpy()[cols])
        got = model.covariance_at(t, order)
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-18)


def test_factor_model_aligns_factor_order_by_name(tmp_path):
    F, SF, d = factor_frames()
    perm = ["size", "mkt", "value"]
    SF_shuffled = pd.concat(
        {t: SF.loc[t].loc[perm, perm] for t in DATES}, names=["date", "factor"]
    ).iloc[::-1]
    SF_shuffled = SF_shuffled.sort_index(level=0, sort_remaining=False)
    model, _ = factor_model(tmp_path, "parquet", frames=(F, SF_shuffled, d))
    model.validate(DATES, TICKERS)
    kwargs = model.cvxportfolio_kwargs(TICKERS)
    for t in DATES:
        assert list(kwargs["F"].loc[t].index) == FACTORS
        assert list(kwargs["Sigma_F"].loc[t].index) == FACTORS
        np.testing.assert_allclose(kwargs["Sigma_F"].loc[t].to_numpy(), SF.loc[t].to_numpy())
        want = hand_covariance(F.loc[t].to_numpy(), SF.loc[t].to_numpy(), d.loc[t].to_numpy())
        np.testing.assert_allclose(model.covariance_at(t, TICKERS), want, rtol=1e-12)


def test_factor_model_kwargs_restricted_to_tickers(tmp_path):
    model, (F, SF, d) = factor_model(tmp_path, "csv")
    kwargs = model.cvxportfolio_kwargs(["CCC", "AAA"])
    assert set(kwargs) == {"F", "d", "Sigma_F"}
    assert list(kwargs["F"].columns) == ["CCC", "AAA"]
    assert list(kwargs["d"].columns) == ["CCC", "AAA"]
    assert list(kwargs["F"].index.names) == ["date", "factor"]
    assert isinstance(kwargs["F"].index.levels[0], pd.DatetimeIndex)
    np.testing.assert_allclose(kwargs["F"].to_numpy(), F[["CCC", "AAA"]].to_numpy(), rtol=1e-15)
    np.testing.assert_allclose(kwargs["d"].to_numpy(), d[["CCC", "AAA"]].to_numpy(), rtol=1e-15)
    np.testing.assert_allclose(kwargs["Sigma_F"].to_numpy(), SF.to_numpy(), rtol=1e-15)


def test_factor_model_missing_dates(tmp_path):
    F, SF, d = factor_frames()
    cases = {
        "exposures": (F.drop(DATES[4], level=0), SF, d),
        "covariance": (F, SF.drop(DATES[4], level=0), d),
        "idiosyncratic": (F, SF, d.drop(DATES[4])),
    }
    for what, frames in cases.items():
        with pytest.raises(DataError, match=f"{what}.*no row for 2021-01-08"):
            FileFactorModel(*frames).validate(DATES, TICKERS)


def test_factor_model_factor_count_changes(tmp_path):
    F, SF, d = factor_frames()
    F = F.drop((DATES[3], "value"))
    with pytest.raises(DataError) as info:
        FileFactorModel(F, SF, d).validate(DATES, TICKERS)
    message = str(info.value)
    assert "factor exposures" in message and "on 2021-01-07 is 2 x 4" in message
    assert "expected k x n = 3 x 4" in message and "rows missing ['value']" in message
    assert "same k factors on every date" in message


def test_factor_model_missing_ticker(tmp_path):
    F, SF, d = factor_frames()
    with pytest.raises(DataError, match=r"exposures.*no column for ticker\(s\) \['BBB'\]"):
        FileFactorModel(F.drop(columns="BBB"), SF, d).validate(DATES, TICKERS)
    with pytest.raises(DataError, match=r"idiosyncratic.*no column for ticker\(s\) \['CCC'\]"):
        FileFactorModel(F, SF, d.drop(columns="CCC")).validate(DATES, TICKERS)


def test_factor_model_sigma_f_wrong_shape(tmp_path):
    F, SF, d = factor_frames()
    with pytest.raises(DataError) as info:
        FileFactorModel(F, SF.drop(columns="size"), d).validate(DATES, TICKERS)
    message = str(info.value)
    assert "has 2 column(s)" in message and "k x k = 3 x 3" in message
    constant = SF.loc[DATES[0]].drop(index="size")
    with pytest.raises(DataError, match=r"is 2 x 3 .*expected k x k = 3 x 3"):
        FileFactorModel(F, constant, d).validate(DATES, TICKERS)
    with pytest.raises(DataError, match=r"on 2021-01-05 is 2 x 3.*expected k x k = 3 x 3"):
        FileFactorModel(F, SF.drop((DATES[1], "mkt")), d).validate(DATES, TICKERS)


def test_factor_model_sigma_f_not_psd(tmp_path):
    F, SF, d = factor_frames()
    block = SF.loc[DATES[6]].to_numpy()
    w, V = np.linalg.eigh(block)
    w[0] = -0.5 * w[-1]
    SF.loc[DATES[6]] = V @ np.diag(w) @ V.T
    smallest = np.linalg.eigvalsh(SF.loc[DATES[6]].to_numpy())[0]
    model, _ = factor_model(tmp_path, "csv", frames=(F, SF, d))
    with pytest.raises(DataError) as info:
        model.validate(DATES, TICKERS)
    message = str(info.value)
    assert "factor covariance" in message and "S.csv" in message
    assert "on 2021-01-12 is not positive semidefinite" in message
    assert f"smallest eigenvalue {smallest:.6g}" in message and "Clip" in message


def test_factor_model_sigma_f_not_symmetric():
    F, SF, d = factor_frames()
    constant = SF.loc[DATES[0]].copy()
    constant.loc["mkt", "size"] *= 1.01
    with pytest.raises(DataError, match=r"\(constant\) is not symmetric.*'mkt', 'size'"):
        FileFactorModel(F, constant, d).validate(DATES, TICKERS)


def test_factor_model_d_negative_and_nan():
    F, SF, d = factor_frames()
    neg = d.copy()
    neg.loc[DATES[2], "DDD"] = -1e-6
    with pytest.raises(DataError, match="must be >= 0, got -1e-06 for 'DDD' on 2021-01-06"):
        FileFactorModel(F, SF, neg).validate(DATES, TICKERS)
    nan = d.copy()
    nan.loc[DATES[5], "AAA"] = np.nan
    with pytest.raises(DataError, match="NaN for 'AAA' on 2021-01-11"):
        FileFactorModel(F, SF, nan).validate(DATES, TICKERS)


def test_factor_model_f_nan():
    F, SF, d = factor_frames()
    F.loc[(DATES[7], "size"), "CCC"] = np.inf
    with pytest.raises(DataError, match=r"inf for 'CCC' on 2021-01-13 \(factor='size'\)"):
        FileFactorModel(F, SF, d).validate(DATES, TICKERS)


def test_factor_model_sigma_f_one_row_per_date_rejected():
    F, SF, d = factor_frames()
    with pytest.raises(DataError, match=r"one row per date; expected a \(date, factor\)"):
        FileFactorModel(F, d, d).validate(DATES, TICKERS)


# --------------------------------------------------------------------- FileEstimate


@pytest.mark.parametrize("suffix", SUFFIXES)
@pytest.mark.parametrize("what", ["sigma", "volume"])
def test_estimate_round_trip_and_values(tmp_path, suffix, what):
    frame = wide().abs() * (1e8 if what == "volume" else 1.0) + 1e-3
    est = FileEstimate(write(frame, tmp_path / f"{what}.{suffix}"), what=what)
    est.validate(DATES, TICKERS)
    assert f"what={what!r}" in repr(est) and est.history() == 0
    for t in DATES:
        np.testing.assert_allclose(est.values_in_time(t).to_numpy(), frame.loc[t].to_numpy())


def test_estimate_validate_errors():
    frame = wide().abs()
    sigma = frame.copy()
    sigma.loc[DATES[3], "BBB"] = -0.01
    with pytest.raises(DataError, match="sigma must be >= 0, got -0.01 for 'BBB' on 2021-01-07"):
        FileEstimate(sigma, what="sigma").validate(DATES, TICKERS)
    volume = frame.copy() + 1.0
    volume.loc[DATES[6], "DDD"] = 0.0
    with pytest.raises(DataError, match="volume must be > 0, got 0 for 'DDD' on 2021-01-12"):
        FileEstimate(volume, what="volume").validate(DATES, TICKERS)
    FileEstimate(frame.where(frame > 0, 0.0), what="sigma").validate(DATES, TICKERS)
    with pytest.raises(DataError, match="sigma estimate.*no row for 2021-01-04"):
        FileEstimate(frame.iloc[1:], what="sigma").validate(DATES, TICKERS)
    nan = frame.copy()
    nan.loc[DATES[0], "AAA"] = np.nan
    with pytest.raises(DataError, match="NaN for 'AAA' on 2021-01-04"):
        FileEstimate(nan, what="volume").validate(DATES, TICKERS)


# ---------------------------------------------------------------- with cvxportfolio


def synthetic_market(periods: int = 30, seed: int = 7):
    dates = pd.bdate_range("2022-01-03", periods=periods)
    rng = np.random.default_rng(seed)
    returns = pd.DataFrame(rng.normal(5e-4, 0.01, (periods, len(TICKERS))), dates, TICKERS)
    returns["USDOLLAR"] = 1e-4
    return dates, returns


def backtest(policy, returns, start, volumes=None):
    data = cvx.UserProvidedMarketData(
        returns=returns, volumes=volumes, min_history=pd.Timedelta(0), cash_key="USDOLLAR"
    )
    simulator = cvx.MarketSimulator(market_data=data, costs=[])
    return simulator.backtest(policy, start_time=start)


def test_spo_backtest_matches_raw_frames(tmp_path):
    dates, returns = synthetic_market()
    r_hat = wide(seed=11, dates=dates, scale=2e-3)
    F, SF, d = factor_frames(seed=12, dates=dates)
    write(r_hat, tmp_path / "r_hat.csv")
    model, _ = factor_model(tmp_path, "parquet", frames=(F, SF, d))
    forecast = FileReturnsForecast(tmp_path / "r_hat.csv")
    forecast.validate(dates[5:], TICKERS)
    model.validate(dates[5:], TICKERS)
    constraints = [cvx.LongOnly(applies_to_cash=False), cvx.LeverageLimit(1)]

    def policy(r, risk):
        objective = cvx.ReturnsForecast(r_hat=r) - 5 * risk
        return cvx.SinglePeriodOptimization(objective, constraints, solver="CLARABEL", **TIGHT)

    from_files = policy(forecast, cvx.FactorModelCovariance(**model.cvxportfolio_kwargs(TICKERS)))
    raw = policy(r_hat, cvx.FactorModelCovariance(F=F, d=d, Sigma_F=SF))
    a = backtest(from_files, returns, dates[5])
    b = backtest(raw, returns, dates[5])
    assert len(a.w) == len(dates) - 5
    np.testing.assert_allclose(a.w.to_numpy(), b.w.to_numpy(), rtol=0, atol=1e-8)
    assert a.w.iloc[:, :-1].abs().sum(axis=1).max() > 0.5  # the policy does invest

    # the same risk as a dense FileCovariance: the same problem, up to solver tolerance
    dense = pd.concat(
        {
            t: pd.DataFrame(model.covariance_at(t, TICKERS), index=TICKERS, columns=TICKERS)
            for t in dates
        },
        names=["date", "ticker"],
    )
    cov = FileCovariance(write(dense, tmp_path / "cov.csv"))
    cov.validate(dates[5:], TICKERS)
    c = backtest(policy(forecast, cvx.FullCovariance(Sigma=cov)), returns, dates[5])
    np.testing.assert_allclose(c.w.to_numpy(), b.w.to_numpy(), rtol=0, atol=1e-6)


def test_mpo_per_step_forecast_and_cost_estimates_match_raw_frames(tmp_path):
    horizon = 2
    dates, returns = synthetic_market()
    r_steps = per_step(horizon=horizon, seed=21, dates=dates) * 0.2 - 0.002
    r_steps.loc[pd.IndexSlice[:, 1], :] *= -1.0  # step 1 disagrees with step 0
    F, SF, d = factor_frames(seed=22, dates=dates)
    sigma = wide(seed=23, dates=dates).abs() + 0.005
    volume = wide(seed=24, dates=dates).abs() * 1e9 + 1e7
    forecast = FileReturnsForecast(write(r_steps, tmp_path / "r.parquet"))
    sigma_file = FileEstimate(write(sigma, tmp_path / "sigma.csv"), what="sigma")
    volume_file = FileEstimate(write(volume, tmp_path / "volume.pq"), what="volume")
    forecast.validate(dates[5:], TICKERS, horizon=horizon)
    sigma_file.validate(dates[5:], TICKERS)
    volume_file.validate(dates[5:], TICKERS)
    risk = dict(F=F, d=d, Sigma_F=SF)

    def step(r, s, v):
        cost = cvx.TransactionCost(a=1e-3, b=1.0, sigma=s, volume_hat=v)
        return cvx.ReturnsForecast(r_hat=r) - 5 * cvx.FactorModelCovariance(**risk) - cost

    def constraints():
        return [cvx.LongOnly(applies_to_cash=False), cvx.LeverageLimit(1)]

    from_files = cvx.MultiPeriodOptimization(
        step(forecast, sigma_file, volume_file),
        constraints(),
        planning_horizon=horizon,
        solver="CLARABEL",
        **TIGHT,
    )
    raw = cvx.MultiPeriodOptimization(
        [step(r_steps.xs(tau, level=1), sigma, volume) for tau in range(horizon)],
        [constraints() for _ in range(horizon)],
        solver="CLARABEL",
        **TIGHT,
    )
    step0_only = cvx.MultiPeriodOptimization(
        step(r_steps.xs(0, level=1), sigma, volume),
        constraints(),
        planning_horizon=horizon,
        solver="CLARABEL",
        **TIGHT,
    )
    a = backtest(from_files, returns, dates[5])
    b = backtest(raw, returns, dates[5])
    c = backtest(step0_only, returns, dates[5])
    np.testing.assert_allclose(a.w.to_numpy(), b.w.to_numpy(), rtol=0, atol=1e-8)
    assert np.abs(a.w.to_numpy() - c.w.to_numpy()).max() > 1e-3  # steps do matter

"""Bring your own model: forecasts, risk models and cost estimates read from files.

Each object wraps one table (or three, for a factor model) given as a pandas
``DataFrame`` or as the path of a ``.csv``, ``.parquet`` or ``.pq`` file. Like
the classic forecasters (:mod:`mpo.forecast.classic`) they are plain objects
with ``values_in_time(t, ...)`` that cvxportfolio wraps in a ``DataEstimator``;
that wrapper aligns the returned Series or DataFrame to the current universe by
ticker name and raises on NaN. The value at ``t`` is the row *dated* ``t``:
there is no as-of fallback, a missing date is an error naming it.

File layouts (the first column(s) of a CSV, or the parquet index, are the index):

* wide, ``date, <ticker>, <ticker>, ...``: one row per date
  (:class:`FileReturnsForecast`, :class:`FileEstimate`, the idiosyncratic
  variances of :class:`FileFactorModel`);
* per planning step, ``date, tau, <ticker>, ...``: row ``(t, tau)`` is the
  forecast made at ``t`` of the return of the period starting ``tau`` periods
  after ``t`` (:class:`FileReturnsForecast` inside a multi-period policy);
* covariance, ``date, ticker, <ticker>, ...``: ``n`` rows per date
  (:class:`FileCovariance`);
* factor tables, ``date, factor, <ticker or factor>, ...``: ``k`` rows per date
  (exposures and factor covariance of :class:`FileFactorModel`); a constant
  factor covariance is ``factor, <factor>, ...`` without dates.

Constructors only store their source; the table is read (and its format
checked) on first use. ``validate(calendar, tickers)`` checks the content a
backtest will use and raises :class:`~mpo.errors.DataError` naming the first
offending date, ticker or shape. The reading, parsing and checks of the
tables themselves live in :mod:`mpo.forecast.tables`; :func:`read_table` is
re-exported here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from mpo.errors import DataError, SpecError
from mpo.forecast.tables import (
    Source,
    _check_matrices,
    _check_source,
    _few,
    _fmt,
    _load,
    _name,
    _Table,
    read_table,
)

__all__ = [
    "read_table",
    "FileReturnsForecast",
    "FileCovariance",
    "FileFactorModel",
    "FileEstimate",
]


# ------------------------------------------------------------------------ helpers


def _naive(t: Any) -> pd.Timestamp:
    """``t`` as a tz-naive timestamp (wall time kept), the convention of our tables."""
    t = pd.Timestamp(t)
    return t.tz_localize(None) if t.tzinfo is not None else t


def _calendar(calendar: Any) -> pd.DatetimeIndex:
    cal = pd.DatetimeIndex(calendar)
    if cal.tz is not None:
        cal = cal.tz_localize(None)
    return cal.unique().sort_values()


def _tickers(tickers: Sequence[str]) -> list[str]:
    if isinstance(tickers, str):
        raise SpecError(f"tickers must be a list of ticker names, got the string {tickers!r}.")
    return list(dict.fromkeys(str(t) for t in tickers))


class _FileObject:
    """Lazy loading of the one table of a single-table file object."""

    _what = "table"
    _levels: int | None = None
    _key: str | None = None

    def __init__(self, source: Source):
        self.source = _check_source(source, self._what)
        self._table: _Table | None = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({_name(self.source)!r})"

    @property
    def table(self) -> _Table:
        """The loaded table (read and format-checked on first access)."""
        if self._table is None:
            table = _load(self.source, self._what, self._levels, self._key)
            self._check_layout(table)
            self._table = table
        return self._table

    @property
    def frame(self) -> pd.DataFrame:
        """The table: float64, index as documented by :func:`read_table`."""
        return self.table.frame

    def _check_layout(self, table: _Table) -> None:
        """Hook: reject a table of the wrong layout."""

    def history(self) -> int:
        """Periods of past returns needed: none, the values come from the file."""
        return 0


# ----------------------------------------------------------------- public objects


class FileReturnsForecast(_FileObject):
    """Returns forecasts read from a file: row ``t`` forecasts the return over period ``t``.

    Parameters
    ----------
    source
        A ``DataFrame`` or the path of a CSV/parquet file, either wide
        (``date, <ticker>...``: the same forecast at every planning step) or
        per step (``date, tau, <ticker>...``: row ``(t, tau)`` is the forecast
        made at ``t`` of the return of the period starting ``tau`` periods after
        ``t``, used at step ``mpo_step = tau`` of a multi-period policy).

    Examples
    --------
    >>> import cvxportfolio as cvx
    >>> term = cvx.ReturnsForecast(r_hat=FileReturnsForecast("r_hat.csv"))  # doctest: +SKIP
    """

    _what = "returns forecast"
    _key = "tau"

    def _check_layout(self, table: _Table) -> None:
        if not isinstance(table.frame.index, pd.DatetimeIndex | pd.MultiIndex):
            raise DataError(
                f"{table.label} needs dates in its first column, found {table.frame.index.name!r}."
            )

    @property
    def per_step(self) -> bool:
        """True for a ``(date, tau)`` table (a separate forecast per planning step)."""
        return isinstance(self.frame.index, pd.MultiIndex)

    def values_in_time(
        self,
        t: Any,
        past_returns: pd.DataFrame | None = None,
        mpo_step: int | None = None,
        **kwargs: Any,
    ) -> pd.Series:
        """Forecast made at ``t`` for planning step ``mpo_step`` (0 when None).

        Returns
        -------
        pd.Series
            Indexed by the table's tickers (cvxportfolio selects the universe).

        Raises
        ------
        DataError
            No row for ``t`` (or for ``(t, mpo_step)`` in a per-step table).
        """
        t = _naive(t)
        if not self.per_step:
            return self.table.row(t)
        tau = int(mpo_step or 0)
        hint = f"; the planning horizon needs tau = 0..{tau} at every date" if tau else ""
        return self.table.row(t, tau, hint)

    def validate(self, calendar: Any, tickers: Sequence[str], horizon: int = 1) -> None:
        """Check the rows and columns a backtest on ``calendar`` x ``tickers`` uses.

        Parameters
        ----------
        calendar
            Decision dates of the backtest.
        tickers
            Universe (without cash); extra columns are ignored (logged).
        horizon
            Planning horizon ``H``; a per-step table needs ``tau = 0..H-1`` at
            every date (ignored for a wide table).

        Raises
        ------
        DataError
            The first missing date, the missing tickers, the first missing
            ``(date, tau)`` or the first NaN/inf cell.
        SpecError
            ``horizon`` is not an integer >= 1.
        """
        if not isinstance(horizon, int | np.integer) or horizon < 1:
            raise SpecError(f"horizon must be an integer >= 1, got {horizon=}.")
        cal, names, table = _calendar(calendar), _tickers(tickers), self.table
        table.require_dates(cal)
        table.require_columns(names)
        if not self.per_step:
            table.require_finite(table.frame.loc[cal, names])
            return
        rows = pd.MultiIndex.from_product([cal, range(int(horizon))])
        absent = ~rows.isin(table.frame.index)
        if absent.any():
            t, tau = rows[absent][0]
            raise DataError(
                f"{table.label} has no row for ({_fmt(t)}, tau={tau}) ({int(absent.sum())} "
                f"(date, tau) row(s) missing): with planning horizon {horizon} every date "
                f"needs tau = 0..{horizon - 1}. Add the rows or shorten the horizon."
            )
        table.require_finite(table.frame.loc[rows, names])


class FileCovariance(_FileObject):
    """Full covariance matrices read from a file, one per date.

    Parameters
    ----------
    source
        A ``DataFrame`` or the path of a CSV/parquet file with a two-level
        index ``(date, ticker)`` and one column per ticker: the ``n`` rows of a
        date are that date's ``n x n`` covariance (CSV ``date, ticker, <ticker>...``).

    Examples
    --------
    >>> import cvxportfolio as cvx
    >>> risk = cvx.FullCovariance(Sigma=FileCovariance("sigma.parquet"))  # doctest: +SKIP
    """

    _what = "covariance"
    _levels = 2
    _key = "ticker"

    def values_in_time(
        self, t: Any, past_returns: pd.DataFrame | None = None, **kwargs: Any
    ) -> pd.DataFrame:
        """Covariance at ``t``: ticker x ticker, rows in the columns' order.

        Raises
        ------
        DataError
            No rows for ``t``.
        """
        block = self.table.row(_naive(t))
        columns = list(block.columns)
        if len(block) == len(columns) and set(block.index) == set(columns):
            block = block.loc[columns]
        return block

    def validate(self, calendar: Any, tickers: Sequence[str]) -> None:
        """Check coverage, square shape, finiteness, symmetry and PSD on ``calendar`` x ``tickers``.

        Raises
        ------
        DataError
            Names the first missing date, the missing tickers, the date whose
            matrix is not square (its shape and the rows missing or in excess),
            the first NaN/inf, or the date and entries / smallest eigenvalue of
            a non-symmetric or non-PSD matrix, with a fix.
        """
        cal, names, table = _calendar(calendar), _tickers(tickers), self.table
        table.require_dates(cal)
        table.require_columns(names)
        columns = list(table.frame.columns)
        n = len(columns)
        table.require_rows(cal, columns, f"a square {n} x {n} matrix with the columns' tickers")
        _check_matrices(table, cal, names, ", or supply a factor model (FileFactorModel)")


class FileEstimate(_FileObject):
    """Per-period volatility or dollar-volume estimates for the cost model, read from a file.

    Parameters
    ----------
    source
        A ``DataFrame`` or the path of a wide CSV/parquet file
        (``date, <ticker>...``); row ``t`` is the estimate available at ``t``
        for period ``t``.
    what
        ``"sigma"`` (per-period volatility, >= 0) or ``"volume"`` (per-period
        dollar volume, > 0).

    Examples
    --------
    >>> import cvxportfolio as cvx
    >>> cost = cvx.TransactionCost(  # doctest: +SKIP
    ...     a=5e-4, b=1.0, sigma=FileEstimate("sigma.csv", what="sigma"),
    ...     volume_hat=FileEstimate("volume.csv", what="volume"))
    """

    _levels = 1
    KINDS = ("sigma", "volume")

    def __init__(self, source: Source, what: str = "sigma"):
        if what not in self.KINDS:
            raise SpecError(f"FileEstimate what must be one of {self.KINDS}, got {what=}.")
        self.what = what
        self._what = f"{what} estimate"
        super().__init__(source)

    def __repr__(self) -> str:
        return f"FileEstimate({_name(self.source)!r}, what={self.what!r})"

    def values_in_time(
        self, t: Any, past_returns: pd.DataFrame | None = None, **kwargs: Any
    ) -> pd.Series:
        """Estimates at ``t``, indexed by ticker (DataError if ``t`` is missing)."""
        return self.table.row(_naive(t))

    def validate(self, calendar: Any, tickers: Sequence[str]) -> None:
        """Check coverage, tickers, finiteness and sign (sigma >= 0, volume > 0).

        Raises
        ------
        DataError
            Names the first missing date, the missing tickers, or the ticker
            and date of the first NaN/inf or out-of-range value.
        """
        cal, names, table = _calendar(calendar), _tickers(tickers), self.table
        table.require_dates(cal)
        table.require_columns(names)
        block = table.frame.loc[cal, names]
        table.require_finite(block)
        values = block.to_numpy()
        bad = values < 0 if self.what == "sigma" else values <= 0
        if bad.any():
            i, j = np.unravel_index(int(np.argmax(bad)), bad.shape)
            rule = "sigma must be >= 0" if self.what == "sigma" else "volume must be > 0"
            raise DataError(
                f"{table.label}: {rule}, got {values[i, j]:.6g} for {names[j]!r} on "
                f"{_fmt(cal[i])} ({int(bad.sum())} such cell(s)). Fix the estimate."
            )


class FileFactorModel:
    """Factor risk model ``Sigma_t = F_t' Sigma_F,t F_t + diag(d_t)`` read from files.

    The three tables are what ``cvx.FactorModelCovariance(F=, d=, Sigma_F=)``
    takes (see :meth:`cvxportfolio_kwargs`).

    Parameters
    ----------
    exposures
        ``F``: two-level index ``(date, factor)``, one column per ticker; the
        ``k`` rows of a date are its ``k x n`` exposures (CSV
        ``date, factor, <ticker>...``).
    factor_covariance
        ``Sigma_F``: two-level index ``(date, factor)``, one column per factor
        (CSV ``date, factor, <factor>...``), or a constant ``k x k`` table
        indexed by factor (CSV ``factor, <factor>...``; parquet: index named
        ``factor``).
    idiosyncratic
        ``d``: wide ``date, <ticker>...`` of idiosyncratic variances (not
        volatilities), >= 0.

    Examples
    --------
    >>> import cvxportfolio as cvx
    >>> model = FileFactorModel("F.csv", "Sigma_F.csv", "d.csv")  # doctest: +SKIP
    >>> model.validate(calendar, tickers)  # doctest: +SKIP
    >>> risk = cvx.FactorModelCovariance(**model.cvxportfolio_kwargs(tickers))  # doctest: +SKIP
    """

    def __init__(self, exposures: Source, factor_covariance: Source, idiosyncratic: Source):
        self.exposures = _check_source(exposures, "factor exposures")
        self.factor_covariance = _check_source(factor_covariance, "factor covariance")
        self.idiosyncratic = _check_source(idiosyncratic, "idiosyncratic variances")
        self._tables: tuple[_Table, _Table, _Table] | None = None

    def __repr__(self) -> str:
        return (
            f"FileFactorModel(exposures={_name(self.exposures)!r}, "
            f"factor_covariance={_name(self.factor_covariance)!r}, "
            f"idiosyncratic={_name(self.idiosyncratic)!r})"
        )

    def history(self) -> int:
        """Periods of past returns needed: none, the values come from the files."""
        return 0

    def _load_sigma_f(self) -> _Table:
        source = self.factor_covariance
        if isinstance(source, pd.DataFrame) and not isinstance(
            source.index, pd.DatetimeIndex | pd.MultiIndex
        ):
            source = source.rename_axis("factor")  # a constant factor x factor frame
        table = _load(source, "factor covariance", None, "factor")
        if isinstance(table.frame.index, pd.DatetimeIndex):
            raise DataError(
                f"{table.label} has one row per date; expected a (date, factor) x factor table "
                "(CSV date, factor, <factor>...) or a constant factor x factor table "
                "(CSV factor, <factor>...)."
            )
        return table

    @property
    def tables(self) -> tuple[_Table, _Table, _Table]:
        """``(F, Sigma_F, d)`` tables, read and format-checked on first access."""
        if self._tables is None:
            exposures = _load(self.exposures, "factor exposures", 2, "factor")
            idio = _load(self.idiosyncratic, "idiosyncratic variances", 1)
            self._tables = (exposures, self._load_sigma_f(), idio)
        return self._tables

    @property
    def factors(self) -> list[str]:
        """Factor names: the exposures' rows on their first date, in file order."""
        return [str(k) for k in self.tables[0].first_keys]

    @property
    def constant_factor_covariance(self) -> bool:
        """True when ``Sigma_F`` has no dates."""
        return not isinstance(self.tables[1].frame.index, pd.MultiIndex)

    def validate(self, calendar: Any, tickers: Sequence[str]) -> None:
        """Check the three tables on ``calendar`` x ``tickers``.

        Raises
        ------
        DataError
            Names the first missing date of a table, a date whose exposures
            have other factors than the first date (expected vs found shape),
            missing tickers, ``Sigma_F`` not ``k x k`` with the exposures'
            factors, a NaN/inf, a non-symmetric or non-PSD ``Sigma_F`` (date,
            entries, smallest eigenvalue), or a negative ``d`` (ticker, date).
        """
        cal, names = _calendar(calendar), _tickers(tickers)
        F, SF, d = self.tables
        factors = self.factors
        k = len(factors)
        for table in (F, d) if self.constant_factor_covariance else (F, SF, d):
            table.require_dates(cal)
        F.require_columns(names)
        F.require_rows(
            cal,
            factors,
            f"k x n = {k} x {F.frame.shape[1]} with the factors of {_fmt(F.dates[0])} "
            f"{_few(factors)} (cvxportfolio needs the same k factors on every date)",
        )
        F.require_finite(F.frame.loc[pd.MultiIndex.from_product([cal, factors]), names])
        self._validate_sigma_f(SF, cal, factors)
        d.require_columns(names)
        block = d.frame.loc[cal, names]
        d.require_finite(block)
        values = block.to_numpy()
        if (values < 0).any():
            i, j = np.unravel_index(int(np.argmax(values < 0)), values.shape)
            raise DataError(
                f"{d.label}: idiosyncratic variances must be >= 0, got {values[i, j]:.6g} for "
                f"{names[j]!r} on {_fmt(cal[i])}. d holds variances (squared volatilities)."
            )

    def _validate_sigma_f(self, SF: _Table, cal: pd.DatetimeIndex, factors: list[str]) -> None:
        k = len(factors)
        columns = list(SF.frame.columns)
        if set(columns) != set(factors):
            raise DataError(
                f"{SF.label} has {len(columns)} column(s) {_few(columns)}, expected the "
                f"exposures' {k} factors {_few(factors)}: Sigma_F must be k x k = {k} x {k} "
                "with the factors on rows and columns."
            )
        if self.constant_factor_covariance:
            rows = list(SF.frame.index)
            if set(rows) != set(factors) or len(rows) != k:
                raise DataError(
                    f"{SF.label} is {len(rows)} x {len(columns)} with rows {_few(rows)}, "
                    f"expected k x k = {k} x {k} with rows {_few(factors)}."
                )
            _check_matrices(SF, None, factors, "")
            return
        SF.require_rows(cal, factors, f"k x k = {k} x {k}")
        _check_matrices(SF, cal, factors, "")

    def cvxportfolio_kwargs(self, tickers: Sequence[str]) -> dict[str, pd.DataFrame]:
        """``F``, ``d`` and ``Sigma_F`` for ``cvx.FactorModelCovariance(**kwargs)``.

        Columns restricted to ``tickers`` (in that order); factor rows (and
        ``Sigma_F`` columns) in the order of :attr:`factors` on every date,
        since cvxportfolio reads ``F`` and ``Sigma_F`` by position. Run
        :meth:`validate` first: this only selects and reorders.

        Returns
        -------
        dict
            ``F``: ``(date, factor)`` x ticker; ``d``: date x ticker;
            ``Sigma_F``: ``(date, factor)`` x factor, or factor x factor.
        """
        names = _tickers(tickers)
        F, SF, d = self.tables
        factors = self.factors
        F.require_columns(names)
        d.require_columns(names)
        rows_F = pd.MultiIndex.from_product([F.dates, factors], names=["date", "factor"])
        if self.constant_factor_covariance:
            sigma_f = SF.frame.reindex(index=factors, columns=factors)
        else:
            rows_SF = pd.MultiIndex.from_product([SF.dates, factors], names=["date", "factor"])
            sigma_f = SF.frame.reindex(index=rows_SF, columns=factors)
        return {"F": F.frame.reindex(rows_F)[names], "d": d.frame[names].copy(), "Sigma_F": sigma_f}

    def covariance_at(self, t: Any, tickers: Sequence[str]) -> np.ndarray:
        """Dense ``F_t' Sigma_F,t F_t + diag(d_t)`` on ``tickers`` (in that order).

        Raises
        ------
        DataError
            A table has no row for ``t`` or lacks a ticker.
        """
        t, names = _naive(t), _tickers(tickers)
        F, SF, d = self.tables
        factors = self.factors
        F.require_columns(names)
        d.require_columns(names)
        exposures = F.row(t).reindex(index=factors)[names].to_numpy()
        sigma_f = SF.frame if self.constant_factor_covariance else SF.row(t)
        sigma_f = sigma_f.reindex(index=factors, columns=factors).to_numpy()
        idio = d.row(t)[names].to_numpy()
        return exposures.T @ sigma_f @ exposures + np.diag(idio)

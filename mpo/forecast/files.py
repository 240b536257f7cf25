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
offending date, ticker or shape.
"""

from __future__ import annotations

import csv
import logging
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mpo.errors import DataError, SpecError

__all__ = [
    "read_table",
    "FileReturnsForecast",
    "FileCovariance",
    "FileFactorModel",
    "FileEstimate",
]

logger = logging.getLogger(__name__)

Source = pd.DataFrame | str | os.PathLike

_READERS = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}
#: Header names that mark a CSV's second column as the second index level.
_KEYS = ("tau", "factor", "ticker")
#: Relative tolerance of the symmetry and PSD checks.
_TOL = 1e-10
#: Matrices checked per batch by the symmetry / PSD checks (bounds memory).
_BATCH_ENTRIES = 4_000_000
_IN_MEMORY = "in-memory DataFrame"
_UNNAMED = "Unnamed: "  # pandas' name for a CSV column with an empty header


# --------------------------------------------------------------------- formatting


def _fmt(t: Any) -> str:
    """A date as ``2020-01-31`` (with the time of day when it is not midnight)."""
    t = pd.Timestamp(t)
    return str(t.date()) if t == t.normalize() else str(t)


def _fmt_label(label: Any, key_name: str | None) -> str:
    """Row label of a one- or two-level table, for messages."""
    if isinstance(label, tuple):
        key = label[1].item() if isinstance(label[1], np.generic) else label[1]
        return f"{_fmt(label[0])} ({key_name or 'key'}={key!r})"
    if isinstance(label, pd.Timestamp | np.datetime64):
        return _fmt(label)
    return f"row {label!r}"


def _few(items: Sequence[Any], limit: int = 8) -> str:
    """``['A', 'B', ...]`` with a count when longer than ``limit``."""
    items = list(items)
    shown = ", ".join(repr(x) for x in items[:limit])
    more = f", ... ({len(items)} in all)" if len(items) > limit else ""
    return f"[{shown}{more}]"


# ------------------------------------------------------------------------ reading


def _header(path: Path, what: str) -> list[str]:
    """Names in the CSV header; a semicolon- or tab-separated file is named as such."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            line = fh.readline()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{what} file {path} cannot be read as text: {exc}") from exc
    if not line.strip():
        raise DataError(
            f"{what} file {path} is empty (no header line). Write a header row: "
            "date, then one column per ticker."
        )
    for sep, name in ((";", "semicolon"), ("\t", "tab")):
        if sep in line and line.count(sep) > line.count(","):
            raise DataError(
                f"{what} file {path} looks {name}-separated (header {line.strip()[:60]!r}); "
                "mpo reads comma-separated CSV with '.' decimals. Re-save it, e.g. "
                f"pd.read_csv(path, sep={sep!r}, decimal=',').to_csv(path, index=False)."
            )
    names = [c.strip() for c in next(csv.reader([line]))]
    dup = sorted({c for c in names if names.count(c) > 1 and c})
    if dup:
        raise DataError(
            f"{what} file {path} has duplicate column names {_few(dup)}; keep one each."
        )
    return names


def _read_csv(path: Path, what: str) -> pd.DataFrame:
    names = _header(path, what)
    try:
        frame = pd.read_csv(
            path, dtype=str, keep_default_na=True, skipinitialspace=True, encoding="utf-8-sig"
        )
    except (ValueError, OSError, pd.errors.ParserError) as exc:
        raise DataError(f"{what} file {path} is not a readable CSV: {exc}") from exc
    # stripped header names; an empty one keeps pandas' "Unnamed: i" (unique) placeholder
    names = (names + [""] * frame.shape[1])[: frame.shape[1]]
    frame.columns = [name or str(auto) for name, auto in zip(names, frame.columns, strict=True)]
    return frame


def _read_parquet(path: Path, what: str) -> tuple[pd.DataFrame, bool]:
    """The parquet table and whether it carries its own index (else: leading columns)."""
    try:
        frame = pd.read_parquet(path)
    except (ValueError, OSError, TypeError) as exc:
        raise DataError(f"{what} file {path} is not a readable parquet file: {exc}") from exc
    indexed = not (isinstance(frame.index, pd.RangeIndex) and frame.index.name is None)
    if indexed and frame.index.nlevels == 1 and frame.index.name is not None:
        if str(frame.index.name).strip().lower() == "factor":
            frame.index.name = "factor"
    return frame, indexed


def _index_columns(names: list[str], levels: int | None, where: str, what: str) -> int:
    """How many leading columns form the index (0 means a constant ``factor`` table)."""
    first = names[0].lower()
    second = names[1].lower() if len(names) > 1 else ""
    if levels is None:
        if first == "factor":
            return 0
        return 2 if second in _KEYS else 1
    if levels == 1 and second in _KEYS:
        raise DataError(
            f"{what} ({where}): the second column is named {names[1]!r}, so this looks like a "
            f"(date, {second}) table, but {what} needs a wide table: date, then one column "
            "per ticker."
        )
    return levels


def read_table(path: str | os.PathLike, *, what: str, levels: int | None = None) -> pd.DataFrame:
    """Read a forecast, risk-model or estimate table from CSV or parquet.

    Parameters
    ----------
    path
        ``.csv`` (comma-separated, ``.`` decimals), ``.parquet`` or ``.pq``.
    what
        What the table holds, e.g. ``"returns forecast"``; used in error messages.
    levels
        Number of index columns. ``None`` (default) detects them: two when the
        second column is named ``tau``, ``factor`` or ``ticker``, none (a
        constant table indexed by factor) when the first column is named
        ``factor``, else one. A parquet file keeps its own index (or, written
        with ``index=False``, is read like a CSV).

    Returns
    -------
    pd.DataFrame
        Float64 values. Index: a tz-naive ``DatetimeIndex`` named ``date``, a
        two-level ``MultiIndex`` (``date``, then ``tau`` as integers or a
        string key), or, for a constant factor table, the factor names.
        Dates are sorted and unique (pairs, for two levels).

    Raises
    ------
    DataError
        Unknown suffix, missing or unreadable file, semicolon- or
        tab-separated CSV, no date column, unparseable, unsorted or duplicate
        dates, or a non-numeric cell (named with its ticker and date).
    """
    path = Path(path)
    kind = _READERS.get(path.suffix.lower())
    if kind is None:
        raise DataError(
            f"{what} file {path} has suffix {path.suffix!r}; use .csv, .parquet or .pq."
        )
    if not path.is_file():
        raise DataError(
            f"{what} file {path} does not exist. Check the path (relative paths are read "
            f"from {Path.cwd()})."
        )
    if kind == "csv":
        raw, indexed = _read_csv(path, what), False
    else:
        raw, indexed = _read_parquet(path, what)
    if indexed:
        return _tidy(raw, where=str(path), what=what, levels=levels)
    if raw.shape[1] == 0:
        raise DataError(f"{what} file {path} has no columns.")
    names = [str(c) for c in raw.columns]
    n_index = _index_columns(names, levels, str(path), what)
    if raw.shape[1] <= max(n_index, 1):
        raise DataError(
            f"{what} file {path} has only the index column(s) {names}; expected the index "
            "then one column per ticker (or factor)."
        )
    if n_index == 0:
        frame = raw.set_index(raw.columns[0])
        frame.index.name = "factor"
    else:
        frame = raw.set_index(list(raw.columns[:n_index]))
    return _tidy(frame, where=str(path), what=what, levels=levels)


# ----------------------------------------------------------------------- tidying


def _parse_dates(values: pd.Index, where: str, what: str, column: Any) -> pd.DatetimeIndex:
    """Dates from the first index level; none parsing means there is no date column."""
    if isinstance(values, pd.DatetimeIndex):
        dates = values
    else:
        raw = pd.Series(np.asarray(values, dtype=object))
        with warnings.catch_warnings():  # "could not infer format": we report bad dates
            warnings.simplefilter("ignore", UserWarning)
            parsed = pd.to_datetime(raw.astype(str).str.strip(), errors="coerce")
        bad = (parsed.isna() | raw.isna()).to_numpy()
        if bad.all():
            raise DataError(
                f"{what} ({where}): the first column {column!r} holds no dates (first value "
                f"{raw.iloc[0]!r}). Put the dates, e.g. 2020-01-31, in the first column "
                "(the parquet index); a constant factor covariance needs its first column "
                "(index) named 'factor'."
            )
        if bad.any():
            pos = int(np.argmax(bad))
            raise DataError(
                f"{what} ({where}): cannot parse the date {raw.iloc[pos]!r} on data row "
                f"{pos + 1}. Write one date per row in one format, e.g. 2020-01-31."
            )
        dates = pd.DatetimeIndex(parsed)
    if dates.tz is not None:
        logger.info(
            "%s (%s): dropping the timezone %s (mpo dates are tz-naive)", what, where, dates.tz
        )
        dates = dates.tz_localize(None)
    return dates.rename("date")


def _parse_key(values: pd.Index, name: str | None, where: str, what: str) -> pd.Index:
    """Second index level: integer ``tau`` steps, else labels (factor or ticker) as strings."""
    if name == "tau":
        raw = pd.Series(np.asarray(values, dtype=object))
        num = pd.to_numeric(raw.astype(str).str.strip(), errors="coerce")
        bad = (num.isna() | (num < 0) | (num != np.floor(num))).to_numpy()
        if bad.any():
            pos = int(np.argmax(bad))
            raise DataError(
                f"{what} ({where}): tau must be an integer planning step >= 0, got "
                f"{raw.iloc[pos]!r} on data row {pos + 1}."
            )
        return pd.Index(num.astype(np.int64).to_numpy(), name=name)
    if pd.api.types.is_integer_dtype(values.dtype):
        return pd.Index(np.asarray(values, dtype=np.int64), name=name)
    return pd.Index([str(v).strip() for v in values], dtype=object, name=name)


def _check_order(index: pd.Index, key_name: str | None, where: str, what: str) -> None:
    """Dates sorted (in file order) and rows unique."""
    dates = index.get_level_values(0) if isinstance(index, pd.MultiIndex) else index
    step = np.diff(dates.asi8)
    if (step < 0).any():
        pos = int(np.argmax(step < 0)) + 1
        raise DataError(
            f"{what} ({where}): dates are not sorted: {_fmt(dates[pos])} (data row {pos + 1}) "
            f"comes after {_fmt(dates[pos - 1])}. Sort the rows by date "
            "(frame.sort_index())."
        )
    dup = index.duplicated()
    if dup.any():
        pos = int(np.argmax(dup))
        raise DataError(
            f"{what} ({where}): duplicate row for {_fmt_label(index[pos], key_name)} "
            f"(data row {pos + 1}, {int(dup.sum())} duplicate(s)). Keep one row each."
        )


def _to_float(frame: pd.DataFrame, key_name: str | None, where: str, what: str) -> pd.DataFrame:
    """Float64 frame; a non-numeric cell is reported with its column and row."""
    numeric = all(
        pd.api.types.is_numeric_dtype(dt) and not pd.api.types.is_bool_dtype(dt)
        for dt in frame.dtypes
    )
    if numeric:
        return frame.astype(np.float64)
    out = {}
    for j, col in enumerate(frame.columns):
        column = frame.iloc[:, j]
        text = column.astype(str).str.strip() if not pd.api.types.is_numeric_dtype(column) else None
        values = pd.to_numeric(text if text is not None else column, errors="coerce")
        bad = values.isna() & column.notna()
        if text is not None:
            bad &= text != ""
        bad = bad.to_numpy(dtype=bool)
        if bad.any():
            pos = int(np.argmax(bad))
            raise DataError(
                f"{what} ({where}): non-numeric value {column.iloc[pos]!r} for {col!r} on "
                f"{_fmt_label(frame.index[pos], key_name)} ({int(bad.sum())} such cell(s) in "
                "that column). Write plain numbers; leave missing values empty."
            )
        out[col] = values.to_numpy(dtype=np.float64, na_value=np.nan)
    return pd.DataFrame(out, index=frame.index, columns=frame.columns)


def _tidy(frame: pd.DataFrame, *, where: str, what: str, levels: int | None) -> pd.DataFrame:
    """Parse, check and normalise an indexed table (see :func:`read_table` for the result)."""
    if frame.shape[0] == 0 or frame.shape[1] == 0:
        raise DataError(f"{what} ({where}) is empty: shape {frame.shape}.")
    frame = frame.copy()
    frame.columns = pd.Index([str(c).strip() for c in frame.columns], dtype=object)
    if frame.columns.has_duplicates:
        dup = sorted(set(frame.columns[frame.columns.duplicated()]))
        raise DataError(f"{what} ({where}) has duplicate columns {_few(dup)}; keep one each.")
    unnamed = np.array([c == "" or c.startswith(_UNNAMED) for c in frame.columns])
    if unnamed.any():
        raise DataError(
            f"{what} ({where}): data column {int(np.argmax(unnamed)) + 1} has no name; name "
            "every column (ticker or factor). A per-step or two-level table names its second "
            "column tau, factor or ticker."
        )
    nlev = frame.index.nlevels
    if frame.index.name == "factor" and nlev == 1 and levels is None:
        index = pd.Index([str(v).strip() for v in frame.index], dtype=object, name="factor")
        if index.has_duplicates:
            raise DataError(
                f"{what} ({where}) has duplicate factor rows "
                f"{_few(sorted(set(index[index.duplicated()])))}."
            )
        frame.index = index
        return _to_float(frame, None, where, what)
    if nlev > 2 or (levels is not None and nlev != levels):
        want = {1: "one (date)", 2: "two (date, key)"}.get(levels, "one or two")
        raise DataError(
            f"{what} ({where}) has {nlev} index level(s) {list(frame.index.names)}; expected "
            f"{want}. The first column(s) must be the index: date (and tau, factor or ticker)."
        )
    names = [
        None if n is None or str(n).startswith(_UNNAMED) else str(n).strip()
        for n in frame.index.names
    ]
    key_name = None
    if nlev == 1:
        frame.index = _parse_dates(frame.index, where, what, names[0])
    else:
        key_name = names[1].lower() if names[1] and names[1].lower() in _KEYS else names[1]
        dates = _parse_dates(frame.index.get_level_values(0), where, what, names[0])
        keys = _parse_key(frame.index.get_level_values(1), key_name, where, what)
        key_name = keys.name
        frame.index = pd.MultiIndex.from_arrays([dates, keys], names=["date", key_name])
    _check_order(frame.index, key_name, where, what)
    return _to_float(frame, key_name, where, what)


# ------------------------------------------------------------------------ tables


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


class _Table:
    """One loaded table (see :func:`read_table`) with the checks the file objects share.

    A two-level table is kept lexsorted (fast ``(date, key)`` look-ups);
    ``first_keys`` keeps the second-level labels of its first date in file order.
    """

    def __init__(self, frame: pd.DataFrame, where: str, what: str):
        self.where = where
        self.what = what
        self.key_name: str | None = None
        self.first_keys: list[Any] = []
        if isinstance(frame.index, pd.MultiIndex):
            self.key_name = frame.index.names[1]
            first = frame.index.get_level_values(0)[0]
            keys = frame.index.get_level_values(1)
            self.first_keys = list(keys[frame.index.get_level_values(0) == first])
            frame = frame.sort_index()
        self.frame = frame

    @property
    def label(self) -> str:
        return f"{self.what} ({self.where})"

    @property
    def dates(self) -> pd.DatetimeIndex:
        index = self.frame.index
        return index.levels[0] if isinstance(index, pd.MultiIndex) else index

    def span(self) -> str:
        d = self.dates
        return f"its dates run from {_fmt(d[0])} to {_fmt(d[-1])}"

    def row(self, t: pd.Timestamp, key: Any = None, hint: str = "") -> Any:
        """The row (Series) or block (DataFrame) at ``t`` (and ``key``); DataError if absent."""
        try:
            return self.frame.loc[t] if key is None else self.frame.loc[(t, key)]
        except KeyError:
            pass
        if t in self.dates:
            raise DataError(
                f"{self.label} has no row for {_fmt_label((t, key), self.key_name)}{hint}."
            ) from None
        raise DataError(
            f"{self.label} has no row for {_fmt(t)} ({self.span()}). It needs a row for every "
            "trading date of the backtest (there is no as-of fallback): add the row or start "
            "the backtest later" + hint + "."
        ) from None

    def require_dates(self, calendar: pd.DatetimeIndex) -> None:
        missing = calendar[~calendar.isin(self.dates)]
        if len(missing):
            raise DataError(
                f"{self.label} has no row for {_fmt(missing[0])}, the first of {len(missing)} "
                f"of the {len(calendar)} trading date(s) it lacks ({self.span()}). Add a row "
                "for every trading date of the backtest, or shorten the backtest."
            )

    def require_columns(self, names: list[str], noun: str = "ticker") -> None:
        columns = self.frame.columns
        missing = [c for c in names if c not in columns]
        if missing:
            raise DataError(
                f"{self.label} has no column for {noun}(s) {_few(missing)} "
                f"({len(columns)} column(s), e.g. {_few(list(columns), 5)}). Add a column for "
                f"every {noun} of the universe."
            )
        wanted = set(names)
        extra = [c for c in columns if c not in wanted]
        if extra:
            logger.info("%s: ignoring %d extra column(s) %s", self.label, len(extra), _few(extra))

    def require_rows(self, calendar: pd.DatetimeIndex, keys: list[Any], shape: str) -> None:
        """Every date of ``calendar`` has exactly the second-level rows ``keys``."""
        full = pd.MultiIndex.from_product([calendar, keys])
        absent = ~full.isin(self.frame.index)
        counts = self.frame.index.get_level_values(0).value_counts().reindex(calendar)
        over = calendar[(counts > len(keys)).to_numpy()]
        candidates = ([full[absent][0][0]] if absent.any() else []) + list(over[:1])
        if not candidates:
            return
        t = min(candidates)
        found = list(self.frame.loc[t].index)
        lacks = [k for k in keys if k not in set(found)]
        more = [k for k in found if k not in set(keys)]
        raise DataError(
            f"{self.label} on {_fmt(t)} is {len(found)} x {self.frame.shape[1]} "
            f"({len(found)} {self.key_name} row(s) x {self.frame.shape[1]} column(s)), expected "
            f"{shape}: rows missing {_few(lacks)}, rows not expected {_few(more)}. Give every "
            f"date the same {len(keys)} {self.key_name} rows."
        )

    def require_finite(self, block: pd.DataFrame, hint: str = "") -> None:
        values = block.to_numpy(dtype=np.float64)
        bad = ~np.isfinite(values)
        if bad.any():
            i, j = np.unravel_index(int(np.argmax(bad)), bad.shape)
            kind = "NaN" if np.isnan(values[i, j]) else "inf"
            raise DataError(
                f"{self.label} has {kind} for {block.columns[j]!r} on "
                f"{_fmt_label(block.index[i], self.key_name)} ({int(bad.sum())} NaN/inf "
                f"cell(s) in the rows and columns the backtest uses). Fill the value{hint}."
            )


def _load(source: Source, what: str, levels: int | None, key: str | None = None) -> _Table:
    """Read (or tidy) ``source``; ``key`` names and types a two-level table's second level."""
    where = _name(source)
    if isinstance(source, pd.DataFrame):
        frame = _tidy(source, where=where, what=what, levels=levels)
    else:
        frame = read_table(source, what=what, levels=levels)
    if key is not None and isinstance(frame.index, pd.MultiIndex):
        keys = frame.index.levels[1]
        if key == "tau" and not pd.api.types.is_integer_dtype(keys.dtype):
            keys = _parse_key(frame.index.get_level_values(1), "tau", where, what)
            frame.index = pd.MultiIndex.from_arrays([frame.index.get_level_values(0), keys])
        elif key != "tau" and pd.api.types.is_integer_dtype(keys.dtype):
            frame.index = frame.index.set_levels(keys.astype(str).astype(object), level=1)
        frame.index = frame.index.set_names(["date", key])
    return _Table(frame, where, what)


def _check_source(source: Any, what: str) -> Source:
    if isinstance(source, pd.DataFrame | str | os.PathLike):
        return source
    raise SpecError(
        f"{what} must be a pandas DataFrame or the path of a .csv/.parquet file, got "
        f"{type(source).__name__}."
    )


def _name(source: Source) -> str:
    return _IN_MEMORY if isinstance(source, pd.DataFrame) else str(source)


def _check_matrices(
    table: _Table, dates: pd.DatetimeIndex | None, names: list[str], fix: str
) -> None:
    """Finite, symmetric (relative ``_TOL``) and PSD (``min eig >= -_TOL * max eig``) blocks.

    ``dates`` None checks the constant matrix ``table.frame.loc[names, names]``;
    otherwise the ``names x names`` block of every date, a batch of dates at a time.
    """
    n = len(names)
    if dates is None:
        batches = [(["(constant)"], table.frame.loc[names, names])]
    else:
        size = max(1, _BATCH_ENTRIES // max(n * n, 1))
        batches = (
            (
                [f"on {_fmt(d)}" for d in dates[i : i + size]],
                table.frame.loc[pd.MultiIndex.from_product([dates[i : i + size], names]), names],
            )
            for i in range(0, len(dates), size)
        )
    for labels, frame in batches:
        table.require_finite(frame)
        block = frame.to_numpy(dtype=np.float64).reshape(len(labels), n, n)
        asym = np.abs(block - block.transpose(0, 2, 1))
        bad = asym.max(axis=(1, 2)) > _TOL * np.abs(block).max(axis=(1, 2))
        if bad.any():
            b = int(np.argmax(bad))
            i, j = np.unravel_index(int(np.argmax(asym[b])), (n, n))
            raise DataError(
                f"{table.label} {labels[b]} is not symmetric: [{names[i]!r}, {names[j]!r}] = "
                f"{block[b, i, j]:.6g} but [{names[j]!r}, {names[i]!r}] = {block[b, j, i]:.6g} "
                f"(tolerance {_TOL:g} x max |entry|). Symmetrise it, e.g. S = (S + S.T) / 2."
            )
        eig = np.linalg.eigvalsh(block)
        low, high = eig[:, 0], eig[:, -1]
        bad = low < -_TOL * np.maximum(high, 0.0)
        if bad.any():
            b = int(np.argmax(bad))
            raise DataError(
                f"{table.label} {labels[b]} is not positive semidefinite: smallest eigenvalue "
                f"{low[b]:.6g} < -{_TOL:g} x largest ({high[b]:.6g}). Clip the negative "
                "eigenvalues (w, V = np.linalg.eigh(S); S = V @ np.diag(w.clip(0)) @ V.T), "
                f"shrink it toward its diagonal{fix}."
            )


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

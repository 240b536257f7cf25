"""Reading, parsing and checking the tables behind the file-based objects.

:func:`read_table` reads a CSV or parquet file into a float64 frame with a
tz-naive date index (or a ``(date, tau | factor | ticker)`` index, or the
factor names of a constant factor table), checking its format: header and
separator, index columns, dates and keys, sort order, duplicates and numeric
cells. ``_Table`` wraps one loaded table with the look-ups and
``require_*`` checks the objects of :mod:`mpo.forecast.files` share,
``_load`` turns a source (a ``DataFrame`` or a path) into one, and
``_check_matrices`` checks covariance blocks for finiteness, symmetry and
positive semidefiniteness. Every failure is a :class:`~mpo.errors.DataError`
naming the file, the offending date, ticker or cell, and a fix.
"""

from __future__ import annotations

import csv
import functools
import logging
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mpo.errors import DataError, SpecError

__all__ = ["Source", "read_table"]

#: The messages keep the logger name they had before this module was split
#: out of :mod:`mpo.forecast.files`.
logger = logging.getLogger("mpo.forecast.files")

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
            try:
                parsed = pd.to_datetime(raw.astype(str).str.strip(), errors="coerce")
            except ValueError:  # mixed UTC offsets (a DST change): exchange-local days
                from mpo.data.dates import local_dates

                return local_dates(raw.astype(str).str.strip(), f"{what} ({where})").rename("date")
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


def _read_once(path: str | os.PathLike, what: str, levels: int | None) -> pd.DataFrame:
    """:func:`read_table`, read once per file version (a copy each call).

    Every policy built from a spec, and every tuning trial, asks for the same
    files again; the cache key is the file's resolved path, size and mtime, so
    an edited file is read anew.
    """
    resolved = Path(path).expanduser().resolve()
    try:
        st = resolved.stat()
    except OSError:
        return read_table(path, what=what, levels=levels)  # its error names the file
    return _read_cached(str(resolved), st.st_mtime_ns, st.st_size, what, levels).copy()


@functools.lru_cache(maxsize=32)
def _read_cached(
    path: str, mtime_ns: int, size: int, what: str, levels: int | None
) -> pd.DataFrame:
    return read_table(path, what=what, levels=levels)


def _load(source: Source, what: str, levels: int | None, key: str | None = None) -> _Table:
    """Read (or tidy) ``source``; ``key`` names and types a two-level table's second level."""
    where = _name(source)
    if isinstance(source, pd.DataFrame):
        frame = _tidy(source, where=where, what=what, levels=levels)
    else:
        frame = _read_once(source, what, levels)
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

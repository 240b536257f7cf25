"""The user's own data: a directory of wide (dates x tickers) CSV or parquet files.

Layout of the directory::

    prices.csv | prices.parquet     daily prices            (this one ...
    returns.csv | returns.parquet   forward returns r_t = p_{t+1}/p_t - 1   ... or this one)
    volumes.csv | volumes.parquet   dollar volumes          (optional)
    cash.csv | cash.parquet         one column of per-period cash returns (optional, else 0)

The first column (or the parquet index) holds the dates, one per row; the
other columns are tickers. With ``prices``, gaps of at most ``max_ffill`` days
are forward filled (:func:`mpo.data.forward_fill_gaps`); with ``returns`` no
value may be missing. Without ``volumes`` an ``adv`` assumption is required.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd

from mpo.data.dates import local_dates
from mpo.data.market import DEFAULT_MAX_FFILL, MarketData
from mpo.errors import DataError

__all__ = ["load_files", "read_wide"]

logger = logging.getLogger(__name__)

_KINDS = ("prices", "returns", "volumes", "cash")
_SUFFIXES = (".csv", ".parquet")


def _find(directory: Path, kind: str) -> Path | None:
    """The file holding ``kind`` (csv or parquet), None if absent; both is an error."""
    found = [directory / f"{kind}{s}" for s in _SUFFIXES if (directory / f"{kind}{s}").is_file()]
    if len(found) > 1:
        raise DataError(
            f"{directory} has both {found[0].name} and {found[1].name}; keep only one of them."
        )
    return found[0] if found else None


def _parse_dates(raw: pd.Index, path: Path) -> pd.DatetimeIndex:
    """Dates of ``path``'s first column as exchange-local days; a value that does not parse is named.

    Timestamps with a UTC offset (``2020-03-06 00:00:00-05:00``, as saved from
    yfinance), also with different offsets across a DST change, become the
    calendar day of their own clock (:func:`mpo.data.dates.local_dates`).
    """
    if isinstance(raw, pd.DatetimeIndex):
        return local_dates(raw, path.name)
    values = pd.Series(raw, dtype=object)
    try:
        parsed = pd.to_datetime(values.astype(str), errors="coerce")
    except (ValueError, TypeError):  # mixed UTC offsets (a DST change), or naive and aware
        return local_dates(values, path.name)
    if (parsed.isna() | values.isna()).any():
        return local_dates(values, path.name)  # names the bad value
    return local_dates(pd.DatetimeIndex(parsed), path.name)  # tz-aware: local days


def _to_numeric(frame: pd.DataFrame, path: Path) -> pd.DataFrame:
    """Float frame; a non-numeric cell is reported with its ticker and date."""
    out = frame.apply(pd.to_numeric, errors="coerce").astype(float)
    bad = out.isna().to_numpy() & frame.notna().to_numpy()
    if bad.any():
        rows, cols = np.nonzero(bad)
        ticker, date = frame.columns[cols[0]], frame.index[rows[0]]
        raise DataError(
            f"{path.name}: non-numeric value {frame.iat[rows[0], cols[0]]!r} for ticker "
            f"{ticker!r} on {date.date()} ({int(bad.sum())} such cell(s)). Leave missing "
            "values empty and write numbers without units or thousands separators."
        )
    return out


def _refuse_repeated(path: Path, names: list[str]) -> None:
    """:class:`DataError` naming the ticker columns that appear more than once."""
    names = [str(n).strip() for n in names]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise DataError(
            f"{path.name} repeats ticker column(s) {repeated}: each ticker must appear once "
            "(two columns of one ticker would be traded as two assets)."
        )


def _parquet_names(path: Path) -> list[str]:
    """Column names of a parquet file's schema (pandas' stored index columns left out)."""
    import pyarrow.parquet as pq

    try:
        names = pq.read_schema(path).names
    except (OSError, ValueError) as exc:  # pyarrow.ArrowInvalid is a ValueError
        raise DataError(f"cannot read {path}: {exc}") from exc
    return [n for n in names if not str(n).startswith("__index_level_")]


def read_wide(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Read one wide dates x tickers CSV or parquet file, with dates and numbers checked.

    Parameters
    ----------
    path
        ``.csv`` (dates in the first column) or ``.parquet`` (dates in the index
        or, when the index is a plain range, in the first column).

    Returns
    -------
    pd.DataFrame
        Float values, ``DatetimeIndex`` named ``Date``, string ticker columns.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"file {path} does not exist.")
    if path.suffix == ".parquet":
        _refuse_repeated(path, _parquet_names(path))
    try:
        if path.suffix == ".parquet":
            frame = pd.read_parquet(path)
            if isinstance(frame.index, pd.RangeIndex):
                frame = frame.set_index(frame.columns[0])
        else:
            frame = pd.read_csv(path, index_col=0, dtype=str, keep_default_na=True)
    except (ValueError, OSError, IndexError) as exc:
        raise DataError(f"cannot read {path}: {exc}") from exc
    if frame.shape[1] == 0 and path.suffix != ".parquet":
        with open(path, encoding="utf-8", errors="replace") as fh:
            head = fh.readline()
        for sep, label in ((";", "semicolon"), ("\t", "tab")):
            if sep in head:
                raise DataError(
                    f"{path.name} looks {label}-separated ({head.strip()[:60]!r}); mpo reads "
                    "comma-separated CSV: convert it, e.g. pd.read_csv(path, sep="
                    f"{sep!r}).to_csv(path)."
                )
    if frame.shape[1] == 0 or frame.shape[0] == 0:
        raise DataError(f"{path.name} is empty: expected dates x tickers with at least one row.")
    if path.suffix != ".parquet":  # pandas renames a repeated header 'AAPL' to 'AAPL.1'
        import csv

        with open(path, encoding="utf-8", errors="replace", newline="") as fh:
            _refuse_repeated(path, next(csv.reader(fh))[1:])
    frame.index = _parse_dates(frame.index, path)
    frame.columns = [str(c).strip() for c in frame.columns]
    _refuse_repeated(path, list(frame.columns))  # e.g. 'AAPL' and ' AAPL' in a parquet file
    return _to_numeric(frame, path)


def _align_tickers(frame: pd.DataFrame, reference: pd.DataFrame, what: str, ref: str):
    only_here = sorted(set(frame.columns) - set(reference.columns))
    only_ref = sorted(set(reference.columns) - set(frame.columns))
    if only_here or only_ref:
        raise DataError(
            f"tickers of {what} and {ref} differ: only in {what}: {only_here}, only in "
            f"{ref}: {only_ref}. Give both files the same ticker columns."
        )
    return frame[list(reference.columns)]


def _read_cash(path: Path, index: pd.DatetimeIndex | None = None) -> pd.Series:
    """The one-column cash file, reindexed on ``index`` (every date required) if given."""
    cash = read_wide(path)
    if cash.shape[1] != 1:
        raise DataError(
            f"{path.name} must have one column of cash returns, got {cash.shape[1]}: "
            f"{list(cash.columns)[:5]}."
        )
    series = cash.iloc[:, 0]
    if index is None:
        return series.rename("cash")
    series = series.reindex(index)
    if series.isna().any():
        first = series.index[series.isna().to_numpy()][0]
        raise DataError(
            f"{path.name} has no cash return for {first.date()} ({int(series.isna().sum())} "
            "date(s) missing); it needs a value for every date of the prices/returns."
        )
    return series.rename("cash")


def load_files(
    directory: str | os.PathLike[str],
    *,
    adv: float | None = None,
    max_ffill: int = DEFAULT_MAX_FFILL,
) -> MarketData:
    """Load a directory of wide files (see the module docstring) as :class:`MarketData`.

    Parameters
    ----------
    directory
        Holds ``prices`` or ``returns``, optionally ``volumes`` and ``cash``.
    adv
        Assumed average daily dollar volume; required when there is no ``volumes`` file.
    max_ffill
        Longest run of missing prices filled by carrying the last price forward.

    Returns
    -------
    MarketData
        ``name='files:<directory name>'``.

    Raises
    ------
    DataError
        Missing directory or file, both prices and returns, unparseable dates,
        non-numeric cells, tickers that differ between files, or anything
        :class:`MarketData` rejects.
    """
    root = Path(directory)
    if not root.is_dir():
        raise DataError(f"data directory {root} does not exist (or is not a directory).")
    found = {kind: _find(root, kind) for kind in _KINDS}
    if found["prices"] and found["returns"]:
        raise DataError(
            f"{root} has both {found['prices'].name} and {found['returns'].name}: keep one "
            "(returns are computed from prices)."
        )
    if not (found["prices"] or found["returns"]):
        present = sorted(p.name for p in root.iterdir())[:10]
        raise DataError(
            f"{root} has no prices.csv/.parquet or returns.csv/.parquet (found {present}). "
            "Add a dates x tickers file of prices or of forward returns."
        )
    if found["volumes"] is None and adv is None:
        raise DataError(
            f"{root} has no volumes.csv/.parquet: add one (dollar volumes, dates x tickers) or "
            "set adv, an assumed average daily dollar volume, so the impact cost can be charged."
        )
    main = found["prices"] or found["returns"]
    frame = read_wide(main)
    volumes = None
    if found["volumes"] is not None:
        volumes = _align_tickers(
            read_wide(found["volumes"]), frame, found["volumes"].name, main.name
        )
    name = f"files:{root.name}"
    notes = tuple(f"{kind}: {path}" for kind, path in found.items() if path is not None)
    if found["prices"] is not None:
        cash: float | pd.Series = 0.0
        if found["cash"] is not None:
            # from_prices aligns it to the dates that keep a forward return
            cash = _read_cash(found["cash"])
        return MarketData.from_prices(
            frame, volumes, cash_return=cash, adv=adv, max_ffill=max_ffill, name=name, notes=notes
        )
    cash_series = (
        _read_cash(found["cash"], frame.index)
        if found["cash"] is not None
        else pd.Series(0.0, index=frame.index, name="cash")
    )
    if volumes is not None:
        volumes = volumes.reindex(frame.index)
    return MarketData(
        returns=frame,
        cash_return=cash_series,
        volumes=volumes,
        adv=adv,
        name=name,
        notes=notes,
    )

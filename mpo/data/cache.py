"""On-disk parquet cache of downloaded daily price histories, one file per ticker.

Each file holds one ticker's daily ``Open, High, Low, Close, Volume`` rows and,
in the parquet schema metadata, the date range it *covers*: the union of the
requested ranges already downloaded. Coverage, not the first and last rows, is
what decides whether a download is needed, so a ticker listed after the
requested start is not re-downloaded on every call.

Files are written atomically (temporary file in the same directory, ``fsync``,
``os.replace``): a crash or a failed download never leaves a half-written file
and never loses what was cached before.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from mpo.io import atomic_path

__all__ = ["CachedHistory", "PriceCache", "DEFAULT_CACHE_DIR"]

logger = logging.getLogger(__name__)

#: Default cache location, relative to the working directory (ignored by git).
DEFAULT_CACHE_DIR = Path("data") / "cache" / "yfinance"

_META_KEY = b"mpo"
_FORMAT_VERSION = 1
COLUMNS = ("Open", "High", "Low", "Close", "Volume")


@dataclass(frozen=True)
class CachedHistory:
    """One ticker's cached rows and the date range ``[covered_start, covered_end)`` they cover.

    Parameters
    ----------
    frame
        Daily rows, index ``Date`` (tz-naive, sorted, unique), columns ``COLUMNS``.
    covered_start, covered_end
        Every trading day in ``[covered_start, covered_end)`` that the source
        had has been downloaded (``covered_end`` exclusive, like yfinance's ``end``).
    """

    frame: pd.DataFrame
    covered_start: pd.Timestamp
    covered_end: pd.Timestamp


class PriceCache:
    """Directory of per-ticker parquet files.

    Parameters
    ----------
    directory
        Where the files live; created on the first write.
    """

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        from mpo.io import remove_stale_temps

        remove_stale_temps(self.directory)  # a download killed mid-write left one

    def path(self, ticker: str) -> Path:
        """File of ``ticker`` (percent-encoded, so ``^GSPC`` or ``BRK/B`` are safe names)."""
        return self.directory / f"{quote(ticker, safe='')}.parquet"

    def read(self, ticker: str) -> CachedHistory | None:
        """The cached history of ``ticker``, or None if absent or unreadable.

        An unreadable file is logged and treated as absent (it will be
        re-downloaded and replaced); it is not deleted.
        """
        path = self.path(ticker)
        if not path.exists():
            return None
        try:
            table = pq.read_table(path)
            meta = json.loads((table.schema.metadata or {})[_META_KEY])
            frame = table.to_pandas()
            frame.index = pd.DatetimeIndex(frame.index, name="Date")
            return CachedHistory(
                frame=frame[list(COLUMNS)].astype(float),
                covered_start=pd.Timestamp(meta["covered_start"]),
                covered_end=pd.Timestamp(meta["covered_end"]),
            )
        except Exception as exc:  # corrupted or foreign file: re-download rather than fail
            logger.warning(
                "cache file %s for %r is unreadable (%s); it will be re-downloaded.",
                path,
                ticker,
                exc,
            )
            return None

    def write(self, ticker: str, history: CachedHistory) -> Path:
        """Atomically replace ``ticker``'s file with ``history``; return its path."""
        self.directory.mkdir(parents=True, exist_ok=True)
        frame = history.frame[list(COLUMNS)].astype(float)
        frame.index = pd.DatetimeIndex(frame.index, name="Date")
        meta = {
            "format_version": _FORMAT_VERSION,
            "ticker": ticker,
            "covered_start": str(history.covered_start.date()),
            "covered_end": str(history.covered_end.date()),
        }
        table = pa.Table.from_pandas(frame)
        table = table.replace_schema_metadata(
            {**(table.schema.metadata or {}), _META_KEY: json.dumps(meta).encode()}
        )
        final = self.path(ticker)
        with atomic_path(final) as tmp:
            pq.write_table(table, tmp)
        logger.debug("cached %d row(s) of %r in %s.", len(frame), ticker, final)
        return final

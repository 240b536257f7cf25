"""Universe lists for multi-universe studies: read them from text files, draw them at random.

A universe file holds one ticker per line; ``#`` starts a comment (a whole line
or the end of one) and blank lines are ignored::

    # sp20-sub10-seed0: 10 tickers drawn from sp20
    AAPL
    JPM   # banks

The shipped lists live in ``data/universes/`` (built by ``scripts/build_data.py``
with :func:`draw_universes`).
"""

from __future__ import annotations

import difflib
import logging
import math
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from mpo.errors import DataError, SpecError

__all__ = ["draw_universes", "load_universe"]

logger = logging.getLogger(__name__)


def _entries(path: Path) -> list[tuple[int, str]]:
    """``(line number, ticker)`` of every non-comment, non-blank line of ``path``."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(
            f"universe file {str(path)!r} does not exist; give the path of a text file with one "
            "ticker per line (see data/universes/)."
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(
            f"universe file {str(path)!r} cannot be read as UTF-8 text: {exc}."
        ) from None
    entries = []
    for number, line in enumerate(text.splitlines(), start=1):
        ticker = line.split("#", 1)[0].strip()
        if not ticker:
            continue
        if len(ticker.split()) > 1:
            raise DataError(
                f"{path}:{number}: {ticker!r} holds more than one name; write one ticker per line."
            )
        entries.append((number, ticker))
    return entries


def _check_known(path: Path, entries: list[tuple[int, str]], known: Iterable[str]) -> None:
    names = [str(k) for k in known]
    allowed = set(names)
    for number, ticker in entries:
        if ticker not in allowed:
            close = difflib.get_close_matches(ticker, names, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise DataError(
                f"{path}:{number}: ticker {ticker!r} is not in the known universe of "
                f"{len(names)} ticker(s) (e.g. {', '.join(names[:5])}).{hint} Fix the line or "
                "load the file against the right universe."
            )


def load_universe(path: str | os.PathLike[str], *, known: Iterable[str] | None = None) -> list[str]:
    """Read a universe file: one ticker per line, ``#`` comments, blank lines ignored.

    Parameters
    ----------
    path
        The text file.
    known
        When given, every ticker must be one of these (e.g. ``market.tickers``).

    Returns
    -------
    list of str
        The tickers in file order.

    Raises
    ------
    DataError
        The file is missing or unreadable, holds no ticker, a line holds more
        than one name, a ticker is repeated (both line numbers named) or is not
        in ``known`` (``file:line`` and the ticker named, with the closest known
        one).
    """
    path = Path(path)
    entries = _entries(path)
    if not entries:
        raise DataError(
            f"universe file {str(path)!r} holds no ticker (only comments or blank lines); "
            "write one ticker per line."
        )
    first: dict[str, int] = {}
    for number, ticker in entries:
        if ticker in first:
            raise DataError(
                f"{path}:{number}: ticker {ticker!r} is repeated (first on line "
                f"{first[ticker]}); a universe lists each ticker once."
            )
        first[ticker] = number
    if known is not None:
        _check_known(path, entries, known)
    tickers = [ticker for _, ticker in entries]
    logger.debug("universe %s: %d ticker(s).", path, len(tickers))
    return tickers


def _check_draw_arguments(tickers: Sequence[str], k: int, size: int, seed: int) -> list[str]:
    if isinstance(tickers, str):
        raise DataError(f"tickers must be a list of ticker names, got the string {tickers!r}.")
    names = [str(t) for t in tickers]
    if not names:
        raise DataError("tickers is empty: give the universe to draw sub-universes from.")
    repeated = sorted(t for t, n in Counter(names).items() if n > 1)
    if repeated:
        raise DataError(f"tickers lists {repeated} more than once; give each ticker once.")
    for label, value in (("k", k), ("size", size)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
            raise SpecError(f"{label} must be an integer >= 1, got {label}={value!r}.")
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer):
        raise SpecError(f"seed must be an integer, got seed={seed!r}.")
    if size > len(names):
        raise SpecError(
            f"size must be at most the {len(names)} ticker(s) drawn from, got {size=}; lower "
            "size or give more tickers."
        )
    possible = math.comb(len(names), int(size))
    if k > possible:
        raise SpecError(
            f"k={k} distinct universes of size {size} cannot be drawn from {len(names)} "
            f"ticker(s): there are only {possible}. Lower k or change size."
        )
    return names


def draw_universes(tickers: Sequence[str], k: int, size: int, seed: int) -> list[list[str]]:
    """Draw ``k`` distinct sub-universes of ``size`` tickers, reproducibly.

    Each draw is ``size`` tickers chosen without replacement by
    ``np.random.default_rng(seed).choice``; a draw equal (as a set) to an
    earlier one is discarded and drawn again. Tickers keep the order of
    ``tickers`` inside each universe.

    Parameters
    ----------
    tickers
        The universe drawn from (unique names).
    k
        Number of universes, ``1 <= k <= comb(len(tickers), size)``.
    size
        Tickers per universe, ``1 <= size <= len(tickers)``.
    seed
        Seed of the one generator used; same seed, same universes.

    Returns
    -------
    list of list of str
        ``k`` universes, pairwise different as sets.

    Raises
    ------
    DataError
        ``tickers`` is empty, a string, or repeats a name.
    SpecError
        ``k``, ``size`` or ``seed`` is not a valid integer, ``size`` exceeds
        ``len(tickers)``, or ``k`` exceeds the number of distinct universes.

    Examples
    --------
    >>> draw_universes(["A", "B", "C", "D"], k=2, size=2, seed=0)
    [['C', 'D'], ['A', 'B']]
    """
    names = _check_draw_arguments(tickers, k, size, seed)
    rng = np.random.default_rng(int(seed))
    seen: set[frozenset[int]] = set()
    out: list[list[str]] = []
    while len(out) < k:
        picked = frozenset(int(i) for i in rng.choice(len(names), size=int(size), replace=False))
        if picked in seen:
            continue
        seen.add(picked)
        out.append([names[i] for i in sorted(picked)])
    return out

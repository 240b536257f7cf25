"""Why a Yahoo download failed: the network, a rate limit, or no data for the symbol.

``yfinance.download`` never raises for a failed ticker: it logs the exception
(``['AAPL', 'MSFT']: DNSError('Failed to perform, curl: (6) Could not resolve
host: ...')`` on the ``yfinance`` logger) and returns empty columns. The
download wrapper collects those records (:class:`YahooErrorLog`) and the
exceptions that do escape; :func:`from_exception` and :func:`from_log` turn
either into a :class:`Failure` whose ``kind`` decides the message and whether
the cache may serve instead.
"""

from __future__ import annotations

import errno
import logging
import re
from typing import NamedTuple

__all__ = ["Failure", "YahooErrorLog", "from_exception", "from_log", "hint"]

#: Exception class names (anywhere in the MRO) of an unreachable network: Python's own,
#: requests' and curl_cffi's (which yfinance 1.x uses).
_NETWORK_CLASSES = frozenset(
    {
        "ConnectionError",
        "DNSError",
        "Timeout",
        "TimeoutError",
        "ConnectTimeout",
        "ReadTimeout",
        "ProxyError",
        "SSLError",
        "gaierror",
        "MaxRetryError",
        "NewConnectionError",
        "ConnectionResetError",
        "ConnectionRefusedError",
        "ConnectionAbortedError",
    }
)
_NETWORK_ERRNOS = frozenset(
    {errno.ENETUNREACH, errno.EHOSTUNREACH, errno.ECONNREFUSED, errno.ECONNRESET, errno.ETIMEDOUT}
)
#: curl's and the OS's words for an unreachable network, in a logged message.
_NETWORK_TEXT = re.compile(
    r"could not resolve host|curl: \((5|6|7|28|35)\)|failed to connect|timed out|"
    r"network is unreachable|connection (refused|reset|aborted)|name or service not known",
    re.IGNORECASE,
)
_RATE_TEXT = re.compile(r"YFRateLimitError|too many requests|rate limit", re.IGNORECASE)
#: ``ClassName('message')``: how yfinance logs an exception (its repr).
_REPR = re.compile(r"^\s*([A-Za-z_][\w.]*)\((['\"])(.*)\2\)\s*$", re.DOTALL)
_NO_INFO = "no data returned for the symbol (unknown or delisted symbol, or rate limited)"


class Failure(NamedTuple):
    """One ticker's failure: ``kind`` is ``network``, ``rate_limited``, ``no_data`` or ``error``."""

    kind: str
    detail: str = ""

    def __str__(self) -> str:
        if self.kind == "network":
            return f"network unreachable ({self.detail})"
        if self.kind == "rate_limited":
            return f"rate limited by Yahoo ({self.detail})"
        if self.kind == "error":
            return self.detail
        return f"no data returned for the symbol ({self.detail})" if self.detail else _NO_INFO


def _kind(class_names: set[str], text: str, other: str = "no_data") -> str:
    if class_names & _NETWORK_CLASSES or _NETWORK_TEXT.search(text):
        return "network"
    if "YFRateLimitError" in class_names or _RATE_TEXT.search(text):
        return "rate_limited"
    return other


def from_exception(exc: BaseException) -> Failure:
    """The :class:`Failure` of an exception raised by yfinance, requests or curl_cffi."""
    names = {cls.__name__ for cls in type(exc).__mro__}
    detail = f"{type(exc).__name__}: {exc}"
    kind = _kind(names, str(exc), other="error")
    if isinstance(exc, OSError) and exc.errno in _NETWORK_ERRNOS:
        kind = "network"
    return Failure(kind, detail)


def from_log(message: str | None) -> Failure:
    """The :class:`Failure` of a ticker from yfinance's logged error (None: nothing logged)."""
    if not message:
        return Failure("no_data")
    match = _REPR.match(message)
    if match:
        name, text = match.group(1).rpartition(".")[2], match.group(3)
        return Failure(_kind({name}, text), f"{name}: {text}")
    return Failure(_kind(set(), message), message.strip())


def hint(kinds: set[str]) -> str:
    """What to do about failures of these kinds (one sentence each)."""
    out = []
    if "network" in kinds:
        out.append("Check the internet connection (or proxy) and retry")
    if "rate_limited" in kinds:
        out.append("wait a few minutes and retry (rate limited)")
    if "error" in kinds:
        out.append("retry, and report the error if it persists")
    if "no_data" in kinds:
        out.append(
            "check the symbols on finance.yahoo.com or drop them, or wait and retry if rate limited"
        )
    return "; ".join(out)


class YahooErrorLog(logging.Handler):
    """Collects the per-ticker errors that ``yfinance.download`` logs instead of raising.

    Use as a context manager around the call; :attr:`by_ticker` maps each
    ticker named in an error record to its message (``DNSError('...')``).
    """

    _LINE = re.compile(r"^\s*\[([^\]]*)\]:\s*(.+)$", re.DOTALL)
    _ONE = re.compile(r"Failed to get ticker '([^']+)' reason:\s*(.+)$", re.DOTALL)

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.by_ticker: dict[str, str] = {}
        self._logger = logging.getLogger("yfinance")

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        line = self._LINE.match(message)
        if line:
            for ticker in re.findall(r"'([^']+)'", line.group(1)):
                self.by_ticker[ticker.upper()] = line.group(2).strip()
            return
        one = self._ONE.search(message)
        if one:  # a per-ticker line; the summary line, when it comes, has the exception class
            self.by_ticker.setdefault(one.group(1).upper(), one.group(2).strip())

    def __enter__(self) -> YahooErrorLog:
        self._logger.addHandler(self)
        return self

    def __exit__(self, *exc) -> None:
        self._logger.removeHandler(self)

"""Market data: the validated :class:`MarketData` bundle and its sources."""

from mpo.data.bundled import load_dow30_2014, load_sp20
from mpo.data.cache import CachedHistory, PriceCache
from mpo.data.dates import Frequency, check_date_gaps, frequency, local_dates
from mpo.data.files import load_files, read_wide
from mpo.data.market import MarketData, forward_fill_gaps, returns_from_prices
from mpo.data.sources import SOURCES, load_market_data
from mpo.data.synthetic import SyntheticMarket, SyntheticTruth, make_synthetic, simulate_market
from mpo.data.yahoo import PriceVolume, download_prices, load_yfinance, parse_download

__all__ = [
    "SOURCES",
    "CachedHistory",
    "Frequency",
    "MarketData",
    "PriceCache",
    "PriceVolume",
    "SyntheticMarket",
    "SyntheticTruth",
    "check_date_gaps",
    "download_prices",
    "forward_fill_gaps",
    "frequency",
    "load_dow30_2014",
    "load_files",
    "load_market_data",
    "load_sp20",
    "load_yfinance",
    "local_dates",
    "make_synthetic",
    "parse_download",
    "read_wide",
    "returns_from_prices",
    "simulate_market",
]

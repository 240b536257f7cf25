"""An example third-party mpo plugin: one data source and one policy kind.

Declared in this package's ``pyproject.toml``::

    [project.entry-points."mpo.data_sources"]
    example_market = "mpo_example_plugin:example_market"

    [project.entry-points."mpo.policies"]
    example_kind = "mpo_example_plugin:ExamplePolicyKind"

Once installed, ``mpo backtest SPEC --data example_market`` loads
:func:`example_market`, with no change to mpo.
"""

from __future__ import annotations

import dataclasses

from mpo.data.market import MarketData
from mpo.data.synthetic import make_synthetic
from mpo.errors import DataError

__all__ = ["EXAMPLE_SEED", "ExamplePolicyKind", "example_market"]

#: The seed of :func:`example_market`: the market is the same on every call.
EXAMPLE_SEED = 7


def example_market(argument: str | None = None, **options) -> MarketData:
    """A small deterministic market: 4 synthetic assets, 400 business days from 2015-01-05.

    Parameters
    ----------
    argument
        What follows ``example_market:`` in a source name; this source takes none.
    **options
        The keywords of :func:`mpo.data.sources.load_market_data` (``tickers``,
        ``start``, ``seed``...). They are ignored: mpo selects tickers and dates
        afterwards, and the seed is fixed (:data:`EXAMPLE_SEED`).

    Returns
    -------
    MarketData
        Named ``example_market``, with synthetic prices and dollar volumes.
    """
    if argument is not None:
        raise DataError(
            f"source 'example_market' takes no argument, got {argument!r}; write example_market."
        )
    data = make_synthetic(n_assets=4, n_periods=400, seed=EXAMPLE_SEED, start="2015-01-05")
    return dataclasses.replace(data, name="example_market")


class ExamplePolicyKind:
    """The policy kind ``example_kind`` (entry-point group ``mpo.policies``).

    A placeholder for the policy-kind interface: like Hold, it never trades.
    The registry of policy kinds gives it its name on registration.
    """

    #: What the kind does, for listings.
    description = "Example plugin policy: keep the initial portfolio (like hold)."

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

import cvxportfolio as cvx
import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from mpo.data.market import MarketData
from mpo.data.synthetic import make_synthetic
from mpo.errors import DataError
from mpo.policies import PolicyKind

__all__ = ["EXAMPLE_SEED", "ExamplePolicyKind", "InverseVolatility", "example_market"]

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


class InverseVolatility(cvx.policies.Policy):
    """Rebalance every ``every`` periods to weights proportional to 1 / (past volatility)."""

    def __init__(self, lookback: int, every: int, calendar):
        self.lookback = lookback
        self.rebalance = set(calendar[::every]) if calendar is not None else None

    def values_in_time(self, t, current_weights, past_returns, **kwargs):
        if self.rebalance is not None and t not in self.rebalance:
            return current_weights
        vol = past_returns.iloc[-self.lookback :, :-1].std().to_numpy()
        w = (1.0 / vol) / (1.0 / vol).sum()
        return pd.Series(np.append(w, 0.0), index=current_weights.index)


class ExamplePolicyKind(PolicyKind):
    """The policy kind ``example_kind`` (entry-point group ``mpo.policies``): inverse volatility.

    Its settings come from the spec's ``[params]`` table (validated by :attr:`Params`)::

        kind = "example_kind"
        [params]
        lookback = 40
        every = 10
    """

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")

        lookback: int = Field(default=60, ge=2)
        every: int = Field(default=21, ge=1)

    def required_history(self) -> int:
        return max(super().required_history(), self.params.lookback)

    def build(self, universe, trading_calendar):
        return InverseVolatility(self.params.lookback, self.params.every, trading_calendar)

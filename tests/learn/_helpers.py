"""Small markets and specs shared by the DMPO learning tests (each test owns its seeds).

Importing this module pins torch to one intra-op thread: the tiny batched solves of these
tests run ~10x slower with two threads on two cores (and results are then identical
across machines with different core counts).
"""

from __future__ import annotations

import torch

from mpo.data.synthetic import make_synthetic
from mpo.learn.config import TrainSpec
from mpo.learn.dataset import chronological_split, make_dataset

torch.set_num_threads(1)


def tiny_market(
    n_assets: int = 5, n_periods: int = 300, seed: int = 0, predictability: float = 0.0
):
    return make_synthetic(
        n_assets=n_assets, n_periods=n_periods, seed=seed, predictability=predictability
    )


def tiny_spec(**sections) -> TrainSpec:
    """A model small enough for a second-scale test; ``sections`` update the defaults."""
    base = {
        "features": {"window": 5, "features": ["returns", "volatility"]},
        "encoder": {"hidden": 8, "rank": 2, "mu_scale": 1e-2},
        "qp": {"delta": 0.3},
        "costs": {"half_spread": 5e-4},
        "split": {"val": 0.2, "test": 0.2},
        "train": {"epochs": 2, "batch_size": 32, "max_batches": 3, "patience": 5},
        "baselines": {"two_stage_epochs": 1, "direct_epochs": 1, "lw_lookback": 60},
    }
    for key, values in sections.items():
        base[key] = {**base.get(key, {}), **values}
    return TrainSpec().with_updates(**base)


def tiny_data(spec: TrainSpec, market=None):
    market = tiny_market() if market is None else market
    ds = make_dataset(market, spec.feature_spec(), spec.cost_model().estimates)
    s = spec.split
    return ds, chronological_split(ds, s.val, s.test, s.purge)

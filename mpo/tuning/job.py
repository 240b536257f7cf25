"""What a tuning worker receives: the study's settings, picklable for worker processes."""

from __future__ import annotations

from dataclasses import dataclass

from mpo.config import TUNABLE, PolicySpec
from mpo.data.market import MarketData
from mpo.policies import kind_of
from mpo.tuning.windows import Windows

__all__ = ["TuningJob", "tuned_spec", "with_params"]


@dataclass
class TuningJob:
    """Everything a worker process needs to run trials of one study.

    Attributes
    ----------
    spec
        The spec being tuned; its ``[tuning]`` section holds the search space
        and the objective's settings (e.g. ``risk_cap``).
    market
        The data, **truncated at the end of the training window**.
    windows
        The resolved training and test windows.
    objective
        Name of the tuning objective in :data:`mpo.tuning.objective.OBJECTIVES`
        (a name, not the object, so spawned workers look it up themselves).
    storage, study_name
        Where the study lives (:func:`mpo.tuning.storage.open_storage`).
    n_trials
        Finished trials the study should reach.
    seed
        Run seed (each worker derives its sampler's seed from it).
    prune, sub_periods
        Median pruning at ``sub_periods`` checkpoints of the training window.
    """

    spec: PolicySpec
    market: MarketData
    windows: Windows
    objective: str
    storage: str
    study_name: str
    n_trials: int
    seed: int
    prune: bool
    sub_periods: int


def with_params(spec: PolicySpec, params: dict, **top) -> PolicySpec:
    """``spec`` with tuned ``params`` written into their sections (the kind's ``tunable``)."""
    tunable = kind_of(spec).tunable
    sections: dict[str, dict] = {}
    for name, value in params.items():
        value = int(value) if name == "planning_horizon" else value
        sections.setdefault(tunable.get(name) or TUNABLE[name], {})[name] = value
    return spec.with_updates(**sections, **top)


def tuned_spec(spec: PolicySpec, params: dict) -> PolicySpec:
    """``spec`` with ``params``, named ``<name>-tuned``."""
    return with_params(spec, params, name=f"{spec.name}-tuned")

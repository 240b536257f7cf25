"""The research layer: walk-forward studies over folds, universes and specs, on Dask.

- :mod:`mpo.research.schedule`: the fold schedule and the purge rule;
- :mod:`mpo.research.tasks`: the pure tasks (fit one fold, stitch one spec);
- :mod:`mpo.research.stitch`: one simulation across all folds;
- :mod:`mpo.research.engine`: the task graph on ``dask.distributed``;
- :mod:`mpo.research.statistics`: CIs, paired differences, Holm, DSR, pooling;
- :mod:`mpo.research.walkforward`: :func:`plan` and :func:`walk_forward`.
"""

from mpo.research.schedule import Fold, make_folds, parse_duration, resolve_purge
from mpo.research.walkforward import Plan, WalkForwardResult, plan, walk_forward

__all__ = [
    "Fold",
    "Plan",
    "WalkForwardResult",
    "make_folds",
    "parse_duration",
    "plan",
    "resolve_purge",
    "walk_forward",
]

"""A sampler whose every trial is seeded by the study's progress, so a resumed study
samples exactly what an uninterrupted one would have.

A seeded :class:`optuna.samplers.TPESampler` draws from one random stream for the
whole life of the process: after a ``kill -9`` and a rerun the stream starts again,
and the resumed study either replays earlier points or (seeded differently) drifts
away from the uninterrupted run. :class:`ProgressSeededSampler` builds a fresh inner
sampler before every trial, seeded by (run seed, worker, number of finished trials):
the draw of a trial then depends only on the finished trials before it, which a
resumed study has too (every finished trial survives a kill). With one worker, a
study killed at any point and resumed with the same command ends with the same
finished trials (parameters and values) as an uninterrupted run; the trial that was
running at the kill is failed and its parameters are queued again, so it is evaluated
once more under a new number.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.trial import FrozenTrial, TrialState

__all__ = ["ProgressSeededSampler", "progress_seed"]

#: Trial states that count as finished (completed or pruned) for the seed.
_FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


def progress_seed(seed: int, worker: int, n_finished: int) -> int:
    """A 32-bit seed from the run ``seed``, the ``worker`` index and the finished trials."""
    text = f"{seed}:{worker}:{n_finished}"
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little")


class ProgressSeededSampler(optuna.samplers.BaseSampler):
    """Delegates to ``factory(seed)``, built anew before every trial.

    Parameters
    ----------
    factory
        Builds the inner sampler from a seed, e.g. ``lambda s: TPESampler(seed=s)``.
    seed, worker
        The run seed and the worker index (two workers never share a stream).
    """

    def __init__(self, factory: Callable[[int], optuna.samplers.BaseSampler], seed: int,
                 worker: int = 0) -> None:  # fmt: skip
        self._factory = factory
        self._seed = int(seed)
        self._worker = int(worker)
        self._inner = factory(progress_seed(self._seed, self._worker, 0))

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        n = len(study.get_trials(deepcopy=False, states=_FINISHED))
        self._inner = self._factory(progress_seed(self._seed, self._worker, n))
        self._inner.before_trial(study, trial)

    def infer_relative_search_space(
        self, study: optuna.Study, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        return self._inner.infer_relative_search_space(study, trial)

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        return self._inner.sample_relative(study, trial, search_space)

    def sample_independent(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        param_name: str,
        param_distribution: BaseDistribution,
    ) -> Any:
        return self._inner.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        state: TrialState,
        values: Sequence[float] | None,
    ) -> None:
        self._inner.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self._inner.reseed_rng()

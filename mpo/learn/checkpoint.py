"""Checkpoints of trained (or interrupted) models, with the provenance needed to reuse them.

A checkpoint is a plain dict of tensors and Python scalars/strings/lists (so that
``torch.load(weights_only=True)`` reads it): the ``state_dict``, the encoder, feature
and QP configurations, the universe (tickers in order), the training window, the data
fingerprint, the seed, package versions and, for an interrupted run, the training
state needed to resume. Files are written atomically (:func:`mpo.io.atomic_path`).
"""

from __future__ import annotations

import logging
import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mpo.errors import CheckpointError, SpecError
from mpo.io import atomic_path, package_versions
from mpo.learn.options import QPOptions

__all__ = ["FORMAT_VERSION", "Checkpoint", "check_compatible", "load_checkpoint", "save_checkpoint"]

logger = logging.getLogger(__name__)

#: Bumped when the layout changes; older files are refused with a clear message.
FORMAT_VERSION = 1

_REQUIRED = (
    "format_version",
    "kind",
    "state_dict",
    "encoder_config",
    "feature_config",
    "qp_config",
    "tickers",
    "train_window",
    "fingerprint",
    "seed",
    "versions",
)


@dataclass
class Checkpoint:
    """Contents of a checkpoint file.

    Attributes
    ----------
    kind : str
        ``"dmpo"``, ``"two_stage"`` or ``"direct"``.
    state_dict : dict
        The model's parameters and buffers.
    encoder_config, feature_config, qp_config : dict
        ``EncoderConfig.to_dict()``, ``FeatureSpec.to_dict()``, ``QPOptions.to_dict()``
        (older files: plus the run's cost keys, ignored); a
        :class:`~mpo.learn.options.QPOptions` given as ``qp_config`` is stored as its dict.
    tickers : list of str
        Universe, in the order of the model's asset axis.
    train_window : list of str
        First and last training decision dates (ISO).
    fingerprint : str
        :meth:`MarketData.fingerprint` of the training data.
    seed : int
    versions : dict
        :func:`mpo.io.package_versions` at save time.
    training_state : dict or None
        Optimiser, scheduler, RNG, history and early-stopping state (resumable runs;
        ``mpo train``'s final checkpoints keep their finished state too, so that a rerun
        over an interrupted run folder reuses the model instead of retraining it).
    extra : dict
        Free-form metadata (history, remedy, ...), JSON-like values only.
    """

    kind: str
    state_dict: dict[str, torch.Tensor]
    encoder_config: dict
    feature_config: dict
    qp_config: dict
    tickers: list[str]
    train_window: list[str]
    fingerprint: str
    seed: int
    versions: dict[str, str] = field(default_factory=package_versions)
    training_state: dict | None = None
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.qp_config, QPOptions):
            self.qp_config = self.qp_config.to_dict()

    def qp_options(self) -> QPOptions:
        """The typed QP options of ``qp_config`` (old layouts included).

        Raises
        ------
        CheckpointError
            If ``qp_config`` holds unknown keys or invalid values.
        """
        try:
            return QPOptions.from_dict(self.qp_config)
        except SpecError as exc:
            raise CheckpointError(
                f"checkpoint ({self.kind}) has invalid QP options: {exc}"
            ) from None

    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "kind": self.kind,
            "state_dict": dict(self.state_dict),
            "encoder_config": dict(self.encoder_config),
            "feature_config": dict(self.feature_config),
            "qp_config": dict(self.qp_config),
            "tickers": list(self.tickers),
            "train_window": list(self.train_window),
            "fingerprint": self.fingerprint,
            "seed": int(self.seed),
            "versions": dict(self.versions),
            "training_state": self.training_state,
            "extra": dict(self.extra),
        }


def save_checkpoint(ckpt: Checkpoint, path: str | Path) -> Path:
    """Write ``ckpt`` atomically to ``path`` (parent folders are created)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(ckpt.to_dict(), tmp)
    logger.info("checkpoint (%s) written to %s", ckpt.kind, path)
    return path


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Read a checkpoint with ``torch.load(weights_only=True)``.

    Raises
    ------
    CheckpointError
        Missing file, unreadable/corrupted file, wrong layout or format version.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist.")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as exc:
        raise CheckpointError(
            f"checkpoint {str(path)!r} is corrupted or not a torch file ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}). Retrain or restore it."
        ) from None
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"checkpoint {str(path)!r} is corrupted or holds objects other than tensors and "
            f"plain data (refused by torch.load(weights_only=True)): {str(exc).splitlines()[0]}"
        ) from None
    if not isinstance(raw, dict):
        raise CheckpointError(
            f"checkpoint {str(path)!r} holds a {type(raw).__name__}, expected an mpo checkpoint dict."
        )
    missing = [k for k in _REQUIRED if k not in raw]
    if missing:
        raise CheckpointError(f"checkpoint {str(path)!r} lacks the field(s) {missing}.")
    if raw["format_version"] != FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {str(path)!r} has format version {raw['format_version']}, this mpo "
            f"reads version {FORMAT_VERSION}."
        )
    return Checkpoint(
        kind=raw["kind"],
        state_dict=raw["state_dict"],
        encoder_config=raw["encoder_config"],
        feature_config=raw["feature_config"],
        qp_config=raw["qp_config"],
        tickers=list(raw["tickers"]),
        train_window=list(raw["train_window"]),
        fingerprint=raw["fingerprint"],
        seed=int(raw["seed"]),
        versions=raw["versions"],
        training_state=raw.get("training_state"),
        extra=raw.get("extra") or {},
    )


def _diff_dicts(name: str, saved: dict, given: dict) -> list[str]:
    out = []
    for key in sorted(set(saved) | set(given)):
        a, b = saved.get(key, "<absent>"), given.get(key, "<absent>")
        if a != b:
            out.append(f"{name}.{key}: checkpoint {a!r}, now {b!r}")
    return out


def check_compatible(
    ckpt: Checkpoint,
    *,
    tickers: list[str],
    feature_config: dict | None = None,
    encoder_config: dict | None = None,
    fingerprint: str | None = None,
) -> None:
    """Raise :class:`CheckpointError` listing every difference with the data/config at hand.

    Parameters
    ----------
    ckpt : Checkpoint
    tickers : list of str
        The universe the model will be applied to, in order.
    feature_config, encoder_config : dict or None
        Compared field by field when given.
    fingerprint : str or None
        Compared when given (resuming a run must use the same data; applying a model to
        newer data of the same universe need not).
    """
    diffs = []
    if list(tickers) != list(ckpt.tickers):
        only_ckpt = [t for t in ckpt.tickers if t not in tickers]
        only_now = [t for t in tickers if t not in ckpt.tickers]
        what = (
            f"only in checkpoint {only_ckpt}, only in data {only_now}"
            if only_ckpt or only_now
            else "same tickers in a different order"
        )
        diffs.append(
            f"universe: checkpoint has {len(ckpt.tickers)} tickers, data {len(tickers)} ({what})"
        )
    if feature_config is not None:
        diffs += _diff_dicts("features", ckpt.feature_config, feature_config)
    if encoder_config is not None:
        diffs += _diff_dicts("encoder", ckpt.encoder_config, encoder_config)
    if fingerprint is not None and fingerprint != ckpt.fingerprint:
        diffs.append(f"data fingerprint: checkpoint {ckpt.fingerprint}, now {fingerprint}")
    if diffs:
        raise CheckpointError(
            f"checkpoint ({ckpt.kind}) does not match:\n  - " + "\n  - ".join(diffs)
        )

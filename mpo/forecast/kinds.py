"""Registries of returns forecasters and risk models, by the ``kind`` of a spec section.

``[forecast] kind = "..."`` names an entry of :data:`FORECASTS`, ``[risk] kind``
one of :data:`RISK_MODELS`. An entry is a function of the section (and the
universe, for risk models) returning the object that goes into cvxportfolio's
objective: a plain forecaster with ``values_in_time`` for returns, a
cvxportfolio risk term for risk. Built-ins: ``rolling_mean``, ``ewma_mean``,
``linear_regression``, ``file``; ``full``, ``factor``, ``file`` (a covariance
per date), ``factor_file`` (exposures, factor covariance, idiosyncratic
variances). Packages add kinds through the entry-point groups
``mpo.forecasts`` and ``mpo.risk_models``.
"""

from __future__ import annotations

from pathlib import Path

import cvxportfolio as cvx

from mpo.forecast.classic import (
    EwmaMeanForecast,
    LinearRegressionForecast,
    RollingCovariance,
    RollingMeanForecast,
)
from mpo.registry import Registry

__all__ = ["FORECASTS", "RISK_MODELS", "Kind"]

#: ``[forecast] kind`` -> builder ``(section) -> forecaster``.
FORECASTS: Registry = Registry("returns forecast kind", "mpo.forecasts")
#: ``[risk] kind`` -> builder ``(section, universe) -> cvxportfolio risk term``.
RISK_MODELS: Registry = Registry("risk model kind", "mpo.risk_models")


def _need(section, field: str, kind: str, what: str) -> Path:
    value = getattr(section, field, None)
    if not value:
        from mpo.errors import SpecError

        raise SpecError(f"[{what}] kind = {kind!r} needs {field} = 'path/to/file'.")
    return Path(value)


class Kind:
    """A forecast or risk kind: ``build`` the object; ``history`` periods it needs.

    ``build(section, *, universe, calendar, horizon)`` receives the spec
    section, the universe (tickers without cash), the backtest's trading
    calendar (None when only the structure is needed) and the planning
    horizon; file-based kinds validate their files against ``calendar`` and
    ``universe`` there, so bad files fail before the backtest starts.
    """

    @staticmethod
    def build(section, *, universe, calendar=None, horizon: int = 1):  # pragma: no cover
        raise NotImplementedError

    @staticmethod
    def history(section) -> int:
        return 0


@FORECASTS.register("rolling_mean")
class RollingMeanKind(Kind):
    """Mean of the last ``lookback`` returns."""

    @staticmethod
    def build(section, *, universe, calendar=None, horizon=1):
        return RollingMeanForecast(section.lookback)

    @staticmethod
    def history(section) -> int:
        return section.lookback


@FORECASTS.register("ewma_mean")
class EwmaMeanKind(Kind):
    """Exponentially weighted mean of past returns (``halflife``)."""

    @staticmethod
    def build(section, *, universe, calendar=None, horizon=1):
        return EwmaMeanForecast(section.halflife)

    @staticmethod
    def history(section) -> int:
        return EwmaMeanForecast(section.halflife).history()


@FORECASTS.register("linear_regression")
class LinearRegressionKind(Kind):
    """Per-(t, tau) pooled linear regression on lagged returns."""

    @staticmethod
    def build(section, *, universe, calendar=None, horizon=1):
        return LinearRegressionForecast(section.lookback, ridge=section.ridge)

    @staticmethod
    def history(section) -> int:
        return LinearRegressionForecast(section.lookback, ridge=section.ridge).history()


@FORECASTS.register("file")
class FileForecastKind(Kind):
    """The user's forecasts from a file: wide (dates x tickers) or per step ((date, tau) x tickers)."""

    @staticmethod
    def build(section, *, universe, calendar=None, horizon=1):
        from mpo.forecast.files import FileReturnsForecast

        forecast = FileReturnsForecast(_need(section, "path", "file", "forecast"))
        if calendar is not None:
            forecast.validate(calendar, list(universe), horizon=horizon)
        return forecast


@RISK_MODELS.register("full")
class FullRiskKind(Kind):
    """Sample covariance of the last ``lookback`` returns."""

    @staticmethod
    def build(section, *, universe, calendar=None, horizon=1):
        return cvx.FullCovariance(Sigma=RollingCovariance(section.lookback))

    @staticmethod
    def history(section) -> int:
        return section.lookback


@RISK_MODELS.register("factor")
class FactorRiskKind(Kind):
    """PCA factor model (``factors``) of the rolling sample covariance."""

    @staticmethod
    def build(section, *, universe, calendar=None, horizon=1):
        if universe and section.factors >= len(universe):
            from mpo.errors import SpecError

            raise SpecError(
                f"risk.factors = {section.factors} is not below the number of assets "
                f"({len(universe)}): a factor model needs fewer factors than assets; use "
                f"factors <= {len(universe) - 1}, or kind = 'full'."
            )
        return cvx.FactorModelCovariance(
            num_factors=section.factors, Sigma=RollingCovariance(section.lookback)
        )

    @staticmethod
    def history(section) -> int:
        return section.lookback


@RISK_MODELS.register("file")
class FileCovarianceKind(Kind):
    """The user's covariance per date ((date, ticker) x tickers)."""

    @staticmethod
    def build(section, *, universe, calendar=None, horizon=1):
        from mpo.forecast.files import FileCovariance

        sigma = FileCovariance(_need(section, "path", "file", "risk"))
        if calendar is not None:
            sigma.validate(calendar, list(universe))
        return cvx.FullCovariance(Sigma=sigma)


@RISK_MODELS.register("factor_file")
class FileFactorKind(Kind):
    """The user's factor model: exposures, factor covariance, idiosyncratic variances."""

    @staticmethod
    def build(section, *, universe, calendar=None, horizon=1):
        from mpo.forecast.files import FileFactorModel

        model = FileFactorModel(
            _need(section, "exposures", "factor_file", "risk"),
            _need(section, "factor_covariance", "factor_file", "risk"),
            _need(section, "idiosyncratic", "factor_file", "risk"),
        )
        if calendar is not None:
            model.validate(calendar, list(universe))
        return cvx.FactorModelCovariance(**model.cvxportfolio_kwargs(list(universe)))

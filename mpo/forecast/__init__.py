"""Forecasters (returns and risk) used by the optimisation policies."""

from mpo.forecast.classic import (
    EwmaMeanForecast,
    LinearRegressionForecast,
    RollingCovariance,
    RollingMeanForecast,
)

__all__ = [
    "EwmaMeanForecast",
    "LinearRegressionForecast",
    "RollingCovariance",
    "RollingMeanForecast",
]

"""Validation helpers shared by every pydantic model of mpo (specs, cost-term parameters)."""

from __future__ import annotations

import types
import typing

from pydantic import BaseModel, ConfigDict, model_validator

__all__ = [
    "StrictModel",
    "check_date",
    "installed_solver",
    "refuse_bool_numbers",
    "takes_number",
]


def takes_number(annotation) -> bool:
    """Whether a field's annotation is a float or int (optionally ``| None`` / ``Annotated``)."""
    if annotation in (float, int):
        return True
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return takes_number(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return bool(args) and all(takes_number(a) for a in args)
    return False


def refuse_bool_numbers(model, data):
    """``data`` unchanged; ValueError if a number field of ``model`` is given ``true``/``false``.

    pydantic reads ``true`` as 1.0 for a float field; in a spec that is always a
    mistake (``gamma_risk = true``), so it is refused, naming the field.
    """
    if isinstance(data, dict):
        for name, value in data.items():
            field = model.model_fields.get(name)
            if field is None:
                field = next((f for f in model.model_fields.values() if f.alias == name), None)
            if isinstance(value, bool) and field is not None and takes_number(field.annotation):
                raise ValueError(
                    f"{name} must be a number, got {str(value).lower()}; write e.g. {name} = 1.0."
                )
    return data


def check_date(value: str | None) -> str | None:
    """A date string that pandas can read (``YYYY-MM-DD``), else ValueError naming it."""
    if value is None:
        return value
    import re

    import pandas as pd

    if not re.fullmatch(r"\s*\d{4}-\d{1,2}-\d{1,2}([ T][0-9:.+-]*)?\s*", str(value)):
        raise ValueError(f"cannot read the date {value!r}; use YYYY-MM-DD")
    try:
        pd.Timestamp(value)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"cannot read the date {value!r} ({exc}); use YYYY-MM-DD") from None
    return value


def installed_solver(value: str) -> str:
    """``value`` upper-cased if cvxpy has that solver installed, else ValueError listing them."""
    import cvxpy as cp

    installed = cp.installed_solvers()
    if value.upper() not in installed:
        raise ValueError(
            f"solver {value!r} is not installed; installed solvers: {', '.join(installed)}."
        )
    return value.upper()


class StrictModel(BaseModel):
    """Unknown keys are errors; numbers are finite and never booleans (``true`` is not 1)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _no_bool_numbers(cls, data):
        return refuse_bool_numbers(cls, data)

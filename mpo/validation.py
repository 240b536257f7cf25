"""Validation helpers shared by every pydantic model of mpo (specs, cost-term parameters)."""

from __future__ import annotations

import types
import typing

__all__ = ["refuse_bool_numbers", "takes_number"]


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

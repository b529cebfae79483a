"""Request fields written in people's units (``"512MiB"``, ``"5m"``), checked by pydantic:
a value that is not one is the client's mistake, a 400 that names the field, never a 500."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, TypeVar

from pydantic import BeforeValidator

from offgrid.errors import ConfigError
from offgrid.units import parse_duration, parse_size

__all__ = ["Duration", "Size"]

T = TypeVar("T")


def _parsed(parse: Callable[[str], T]) -> Callable[[object], T | None]:
    def validate(value: object) -> T | None:
        if value is None:
            return None
        if not isinstance(value, str | int | float) or isinstance(value, bool):
            raise ValueError("expected a number or a string such as '512MiB' or '5m'")
        try:
            return parse(str(value))
        except ConfigError as exc:
            raise ValueError(exc.message) from None

    return validate


_WRITTEN = str | int | float | None  # what a client may send: 512MiB, 5m, or a number
Size = Annotated[int | None, BeforeValidator(_parsed(parse_size), json_schema_input_type=_WRITTEN)]
Duration = Annotated[
    float | None, BeforeValidator(_parsed(parse_duration), json_schema_input_type=_WRITTEN)
]

"""pydantic building blocks of the YAML configuration files: the DICOM node, PACS destinations, the reader study.

Each file (or entry) is a :class:`StrictModel`: an unknown key is an error (a typo never falls back
to a default silently), and a section left empty (``queue:``) takes the defaults. The field types
below check what YAML gives and say what they expected. A validator reports a problem by raising
:class:`Problem`; :func:`first_problem` turns a ``ValidationError`` into the place (the keys from the
model's top, list positions included) and that problem, which each file's module words as one line.

Standard library and pydantic only: the reader study imports it without torch.
"""

from __future__ import annotations

import math
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, ValidationError, model_validator

__all__ = [
    "LIST",
    "AeTitle",
    "Flag",
    "Number",
    "Port",
    "Problem",
    "StrictModel",
    "Text",
    "UnknownKeys",
    "Whole",
    "as_list",
    "at_least",
    "dotted",
    "first_problem",
    "one_line",
]


class Problem(ValueError):
    """What is wrong, raised inside a validator.

    ``key``: keys below the place pydantic reports (a model that checks its own keys names the
    one it refuses); ``place``: the module's own words for where, instead of the keys.
    """

    def __init__(self, text: str, key: tuple[str, ...] = (), place: str | None = None) -> None:
        super().__init__(text)
        self.text, self.key, self.place = text, tuple(key), place


class UnknownKeys(Problem):
    """Keys a model does not have; ``known`` in the model's order."""

    def __init__(self, unknown: list[str], known: list[str]) -> None:
        self.unknown, self.known = unknown, known
        super().__init__(f"unknown setting; known: {', '.join(sorted(known))}", key=(", ".join(unknown),))


class StrictModel(BaseModel):
    """A mapping of known keys; ``None`` (an empty YAML section) is an empty mapping."""

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data: Any) -> Any:
        if data is None:
            return {}
        if not isinstance(data, dict):
            raise Problem(f"must be a mapping of settings, got {type(data).__name__}")
        unknown = [str(key) for key in data if key not in cls.model_fields]
        if unknown:
            raise UnknownKeys(unknown, list(cls.model_fields))
        return data


def _whole(value: Any) -> int:
    try:
        if isinstance(value, bool) or int(value) != float(value):
            raise ValueError
        return int(value)
    except (TypeError, ValueError, OverflowError):
        raise Problem(f"must be a whole number, got {value!r}") from None


def _number(value: Any) -> float:
    try:
        if isinstance(value, bool):
            raise ValueError
        return float(value)
    except (TypeError, ValueError):
        raise Problem(f"must be a number, got {value!r}") from None


def _text(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise Problem(f"must be a text, got {value!r}")
    return str(value)


def _flag(value: Any) -> bool:
    if not isinstance(value, bool):
        raise Problem(f"must be true or false, got {value!r}")
    return value


def _ae_title(value: Any) -> str:
    if not isinstance(value, str) or not 1 <= len(value.strip()) <= 16 or "\\" in value or not value.isprintable():
        raise Problem(f"an AE title is 1-16 printable characters without backslash, got {value!r}")
    return value.strip()


def as_list(value: Any) -> list:
    """``value``, a YAML list (else a :class:`Problem` saying so)."""
    if not isinstance(value, list):
        raise Problem(f"must be a list, got {value!r}")
    return value


def _port(value: int) -> int:
    if not 0 < value < 65536:
        raise Problem(f"must be 1-65535, got {value}")
    return value


#: A whole number (5, 5.0 or "5"; not true/false).
Whole = Annotated[int, BeforeValidator(_whole)]
#: A number (not true/false).
Number = Annotated[float, BeforeValidator(_number)]
#: A text (a number is taken as its text).
Text = Annotated[str, BeforeValidator(_text)]
#: true or false (not "yes").
Flag = Annotated[bool, BeforeValidator(_flag)]
#: A DICOM AE title (surrounding spaces removed).
AeTitle = Annotated[str, BeforeValidator(_ae_title)]
#: A TCP port.
Port = Annotated[Whole, AfterValidator(_port)]
#: For ``Annotated[list[...], LIST]``: a YAML list, else one line saying so.
LIST = BeforeValidator(as_list)


def at_least(low: float) -> AfterValidator:
    """A validator for ``Annotated[Whole, at_least(1)]``: the value must be ``low`` or more."""

    def check(value: float) -> float:
        if value < low or (isinstance(value, float) and math.isnan(value)):
            raise Problem(f"must be at least {low:g}, got {value:g}")
        return value

    return AfterValidator(check)


def first_problem(error: ValidationError) -> tuple[tuple[str | int, ...], Problem]:
    """The first problem of ``error`` and its place; pydantic's own errors become a :class:`Problem` with its text."""
    issue = error.errors()[0]
    place = tuple(issue["loc"])
    cause = (issue.get("ctx") or {}).get("error")
    if isinstance(cause, Problem):
        return place + cause.key, cause
    return place, Problem(str(issue["msg"]))


def dotted(place: tuple[str | int, ...]) -> str:
    """``node.tls.cert`` for a place (list positions left out)."""
    return ".".join(str(key) for key in place if not isinstance(key, int))


def one_line(error: ValidationError) -> str:
    """``node.port: must be 1-65535, got 70000``: the first problem of ``error`` after its dotted key."""
    place, problem = first_problem(error)
    return f"{dotted(place)}: {problem.text}" if place else problem.text

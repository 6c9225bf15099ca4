"""Durations as configuration writes them: ``"1s"``, ``"500ms"``, ``"1m30s"`` or seconds."""

from __future__ import annotations

import datetime
import math
import re
from typing import Annotated, Any

from pydantic import BeforeValidator

__all__ = ["Duration", "format_duration", "parse_duration"]

_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
    "d": 86400.0,
}
# One or more <number><unit> parts, largest first by convention but not by rule: "1m30s".
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h|d)")


def parse_duration(value: str | float | datetime.timedelta) -> float:
    """Returns ``value`` in seconds.

    Accepts a number (seconds), a :class:`datetime.timedelta`, or a string of
    one or more ``<number><unit>`` parts with units ``ns``, ``us``, ``ms``,
    ``s``, ``m``, ``h`` and ``d`` (``"500ms"``, ``"1.5s"``, ``"1m30s"``),
    optionally signed. A string without a unit is refused, so that ``"500"``
    cannot silently mean 500 seconds when milliseconds were meant; a bare
    number given as a number is seconds. Raises ValueError (TypeError for
    other types); whether the value must be positive is the caller's rule.
    """
    if isinstance(value, bool):
        raise TypeError(f"a duration cannot be a boolean ({value!r})")
    if isinstance(value, datetime.timedelta):
        return value.total_seconds()
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        seconds = _parse_text(value)
    else:
        raise TypeError(
            f"a duration must be a string like '1s' or a number of seconds, not {value!r}"
        )
    if not math.isfinite(seconds):
        raise ValueError(f"{value!r} is not a finite duration")
    return seconds


def _parse_text(value: str) -> float:
    text = value.strip()
    sign = 1.0
    if text and text[0] in "+-":
        sign = -1.0 if text[0] == "-" else 1.0
        text = text[1:].strip()
    if text == "0":
        return 0.0
    if not text:
        raise ValueError("a duration cannot be empty")
    total = 0.0
    pos = 0
    for match in _PART.finditer(text):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    if pos != len(text) or pos == 0:
        try:
            float(text)
        except ValueError:
            pass
        else:
            raise ValueError(f"{value!r} has no unit: write e.g. '{text}s' or '{text}ms'")
        raise ValueError(f"{value!r} is not a duration: use e.g. '500ms', '1s', '2m' or '1m30s'")
    return sign * total


def format_duration(seconds: float) -> str:
    """The short form used in outputs and logs: ``0.5`` → ``"500ms"``, ``90`` → ``"1m30s"``."""
    if seconds < 1.0:
        millis = seconds * 1000.0
        return f"{millis:g}ms"
    if seconds < 60.0:
        return f"{seconds:g}s"
    minutes, rest = divmod(seconds, 60.0)
    return f"{int(minutes)}m{rest:g}s" if rest else f"{int(minutes)}m"


def _validate(value: Any) -> float:
    try:
        return parse_duration(value)
    except TypeError as exc:
        # pydantic reports ValueError and AssertionError only; keep the message.
        raise ValueError(str(exc)) from None


#: A pydantic field type: any form :func:`parse_duration` accepts, stored as seconds.
Duration = Annotated[float, BeforeValidator(_validate)]

"""Durations as configuration writes them."""

from __future__ import annotations

import datetime

import pytest

from sidecar.health import format_duration, parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("1s", 1.0),
        ("500ms", 0.5),
        ("2m", 120.0),
        ("1h", 3600.0),
        ("1.5s", 1.5),
        ("1m30s", 90.0),
        ("250us", 0.00025),
        ("100ns", 1e-7),
        (" 10s ", 10.0),
        ("0", 0.0),
        ("-1s", -1.0),
        ("1d", 86400.0),
        (".5s", 0.5),
    ],
)
def test_strings(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


def test_numbers_are_seconds() -> None:
    assert parse_duration(5) == 5.0
    assert parse_duration(0.25) == 0.25
    assert parse_duration(datetime.timedelta(milliseconds=1500)) == 1.5


@pytest.mark.parametrize("text", ["", "s", "1x", "1 s s", "1s2", "ten seconds", "1.2.3s"])
def test_rejects_garbage(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


def test_unitless_string_is_refused_with_a_hint() -> None:
    with pytest.raises(ValueError, match="no unit"):
        parse_duration("500")


def test_rejects_other_types() -> None:
    with pytest.raises(TypeError):
        parse_duration(True)
    with pytest.raises(TypeError):
        parse_duration([1])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="finite"):
        parse_duration(float("inf"))


@pytest.mark.parametrize(
    ("seconds", "text"), [(0.5, "500ms"), (1.0, "1s"), (2.5, "2.5s"), (90, "1m30s"), (120, "2m")]
)
def test_format(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text
    assert parse_duration(text) == pytest.approx(seconds)

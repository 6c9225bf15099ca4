"""A request's header fields as plugins read them from its head."""

from __future__ import annotations

import pytest

from sidecar.gateway.request import Headers

HEAD = (
    b"GET /a?b=1 HTTP/1.1\r\n"
    b"Host: api.example.com\r\n"
    b"Cache-Control: no-cache \r\n"
    b"X-Tag: one\r\n"
    b"x-tag:two\r\n"
    b"X-Consumer-Name: forged\r\n"
    b"Vary-Me: \xe9t\xe9\r\n"
    b"\r\n"
)
DROP = frozenset({"x-consumer-name"})


@pytest.mark.parametrize(
    "name",
    ["host", "cache-control", "X-Tag", "x-consumer-name", "vary-me", "pragma", "get", "a:b", ""],
)
def test_a_field_read_from_the_head_is_what_the_parsed_fields_say(name: str) -> None:
    parsed = Headers.from_head(HEAD, DROP)
    parsed.items()  # (parsed whole)
    looked_up = Headers.from_head(HEAD, DROP)
    assert looked_up.get(name) == parsed.get(name)
    assert looked_up.get_all(name) == parsed.get_all(name)
    assert (name in looked_up) == (name in parsed)
    assert Headers.from_head(HEAD, DROP).has_any((name, "nothing")) == parsed.has_any((name,))


def test_fields_are_found_in_the_head_and_after_a_change() -> None:
    headers = Headers.from_head(HEAD, DROP)
    assert headers.get_all("x-tag") == ["one", "two"]
    assert headers.get("cache-control") == "no-cache"
    assert headers.get("vary-me") == "\xe9t\xe9"
    assert headers.get("x-consumer-name") is None  # dropped: the gateway's to set
    assert headers.has_any(("pragma", "x-tag"))
    assert not headers.has_any(("pragma", "x-consumer-name"))
    headers.set("x-tag", "three")
    assert headers.get_all("x-tag") == ["three"]
    assert headers.changed
    headers.remove("cache-control")
    assert not headers.has_any(("cache-control",))


def test_nothing_past_the_blank_line_is_a_field() -> None:
    headers = Headers.from_head(b"GET / HTTP/1.1\r\nHost: a\r\n\r\nX-Late: 1\r\n", frozenset())
    assert headers.get("x-late") is None
    assert headers.get_all("host") == ["a"]

"""The part of RFC 8941 (Structured Field Values) that HTTP message signatures use.

Parses a Dictionary whose members are Items or Inner Lists, with
Parameters (``Signature-Input``, ``Signature``, ``Content-Digest``), and
serializes an Inner List with its Parameters the way RFC 9421 §2.3 puts
``@signature-params`` into the signature base. Bare Items: Integer,
Decimal, String, Token, Byte Sequence and Boolean. Anything else is a
:class:`StructuredFieldError` (the field is then refused as a whole, as
RFC 8941 §4.2 asks).
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field

__all__ = [
    "InnerList",
    "Item",
    "StructuredFieldError",
    "Token",
    "parse_dictionary",
    "serialize_inner_list",
    "serialize_item",
]

_KEY_START = "abcdefghijklmnopqrstuvwxyz*"
_KEY_CHARS = _KEY_START + "0123456789_-."
_TOKEN_START = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz*"
_TOKEN_CHARS = _TOKEN_START + "0123456789!#$%&'*+-.^_`|~:/"
_BASE64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/="


class StructuredFieldError(ValueError):
    """A field value is not a valid structured field."""


class Token(str):
    """An sf-token (distinct from a String when serialized)."""

    __slots__ = ()


BareItem = int | float | str | bytes | bool
Params = dict[str, BareItem]


@dataclass(frozen=True, slots=True)
class Item:
    value: BareItem
    params: Params = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class InnerList:
    items: tuple[Item, ...]
    params: Params = field(default_factory=dict)


class _Parser:
    __slots__ = ("pos", "text")

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def fail(self, what: str) -> StructuredFieldError:
        return StructuredFieldError(f"{what} at character {self.pos + 1}")

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def skip_sp(self) -> None:
        while self.peek() == " ":
            self.pos += 1

    def skip_ows(self) -> None:
        while self.peek() in (" ", "\t") and self.peek():
            self.pos += 1

    def key(self) -> str:
        start = self.pos
        if self.peek() == "" or self.peek() not in _KEY_START:
            raise self.fail("a key must start with a lower-case letter or '*'")
        while self.peek() and self.peek() in _KEY_CHARS:
            self.pos += 1
        return self.text[start : self.pos]

    def params(self) -> Params:
        params: Params = {}
        while self.peek() == ";":
            self.pos += 1
            self.skip_sp()
            name = self.key()
            value: BareItem = True
            if self.peek() == "=":
                self.pos += 1
                value = self.bare_item()
            params[name] = value
        return params

    def bare_item(self) -> BareItem:
        char = self.peek()
        if char == "-" or char.isdigit():
            return self.number()
        if char == '"':
            return self.string()
        if char == ":":
            return self.byte_sequence()
        if char == "?":
            self.pos += 1
            flag = self.peek()
            if flag not in ("0", "1") or not flag:
                raise self.fail("a boolean is ?0 or ?1")
            self.pos += 1
            return flag == "1"
        if char and char in _TOKEN_START:
            start = self.pos
            while self.peek() and self.peek() in _TOKEN_CHARS:
                self.pos += 1
            return Token(self.text[start : self.pos])
        raise self.fail("not an item")

    def number(self) -> int | float:
        start = self.pos
        if self.peek() == "-":
            self.pos += 1
        while self.peek().isdigit() or self.peek() == ".":
            self.pos += 1
        text = self.text[start : self.pos]
        digits = text.lstrip("-")
        if not digits or not digits[0].isdigit():
            raise self.fail("not a number")
        if "." in text:
            whole, _, frac = digits.partition(".")
            if len(whole) > 12 or not 1 <= len(frac) <= 3 or "." in frac:
                raise self.fail("not a decimal")
            return float(text)
        if len(digits) > 15:
            raise self.fail("an integer has at most 15 digits")
        return int(text)

    def string(self) -> str:
        self.pos += 1
        out: list[str] = []
        while True:
            char = self.peek()
            if not char:
                raise self.fail("an unterminated string")
            self.pos += 1
            if char == "\\":
                escaped = self.peek()
                if escaped not in ('"', "\\") or not escaped:
                    raise self.fail("a string escapes only '\"' and '\\'")
                out.append(escaped)
                self.pos += 1
            elif char == '"':
                return "".join(out)
            elif not " " <= char <= "~":
                raise self.fail("a string holds printable ASCII only")
            else:
                out.append(char)

    def byte_sequence(self) -> bytes:
        self.pos += 1
        end = self.text.find(":", self.pos)
        if end < 0:
            raise self.fail("an unterminated byte sequence")
        encoded = self.text[self.pos : end]
        if any(c not in _BASE64 for c in encoded):
            raise self.fail("a byte sequence is base64")
        self.pos = end + 1
        try:
            return base64.b64decode(encoded + "=" * (-len(encoded) % 4))
        except binascii.Error:
            raise self.fail("a byte sequence is base64") from None

    def item(self) -> Item:
        value = self.bare_item()
        return Item(value, self.params())

    def inner_list(self) -> InnerList:
        self.pos += 1  # "("
        items: list[Item] = []
        while True:
            self.skip_sp()
            if self.peek() == ")":
                self.pos += 1
                return InnerList(tuple(items), self.params())
            items.append(self.item())
            if self.peek() not in (" ", ")"):
                raise self.fail("an inner list's items are separated by spaces")


def parse_dictionary(text: str, *, max_members: int = 16) -> dict[str, Item | InnerList]:
    """A Dictionary field value (combine several field lines with ", " first)."""
    parser = _Parser(text)
    members: dict[str, Item | InnerList] = {}
    parser.skip_sp()
    while parser.peek():
        name = parser.key()
        if parser.peek() == "=":
            parser.pos += 1
            if parser.peek() == "(":
                members[name] = parser.inner_list()
            else:
                members[name] = parser.item()
        else:
            members[name] = Item(True, parser.params())
        if len(members) > max_members:
            raise parser.fail(f"more than {max_members} members")
        parser.skip_ows()
        if not parser.peek():
            break
        if parser.peek() != ",":
            raise parser.fail("members are separated by commas")
        parser.pos += 1
        parser.skip_ows()
        if not parser.peek():
            raise parser.fail("a trailing comma")
    return members


def serialize_item(value: BareItem) -> str:
    if isinstance(value, bool):
        return "?1" if value else "?0"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.3f}".rstrip("0").rstrip(".") + ("" if value % 1 else ".0")
    if isinstance(value, bytes):
        return ":" + base64.b64encode(value).decode() + ":"
    if isinstance(value, Token):
        return str(value)
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _serialize_params(params: Params) -> str:
    return "".join(
        f";{name}" if value is True else f";{name}={serialize_item(value)}"
        for name, value in params.items()
    )


def serialize_inner_list(inner: InnerList) -> str:
    items = " ".join(serialize_item(i.value) + _serialize_params(i.params) for i in inner.items)
    return f"({items}){_serialize_params(inner.params)}"

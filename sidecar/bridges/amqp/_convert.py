"""What the AMQP bridge translates, without the AMQP client: names, templates, headers.

Pure functions, imported by the configuration (to check templates and names
when the file is read) and by :mod:`sidecar.bridges.amqp.bridge` (to translate each
message). aio-pika is not imported here: a sidecar without an AMQP bridge
never loads it.

- **Templates.** An inbound ``subject`` may hold ``{routing_key}``,
  ``{exchange}`` and ``{queue}``; an outbound ``routing_key`` may hold
  ``{subject}``. Nothing else: no format specs, no attribute access.
- **Headers, AMQP to bus.** Each entry of the AMQP ``headers`` table becomes
  a bus header with its value as text (numbers and booleans as written in
  JSON, bytes as UTF-8 or else base64, nested tables and arrays as JSON);
  names the bus does not accept are left out. ``content_type`` and
  ``correlation_id`` become ``content-type`` and ``correlation-id``; the
  exchange and routing key come along as ``amqp-exchange`` and
  ``amqp-routing-key``.
- **Headers, bus to AMQP.** Bus headers become the ``headers`` table as
  strings (``content-type`` and ``correlation-id`` also set those properties),
  plus ``eco-subject`` and, for stored messages, ``eco-stream`` and
  ``eco-sequence``.
- **Loops.** ``eco-bridge`` lists (comma-separated) the bridges a message
  went through; a bridge does not forward a message whose list holds its own
  name, in either direction.
"""

from __future__ import annotations

import base64
import datetime
import decimal
import json
import re
import string
from collections.abc import Iterable, Mapping
from typing import Any

from bus.convert import LIMITS
from bus.subjects import validate_subject

__all__ = [
    "AMQP_NAME",
    "BRIDGE_HEADER",
    "INBOUND_FIELDS",
    "MAX_SHORTSTR",
    "OUTBOUND_FIELDS",
    "amqp_headers",
    "bus_headers",
    "check_template",
    "render",
    "subject_problem",
    "trail",
    "visited",
]

#: Exchange and queue names as AMQP 0-9-1 defines them (RabbitMQ is more lenient).
AMQP_NAME = re.compile(r"^[A-Za-z0-9_.:-]{1,255}\Z")
#: AMQP short strings (names, routing keys, message ids): at most 255 bytes.
MAX_SHORTSTR = 255
#: The header listing the bridges a message went through.
BRIDGE_HEADER = "eco-bridge"
INBOUND_FIELDS = frozenset({"routing_key", "exchange", "queue"})
OUTBOUND_FIELDS = frozenset({"subject"})
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,256}\Z")
_FORMATTER = string.Formatter()


def check_template(template: str, fields: Iterable[str]) -> tuple[str, ...]:
    """The placeholders ``template`` uses, in order; ValueError naming what is wrong
    (an unknown placeholder, a format spec, an unbalanced brace)."""
    allowed = frozenset(fields)
    used: list[str] = []
    try:
        parsed = list(_FORMATTER.parse(template))
    except ValueError as exc:
        raise ValueError(
            f"{template!r}: {exc} (write a literal brace as '{{{{' or '}}}}')"
        ) from None
    for _literal, name, spec, conversion in parsed:
        if name is None:
            continue
        if name not in allowed:
            known = ", ".join("{" + f + "}" for f in sorted(allowed))
            raise ValueError(f"{template!r}: unknown placeholder {{{name}}}; known: {known}")
        if spec or conversion:
            raise ValueError(f"{template!r}: write {{{name}}} without a format or conversion")
        used.append(name)
    return tuple(used)


def render(template: str, **values: str) -> str:
    """``template`` with its placeholders replaced (checked by :func:`check_template`)."""
    return template.format_map(values)


def subject_problem(subject: str) -> str:
    """Why ``subject`` is not a literal bus subject; empty when it is one."""
    try:
        validate_subject(subject, field="subject")
    except Exception as exc:  # InvalidSubjectError; its message names the problem
        return str(exc).removeprefix("subject: ").removeprefix(f"{subject!r} ")
    return ""


def trail(headers: Mapping[str, Any] | None) -> list[str]:
    """The bridges named in a message's ``eco-bridge`` header."""
    if not headers:
        return []
    value = headers.get(BRIDGE_HEADER)
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if not isinstance(value, str):
        return []
    return [name.strip() for name in value.split(",") if name.strip()]


def visited(headers: Mapping[str, Any] | None, bridge: str) -> bool:
    """Whether the bridge named ``bridge`` forwarded this message before."""
    return bridge in trail(headers)


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, bytes | bytearray | memoryview):
        raw = bytes(value)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return base64.b64encode(raw).decode("ascii")
    if isinstance(value, int | float | decimal.Decimal):
        return str(value)
    if isinstance(value, datetime.datetime):
        return value.isoformat()
    if value is None:
        return ""
    return json.dumps(value, default=_text, separators=(",", ":"), ensure_ascii=False)


def bus_headers(
    table: Mapping[str, Any] | None,
    *,
    exchange: str,
    routing_key: str,
    content_type: str | None,
    correlation_id: str | None,
    bridge: str,
) -> tuple[dict[str, str], int]:
    """The bus headers for an AMQP message, and how many AMQP headers were left out
    (a name the bus does not accept, or past the bus's limits)."""
    out: dict[str, str] = {}
    dropped = 0
    total = 0
    for name, value in (table or {}).items():
        if not isinstance(name, str) or name == BRIDGE_HEADER:
            continue
        text = _text(value).replace("\r", " ").replace("\n", " ")
        size = len(name) + len(text.encode())
        full = len(out) >= LIMITS.headers - 5 or total + size > LIMITS.header_bytes - 4096
        if not _HEADER_NAME.match(name) or full:
            dropped += 1
            continue
        out[name] = text
        total += size
    if content_type:
        out["content-type"] = content_type
    if correlation_id:
        out["correlation-id"] = correlation_id
    out["amqp-exchange"] = exchange
    out["amqp-routing-key"] = routing_key
    out[BRIDGE_HEADER] = ",".join([*trail(table), bridge])
    return out, dropped


def amqp_headers(
    headers: Mapping[str, str], *, subject: str, stream: str, sequence: int, bridge: str
) -> dict[str, Any]:
    """The AMQP ``headers`` table for a bus message."""
    table: dict[str, Any] = {k: v for k, v in headers.items() if k != BRIDGE_HEADER}
    table["eco-subject"] = subject
    if stream:
        table["eco-stream"] = stream
        table["eco-sequence"] = sequence
    table[BRIDGE_HEADER] = ",".join([*trail(headers), bridge])
    return table

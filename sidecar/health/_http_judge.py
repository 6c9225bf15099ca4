"""What an HTTP probe sends and what it reports, the same for both HTTP clients.

A check's URL may carry credentials: a user and password, or a token in the
query string. The probe sends them; what it reports must not show them, since
outputs travel to the control plane and are readable by everyone who can read
the registry. So the label of every output is the URL without them
(:func:`~sidecar.health._kinds.redact_url`), and the parts of an output that
come from elsewhere — the server's reason phrase and body, an error's text —
have each credential replaced by ``[redacted]`` before they are kept (and cut
to length where every output is, in the engine).
"""

from __future__ import annotations

import base64
from typing import TYPE_CHECKING

from sdk import HealthStatus
from sidecar.health._duration import format_duration
from sidecar.health._kinds import BODY_LIMIT, HttpCheckConfig
from sidecar.health._probe import ProbeResult

if TYPE_CHECKING:
    import aiohttp
    import yarl

__all__ = ["USER_AGENT", "Judge", "read_capped", "request_head"]

USER_AGENT = "ecosystem-health-check/1"
_BODY_IN_OUTPUT = 512
#: Credential pieces shorter than this are not searched for in outputs: replacing
#: every "ab" of a body would garble it and hide little.
_MIN_SECRET = 4
_REDACTED = "[redacted]"

_PASSING = HealthStatus.PASSING
_WARNING = HealthStatus.WARNING
_CRITICAL = HealthStatus.CRITICAL


class Judge:
    """Turns an HTTP response (or an error) into a result that shows no credential."""

    __slots__ = ("body_contains", "closed", "label", "needle", "passing", "secrets", "timed_out")

    def __init__(self, config: HttpCheckConfig, url: yarl.URL) -> None:
        target = config.target
        self.label = f"HTTP {config.method} {target}"
        self.secrets = _secrets(config.http, url, target)
        # A lookup table instead of a walk over the ranges on every response.
        self.passing = frozenset(c for c in range(100, 600) if config.accepts(c))
        self.body_contains = config.body_contains
        self.needle = config.body_contains.encode() if config.body_contains is not None else None
        self.timed_out = ProbeResult(
            _CRITICAL, f"{self.label}: timed out after {format_duration(config.timeout)}"
        )
        self.closed = ProbeResult(_CRITICAL, f"{self.label}: the health checker is closed")

    def __call__(self, code: int, reason: str, body: bytes) -> ProbeResult:
        text = f"{code} {self.scrub(reason)}".rstrip()
        if code in self.passing:
            if self.needle is not None and self.needle not in body:
                text += f"; the body does not contain {self.body_contains!r}"
                return ProbeResult(_CRITICAL, self._with_body(text, body))
            return ProbeResult(_PASSING, self._with_body(text, body))
        return ProbeResult(_WARNING if code == 429 else _CRITICAL, self._with_body(text, body))

    def failed(self, what: str) -> ProbeResult:
        """A CRITICAL result for an error, described by ``what``."""
        return ProbeResult(_CRITICAL, f"{self.label}: {self.scrub(what)}")

    def scrub(self, text: str) -> str:
        """``text`` with every credential of the check's URL replaced."""
        for secret, replacement in self.secrets:
            if secret in text:
                text = text.replace(secret, replacement)
        return text

    def _with_body(self, text: str, body: bytes) -> str:
        text = f"{self.label}: {text}"
        if not body:
            return text
        snippet = body[:_BODY_IN_OUTPUT].decode("utf-8", "replace").strip()
        if not snippet:
            return text
        if len(body) > _BODY_IN_OUTPUT:
            snippet += "…"
        return f"{text} Output: {self.scrub(snippet)}"


def _secrets(url_text: str, url: yarl.URL, redacted: str) -> tuple[tuple[str, str], ...]:
    """(text, replacement) pairs for the credentials of a URL (``url_text`` parsed, and
    shown as ``redacted``), longest first."""
    if redacted == url_text:
        return ()
    pairs = {url_text: redacted}
    pairs.setdefault(str(url), redacted)
    pieces = [
        url.raw_user,
        url.user,
        url.raw_password,
        url.password,
        url.raw_query_string,
        url.query_string,
        url.raw_fragment,
        url.fragment,
    ]
    for value in url.query.values():
        pieces.append(value)
    for piece in pieces:
        if piece and len(piece) >= _MIN_SECRET:
            pairs.setdefault(piece, _REDACTED)
    return tuple(sorted(pairs.items(), key=lambda pair: len(pair[0]), reverse=True))


def request_head(config: HttpCheckConfig, url: yarl.URL) -> bytes:
    """The request line and headers, built once per check."""
    given = {name.lower() for name in config.headers}
    host = url.raw_host or ""
    if ":" in host:
        host = f"[{host}]"
    if url.explicit_port is not None and url.explicit_port != 80:
        host = f"{host}:{url.explicit_port}"
    lines = [f"{config.method} {url.raw_path_qs} HTTP/1.1"]
    if "host" not in given:
        lines.append(f"Host: {host}")
    if "user-agent" not in given:
        lines.append(f"User-Agent: {USER_AGENT}")
    if "accept" not in given:
        lines.append("Accept: text/plain, */*")
    if url.user is not None and "authorization" not in given:
        token = base64.b64encode(f"{url.user}:{url.password or ''}".encode()).decode()
        lines.append(f"Authorization: Basic {token}")
    lines.extend(f"{name}: {value}" for name, value in config.headers.items())
    if config.method in ("POST", "PUT", "PATCH") and "content-length" not in given:
        lines.append("Content-Length: 0")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def read_capped(content: aiohttp.StreamReader) -> bytes:
    """At most :data:`BODY_LIMIT` bytes of a body; the caller drops the rest with the
    connection, so a body without end is not read to its end."""
    first = await content.read(BODY_LIMIT)
    if not first or content.at_eof():
        return first
    chunks = [first]
    size = len(first)
    while size < BODY_LIMIT:
        chunk = await content.read(BODY_LIMIT - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)

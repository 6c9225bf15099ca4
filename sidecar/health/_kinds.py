"""One model per kind of check: HTTP, TCP, gRPC, exec and TTL."""

from __future__ import annotations

import os
import re
import shlex
from typing import Any, ClassVar

from pydantic import Field, StrictBool, field_serializer, field_validator

from sidecar.health._base import CheckConfig, CheckKind, ProbeCheckConfig, split_host_port
from sidecar.health._duration import Duration, format_duration

__all__ = [
    "BODY_LIMIT",
    "ExecCheckConfig",
    "GrpcCheckConfig",
    "HttpCheckConfig",
    "TcpCheckConfig",
    "TtlCheckConfig",
]

_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+\Z")
_STATUS_PART = re.compile(r"^\s*([1-5])xx\s*$|^\s*(\d{3})\s*(?:-\s*(\d{3})\s*)?\Z")
#: How much of an HTTP response body a probe reads, for ``body_contains`` and the output.
BODY_LIMIT = 64 * 1024


def redact_url(url: str) -> str:
    """``url`` without its user, password, query and fragment: what names, logs and
    outputs show of an HTTP check's URL (the probe itself still sends all of them)."""
    import yarl

    try:
        parsed = yarl.URL(url)
    except (ValueError, TypeError):
        return "<invalid URL>"
    if (
        parsed.raw_user is None
        and parsed.raw_password is None
        and not parsed.raw_query_string
        and not parsed.raw_fragment
        and "?" not in url
        and "#" not in url
    ):
        return url
    return str(parsed.with_user(None).with_query(None).with_fragment(None))


class HttpCheckConfig(ProbeCheckConfig):
    """``{http: URL}``: passing when the response status is in ``expected_status``.

    ``method`` (default GET), ``headers`` sent with the request,
    ``expected_status`` (default ``"200-399"``: ranges and codes such as
    ``"200-299,304"``, ``"2xx"``, an integer or a list of them; redirects are
    not followed), ``body_contains`` (a substring the first 64 KiB of the body
    must contain), ``tls_skip_verify`` (https without certificate checks).
    A 429 Too Many Requests outside the expected statuses reports WARNING.
    """

    kind: ClassVar[CheckKind] = CheckKind.HTTP

    http: str
    method: str = "GET"
    expected_status: tuple[tuple[int, int], ...] = ((200, 399),)
    body_contains: str | None = None
    headers: dict[str, str] = Field(default_factory=dict)
    tls_skip_verify: StrictBool = False

    @field_validator("http")
    @classmethod
    def _check_url(cls, value: str) -> str:
        # Imported here: a sidecar without HTTP checks does not need it (about 1 MB).
        import yarl

        value = value.strip()
        try:
            url = yarl.URL(value)
            port = url.port
        except (ValueError, TypeError) as exc:
            raise ValueError(f"{value!r} is not a valid URL: {exc}") from None
        if url.scheme not in ("http", "https"):
            raise ValueError(f"{value!r}: the URL must start with http:// or https://")
        if not url.host:
            raise ValueError(f"{value!r}: the URL has no host")
        if port is not None and not 1 <= port <= 65535:
            raise ValueError(f"{value!r}: the port must be from 1 to 65535")
        return value

    @field_validator("method")
    @classmethod
    def _check_method(cls, value: str) -> str:
        method = value.strip().upper()
        if method not in _METHODS:
            raise ValueError(f"{value!r} is not one of {', '.join(sorted(_METHODS))}")
        return method

    @field_validator("expected_status", mode="before")
    @classmethod
    def _parse_expected(cls, value: Any) -> tuple[tuple[int, int], ...]:
        return _parse_status_ranges(value)

    @field_serializer("expected_status")
    def _dump_expected(self, value: tuple[tuple[int, int], ...]) -> str:
        return ",".join(str(lo) if lo == hi else f"{lo}-{hi}" for lo, hi in value)

    @field_validator("body_contains")
    @classmethod
    def _check_body(cls, value: str | None) -> str | None:
        if value is not None and not value:
            raise ValueError("cannot be empty (leave it out to accept any body)")
        if value is not None and len(value.encode()) > BODY_LIMIT:
            raise ValueError(
                f"is longer than the {BODY_LIMIT // 1024} KiB of the body a probe reads, "
                "so it could never be found"
            )
        return value

    @field_validator("headers")
    @classmethod
    def _check_headers(cls, value: dict[str, str]) -> dict[str, str]:
        for name, header in value.items():
            if not _HEADER_NAME.match(name):
                raise ValueError(f"{name!r} is not a valid header name")
            if "\r" in header or "\n" in header:
                raise ValueError(f"the value of {name!r} cannot contain a line break")
        return value

    @property
    def target(self) -> str:
        return redact_url(self.http)

    def accepts(self, status: int) -> bool:
        """Whether an HTTP response status counts as passing."""
        return any(lo <= status <= hi for lo, hi in self.expected_status)


def _parse_status_ranges(value: Any) -> tuple[tuple[int, int], ...]:
    if isinstance(value, bool):
        raise ValueError("must be a status code, a range like '200-399', or a list of them")
    items: list[Any]
    if isinstance(value, range):
        if value.step != 1 or not value:
            raise ValueError("a range of statuses must be contiguous and not empty")
        items = [(value.start, value.stop - 1)]
    elif isinstance(value, int | str):
        items = [value]
    elif isinstance(value, list | tuple):
        items = list(value)
    else:
        raise ValueError("must be a status code, a range like '200-399', or a list of them")
    ranges: list[tuple[int, int]] = []
    for item in items:
        if isinstance(item, bool):
            raise ValueError(f"{item!r} is not a status code")
        if isinstance(item, int):
            ranges.append((item, item))
        elif isinstance(item, str):
            for part in item.split(","):
                ranges.append(_parse_status_part(part))
        elif isinstance(item, list | tuple) and len(item) == 2:
            lo, hi = item
            if not isinstance(lo, int) or not isinstance(hi, int):
                raise ValueError(f"{item!r} is not a pair of status codes")
            ranges.append((lo, hi))
        else:
            raise ValueError(f"{item!r} is not a status code or range")
    if not ranges:
        raise ValueError("needs at least one status code or range")
    for lo, hi in ranges:
        if not 100 <= lo <= hi <= 599:
            text = str(lo) if lo == hi else f"{lo}-{hi}"
            raise ValueError(f"{text} is not a range of HTTP statuses within 100-599")
    return tuple(ranges)


def _parse_status_part(part: str) -> tuple[int, int]:
    match = _STATUS_PART.match(part)
    if not match:
        raise ValueError(f"{part.strip()!r} is not a status code, a range like '200-399' or '2xx'")
    klass, lo, hi = match.groups()
    if klass:
        return int(klass) * 100, int(klass) * 100 + 99
    return int(lo), int(hi or lo)


class TcpCheckConfig(ProbeCheckConfig):
    """``{tcp: "host:port"}``: passing when a TCP connection is accepted."""

    kind: ClassVar[CheckKind] = CheckKind.TCP

    tcp: str

    @field_validator("tcp")
    @classmethod
    def _check_target(cls, value: str) -> str:
        split_host_port(value)
        return value.strip()

    @property
    def target(self) -> str:
        return self.tcp

    @property
    def host(self) -> str:
        return split_host_port(self.tcp)[0]

    @property
    def port(self) -> int:
        return split_host_port(self.tcp)[1]


class GrpcCheckConfig(ProbeCheckConfig):
    """``{grpc: "host:port", service: ""}``: the standard gRPC health ``Check``.

    Passing when the server answers SERVING for ``service`` (empty: the
    server as a whole); every other answer, an unknown service included, is
    CRITICAL. ``tls: true`` uses a TLS channel with the system's roots.
    """

    kind: ClassVar[CheckKind] = CheckKind.GRPC

    grpc: str
    service: str = ""
    tls: StrictBool = False

    @field_validator("grpc")
    @classmethod
    def _check_target(cls, value: str) -> str:
        split_host_port(value)
        return value.strip()

    @property
    def target(self) -> str:
        # "token@host:9000" dials host:9000 with a user part nobody should read back.
        address = self.grpc.rpartition("@")[2]
        return f"{address}/{self.service}" if self.service else address


class ExecCheckConfig(ProbeCheckConfig):
    """``{exec: ["cmd", "arg"]}`` or ``{exec: "shell command"}``.

    A list runs the program directly; a string runs through ``/bin/sh -c``.
    Exit status 0 is PASSING, 1 WARNING, anything else CRITICAL. At the
    timeout the whole process group is killed.
    """

    kind: ClassVar[CheckKind] = CheckKind.EXEC

    exec: str | tuple[str, ...]

    @field_validator("exec")
    @classmethod
    def _check_command(cls, value: str | tuple[str, ...]) -> str | tuple[str, ...]:
        if isinstance(value, str):
            if not value.strip():
                raise ValueError("the command cannot be blank")
            return value
        if not value or not value[0]:
            raise ValueError("the command needs at least a program")
        if any("\0" in arg for arg in value):
            raise ValueError("an argument cannot contain a NUL character")
        return value

    @property
    def argv(self) -> tuple[str, ...]:
        """The program and its arguments as they are run."""
        if isinstance(self.exec, str):
            return ("/bin/sh", "-c", self.exec)
        return self.exec

    @property
    def target(self) -> str:
        """The program's base name: its arguments (and a shell command's words) may
        hold credentials, so names, logs and outputs never show them."""
        if isinstance(self.exec, tuple):
            program = self.exec[0]
        else:
            try:
                words = shlex.split(self.exec)
            except ValueError:
                words = []
            # Skip leading NAME=value assignments: "PGPASSWORD=x psql …" runs psql.
            program = next((w for w in words if "=" not in w), "sh")
        return os.path.basename(program.rstrip("/")) or program


class TtlCheckConfig(CheckConfig):
    """``{ttl: 30s}``: the application reports the status itself.

    Each report (the local API's UpdateTTL call) sets the status and output
    and restarts the clock; when ``ttl`` passes without one, the check turns
    CRITICAL with the output "TTL expired". Reports apply at once: the
    probe options (interval, timeout, jitter, the hysteresis counts) do not
    exist for this kind.
    """

    kind: ClassVar[CheckKind] = CheckKind.TTL

    ttl: Duration

    @field_validator("ttl")
    @classmethod
    def _check_ttl(cls, value: float) -> float:
        if value <= 0:
            raise ValueError("must be greater than 0")
        return value

    @property
    def default_name(self) -> str:
        return "ttl"

    @property
    def target(self) -> str:
        return f"ttl {format_duration(self.ttl)}"

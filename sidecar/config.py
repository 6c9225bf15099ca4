"""The sidecar's configuration: frozen, validated models, read from YAML in one place.

::

    node: {id: web-1, platform: onprem, region: eu, zone: eu-1a}
    controlplane: {addresses: ["127.0.0.1:7400"], token: ""}
    data_dir: .eco/sidecar
    local_api: "127.0.0.1:7410"
    admin: "127.0.0.1:7411"
    services:
      - name: web
        address: 127.0.0.1
        port: 8080
        checks:
          - {http: "http://127.0.0.1:8080/health", interval: 1s, timeout: 500ms}
    upstreams:
      - {service: orders}

:func:`load_config` is the only reader of the file; components receive a
:class:`SidecarConfig`, never the file. A bad file is one
:class:`ConfigError` whose message names the line and the field, e.g.
``sidecar.yaml:14: services[0].checks[0].interval: must be greater than 0``.
See docs/sidecar.md for every key and its default.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, Self, TypeGuard

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from sdk.balancer import STRATEGIES, make_balancer
from serving.addresses import is_loopback
from serving.envoy_names import INBOUND_PORT_KEY
from sidecar._config_file import (
    ConfigError,
    ConfigProblem,
    Problems,
    read_config,
    read_config_file,
    unknown_key_message,
)
from sidecar.bridges.amqp._config import (
    AmqpBindingConfig,
    AmqpBridgeConfig,
    AmqpExchangeConfig,
    AmqpInboundConfig,
    AmqpOutboundConfig,
    AmqpQueueConfig,
)
from sidecar.health import AnyCheckConfig, CheckConfig, Duration, format_duration
from sidecar.sync import SyncHostConfig

__all__ = [
    "BRIDGE_PROTOCOLS",
    "DEFAULT_ADMIN",
    "DEFAULT_BALANCER",
    "DEFAULT_CONTROLPLANE",
    "DEFAULT_LOCAL_API",
    "INBOUND_PORT_KEY",
    "PROTOCOLS",
    "AmqpBindingConfig",
    "AmqpBridgeConfig",
    "AmqpExchangeConfig",
    "AmqpInboundConfig",
    "AmqpOutboundConfig",
    "AmqpQueueConfig",
    "BridgeConfig",
    "CircuitBreakerConfig",
    "ConfigError",
    "ConfigProblem",
    "ControlPlaneLinkConfig",
    "HttpBridgeConfig",
    "InboundConfig",
    "ListenerTlsConfig",
    "LocalServiceConfig",
    "NodeConfig",
    "OutlierConfig",
    "ProxyPolicy",
    "RetryBudgetConfig",
    "SidecarConfig",
    "UpstreamConfig",
    "fronted_service",
    "load_config",
    "metadata_fits",
    "normalize_origin",
    "parse_config",
    "split_hostport",
]

DEFAULT_LOCAL_API = "127.0.0.1:7410"
DEFAULT_ADMIN = "127.0.0.1:7411"
DEFAULT_CONTROLPLANE = "127.0.0.1:7400"
#: Passing endpoints before warning ones, with panic routing: a safe default
#: for a sidecar whose upstreams may be partly unhealthy.
DEFAULT_BALANCER = "health_based"

_NODE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}\Z")
_INSTANCE_ID = _NODE_ID
_DNS_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\Z")
_LOCATION = re.compile(r"^[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?\Z")
_HOST_LABEL = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\Z")
_META_KEY = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._/-]{0,126}[A-Za-z0-9])?\Z")
# What the control plane accepts of one instance (LIMITS in controlplane/validation.py)
# and of one node's sync (_MAX_SYNC in controlplane/agent/_session.py), repeated because
# the sidecar may not import the control plane: a configuration the sidecar accepts is
# one the control plane accepts.
#: Local services per sidecar: the instances the control plane takes in one sync.
MAX_SERVICES = 1_000
_MAX_CHECKS = 32
_MAX_TAGS = 64
_MAX_TAG_LENGTH = 128
_MAX_METADATA = 64
_MAX_METADATA_VALUE = 1024
_MAX_METADATA_BYTES = 16 * 1024
#: Upstreams, inbound listeners and control-plane addresses one sidecar may have.
MAX_UPSTREAMS = 1_000
MAX_INBOUND = 256
MAX_CONTROLPLANE_ADDRESSES = 32


def _at_most(limit: int, what: str, why: str = "") -> BeforeValidator:
    """A list of at most ``limit`` items, counted before any item is validated (so
    20,000 services cost one error, not 20,000 validations)."""

    def check(value: Any) -> Any:
        if isinstance(value, list | tuple) and len(value) > limit:
            raise ValueError(f"at most {limit} {what} are allowed{why}, got {len(value)}")
        return value

    return BeforeValidator(check)


def _metadata_bytes(value: dict[str, str]) -> int:
    return sum(len(k.encode()) + len(v.encode()) for k, v in value.items())


def metadata_fits(value: dict[str, str]) -> bool:
    """Whether metadata is within the entries and total size the control plane takes:
    for what the sidecar adds to configured metadata before sending it."""
    return len(value) <= _MAX_METADATA and _metadata_bytes(value) <= _MAX_METADATA_BYTES


def _valid_metadata(value: dict[str, str]) -> dict[str, str]:
    """Metadata as the control plane takes it: entries, keys, values and total size."""
    if len(value) > _MAX_METADATA:
        raise ValueError(f"at most {_MAX_METADATA} entries are allowed, got {len(value)}")
    for key, item in value.items():
        if not _META_KEY.match(key):
            raise ValueError(f"{key[:64]!r} is not a valid metadata key")
        if len(item) > _MAX_METADATA_VALUE:
            raise ValueError(
                f"the value of {key!r} is longer than {_MAX_METADATA_VALUE} characters"
            )
    size = _metadata_bytes(value)
    if size > _MAX_METADATA_BYTES:
        raise ValueError(
            f"larger than {_MAX_METADATA_BYTES} bytes in all (keys and values, UTF-8), got {size}"
        )
    return value


def split_hostport(value: str, *, allow_zero: bool = False) -> tuple[str, int]:
    """Splits ``host:port`` (IPv6 as ``[::1]:port``); ValueError naming the problem."""
    host, sep, port = value.strip().rpartition(":")
    if not sep or not host:
        raise ValueError(f"{value!r} is not HOST:PORT")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"{value!r}: write an IPv6 address in brackets, like [::1]:7410")
    low = 0 if allow_zero else 1
    if not port.isdigit() or not low <= int(port) <= 65535:
        raise ValueError(f"{value!r}: the port must be a number from {low} to 65535")
    return host, int(port)


def _check_host(value: str) -> str:
    value = value.strip()
    try:
        ipaddress.ip_address(value)
        return value
    except ValueError:
        pass
    labels = value.rstrip(".").split(".")
    if not value or len(value) > 253 or not all(_HOST_LABEL.match(label) for label in labels):
        raise ValueError(f"{value!r} is not an IP address or a host name")
    return value


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class NodeConfig(_Model):
    """Who this sidecar is: ``id`` defaults to the host name."""

    id: str = Field(default_factory=socket.gethostname)
    platform: str = ""
    region: str = ""
    zone: str = ""
    metadata: dict[str, str] = Field(default_factory=dict)

    @field_validator("id")
    @classmethod
    def _check_id(cls, value: str) -> str:
        if not _NODE_ID.match(value):
            raise ValueError(
                f"{value!r} is not a node id: letters, digits, '.', '_' and '-', "
                "starting with a letter or digit, at most 128 characters"
            )
        return value

    @field_validator("platform", "region", "zone")
    @classmethod
    def _check_location(cls, value: str) -> str:
        if value and not _LOCATION.match(value):
            raise ValueError(
                f"{value!r}: lowercase letters, digits, '.', '_' and '-', at most 63 characters"
            )
        return value

    _metadata = field_validator("metadata")(_valid_metadata)


class ControlPlaneLinkConfig(_Model):
    """Where the control plane is (several addresses fail over in turn), the
    sidecar's ACL token (``token``, or ``token_file``: a file holding it, read
    at start), and ``ca_file``: the CA certificates (PEM) to trust when the
    control plane serves TLS (no file: plaintext)."""

    addresses: Annotated[tuple[str, ...], _at_most(MAX_CONTROLPLANE_ADDRESSES, "addresses")] = (
        DEFAULT_CONTROLPLANE,
    )
    token: str = Field(default="", repr=False)
    token_file: Path | None = None
    ca_file: Path | None = None

    @field_validator("token_file")
    @classmethod
    def _check_token_file(cls, value: Path | None) -> Path | None:
        if value is None:
            return value
        try:
            secret = value.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ValueError(f"{value}: {exc.strerror}") from None
        if not secret:
            raise ValueError(f"{value}: the file is empty")
        return value

    @model_validator(mode="after")
    def _one_token(self) -> ControlPlaneLinkConfig:
        if self.token and self.token_file is not None:
            raise ValueError("give token or token_file, not both")
        return self

    @property
    def secret(self) -> str:
        """The token to present ("" for none): ``token``, or ``token_file``'s content."""
        if self.token_file is not None:
            return self.token_file.read_text(encoding="utf-8").strip()
        return self.token.strip()

    @field_validator("ca_file")
    @classmethod
    def _check_ca_file(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"{value}: no such file")
        return value

    @field_validator("addresses")
    @classmethod
    def _check_addresses(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("needs at least one HOST:PORT")
        for address in value:
            split_hostport(address)
        return tuple(a.strip() for a in value)


class LocalServiceConfig(_Model):
    """One local instance to register, with its health checks.

    ``id`` defaults to ``<node id>-<name>-<port>``; ``weight`` is 1-10000.
    """

    name: str
    address: str
    port: StrictInt = Field(ge=1, le=65535)
    id: str = ""
    namespace: str = ""
    tags: Annotated[tuple[str, ...], _at_most(_MAX_TAGS, "tags")] = ()
    metadata: dict[str, str] = Field(default_factory=dict)
    weight: StrictInt = Field(default=1, ge=1, le=10_000)
    checks: Annotated[tuple[AnyCheckConfig, ...], _at_most(_MAX_CHECKS, "checks")] = ()

    @field_validator("name", "namespace")
    @classmethod
    def _check_label(cls, value: str, info: ValidationInfo) -> str:
        if (value or info.field_name == "name") and not _DNS_LABEL.match(value):
            raise ValueError(
                f"{value!r}: lowercase letters, digits and '-', starting and ending with a "
                "letter or digit, at most 63 characters"
            )
        return value

    @field_validator("address")
    @classmethod
    def _check_address(cls, value: str) -> str:
        return _check_host(value)

    @field_validator("id")
    @classmethod
    def _check_id(cls, value: str) -> str:
        if value and not _INSTANCE_ID.match(value):
            raise ValueError(
                f"{value!r} is not an instance id: letters, digits, '.', '_' and '-', "
                "starting with a letter or digit, at most 128 characters"
            )
        return value

    @field_validator("tags")
    @classmethod
    def _check_tags(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        seen: set[str] = set()
        for tag in value:
            if (
                not tag
                or len(tag) > _MAX_TAG_LENGTH
                or not tag.isprintable()
                or any(c.isspace() for c in tag)
            ):
                raise ValueError(
                    f"{tag[:64]!r}: a tag is 1-{_MAX_TAG_LENGTH} printable characters "
                    "without spaces"
                )
            if tag in seen:
                raise ValueError(f"{tag!r} is listed twice")
            seen.add(tag)
        return value

    _metadata = field_validator("metadata")(_valid_metadata)

    @model_validator(mode="after")
    def _number_default_names(self) -> Self:
        """Checks without a name of their own that would share one are numbered in file
        order (``exec check``, ``exec check #2``); names given must be unique (below)."""
        seen: dict[str, int] = {}
        checks = list(self.checks)
        for j, check in enumerate(checks):
            if check.name != check.default_name:
                continue
            seen[check.name] = count = seen.get(check.name, 0) + 1
            if count > 1:
                checks[j] = check.numbered(count)
        if checks != list(self.checks):
            object.__setattr__(self, "checks", tuple(checks))  # its own construction
        return self

    @property
    def checks_by_name(self) -> dict[str, CheckConfig]:
        return {c.name: c for c in self.checks}


#: Balancer options a YAML upstream may set (``clock`` is for code only).
BALANCER_OPTIONS = (
    "panic_threshold",
    "seed",
    "smoothing",
    "decay",
    "failure_penalty",
    "vnodes_per_weight",
    "max_ring_size",
)


#: The protocols a proxy listener speaks.
PROTOCOLS = ("tcp", "http", "grpc")


class CircuitBreakerConfig(_Model):
    """Limits per upstream; past one, a new connection or request fails at once.

    ``max_connections``: open upstream connections; ``max_pending``:
    requests (or TCP connections) waiting for an upstream connection;
    ``max_requests``: requests in flight (HTTP and gRPC).
    """

    max_connections: StrictInt = Field(default=1024, ge=1, le=1_000_000)
    max_pending: StrictInt = Field(default=1024, ge=1, le=1_000_000)
    max_requests: StrictInt = Field(default=1024, ge=1, le=1_000_000)


class OutlierConfig(_Model):
    """Ejects an endpoint after ``consecutive_failures`` failures in a row
    (connect failures, resets, timeouts, 5xx / UNAVAILABLE) for
    ``base_ejection`` * (times ejected), at most ``max_ejection``; never more
    than ``max_ejected_percent`` of an upstream's endpoints at once.
    ``consecutive_failures: 0`` turns ejection off."""

    consecutive_failures: StrictInt = Field(default=5, ge=0, le=1000)
    base_ejection: Duration = 30.0
    max_ejection: Duration = 300.0
    max_ejected_percent: StrictInt = Field(default=50, ge=0, le=100)

    @model_validator(mode="after")
    def _check_times(self) -> Self:
        if self.base_ejection <= 0:
            raise ValueError("base_ejection must be greater than 0")
        if self.max_ejection < self.base_ejection:
            raise ValueError("max_ejection must be at least base_ejection")
        return self


class RetryBudgetConfig(_Model):
    """Retries in flight may be at most ``percent`` of the requests in flight,
    but ``min_retries`` are always allowed: retries cannot multiply an overload."""

    percent: float = Field(default=20.0, ge=0, le=100)
    min_retries: StrictInt = Field(default=3, ge=0, le=10_000)


class ProxyPolicy(_Model):
    """How a proxy listener forwards: the keys shared by ``upstreams`` and ``inbound``.

    ``timeout`` bounds a whole HTTP request or gRPC call, retries included
    (0: none); ``per_try_timeout`` bounds each attempt (null: only
    ``timeout``); ``idle_timeout`` closes a TCP connection, or an HTTP
    keep-alive connection, that carried nothing for that long. ``retries``
    are extra attempts on another endpoint: always when the upstream never
    saw the request (connect failure), and for idempotent requests also on a
    reset, a per-try timeout or a status in ``retry_on``.

    HTTP only: a request head (start line and header fields) may be at most
    ``max_request_headers_kb`` KiB (431 past it; trailers get as much again),
    with at most ``max_headers`` fields (431; trailer fields count too), and
    its target at most ``max_url_kb`` KiB (414; the head's limit bounds it
    too); an upstream's response head at most ``max_response_headers_kb``
    KiB, with at most ``max_headers`` fields (502). TRACE is refused with 405
    unless ``allow_trace``. A request head (and a chunked request's trailers)
    must be complete within ``head_timeout`` of its first byte (408 past it),
    and a new connection's first byte must come within it too (closed).

    Every protocol: the listener holds at most ``max_connections`` client
    connections, and at most ``max_connections_per_ip`` from one address (an
    IPv6 client: from one /64); the excess is refused as it is accepted (HTTP:
    503; TCP: reset; gRPC: closed, and only ``max_connections`` applies). A
    gRPC client's HTTP/2 preface and settings must come within ``head_timeout``.
    """

    protocol: str = "tcp"
    connect_timeout: Duration = 2.0
    idle_timeout: Duration = 300.0
    timeout: Duration = 15.0
    per_try_timeout: Duration | None = None
    retries: StrictInt = Field(default=2, ge=0, le=10)
    retry_on: tuple[StrictInt, ...] = (502, 503, 504)
    retry_budget: RetryBudgetConfig = Field(default_factory=RetryBudgetConfig)
    circuit_breaker: CircuitBreakerConfig = Field(default_factory=CircuitBreakerConfig)
    outlier: OutlierConfig = Field(default_factory=OutlierConfig)
    max_request_headers_kb: StrictInt = Field(default=60, ge=1, le=1024)
    max_url_kb: StrictInt = Field(default=16, ge=1, le=1024)
    max_headers: StrictInt = Field(default=100, ge=1, le=10_000)
    max_response_headers_kb: StrictInt = Field(default=60, ge=1, le=1024)
    allow_trace: StrictBool = False
    head_timeout: Duration = 10.0
    max_connections: StrictInt = Field(default=10_000, ge=1, le=1_000_000)
    max_connections_per_ip: StrictInt = Field(default=1_000, ge=1, le=1_000_000)

    @field_validator("protocol")
    @classmethod
    def _check_protocol(cls, value: str) -> str:
        if value not in PROTOCOLS:
            raise ValueError(f"unknown protocol {value!r}; expected one of {', '.join(PROTOCOLS)}")
        return value

    @field_validator("connect_timeout", "idle_timeout")
    @classmethod
    def _check_positive(cls, value: float) -> float:
        if value <= 0:
            raise ValueError("must be greater than 0")
        return value

    @field_validator("timeout")
    @classmethod
    def _check_timeout(cls, value: float) -> float:
        if value < 0:
            raise ValueError("must be 0 (no timeout) or greater")
        return value

    @field_validator("head_timeout")
    @classmethod
    def _check_head_timeout(cls, value: float) -> float:
        if not 1.0 <= value <= 300.0:
            raise ValueError("must be between 1s and 5m")
        return value

    @field_validator("per_try_timeout")
    @classmethod
    def _check_per_try(cls, value: float | None) -> float | None:
        if value is not None and value <= 0:
            raise ValueError("must be greater than 0 (or null: only `timeout`)")
        return value

    @field_validator("retry_on")
    @classmethod
    def _check_retry_on(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        for status in value:
            if not 500 <= status <= 599:
                raise ValueError(f"{status}: only 5xx statuses can be retried")
        return value


def _check_listen(value: str | None) -> str | None:
    if value is None:
        return None
    split_hostport(value, allow_zero=True)
    return value.strip()


class InboundConfig(ProxyPolicy):
    """A listener in front of a local application, which remote sidecars send to.

    ``to`` is the application's address. ``service`` names the local service
    it fronts (default: the one whose port is ``to``'s port, if any); that
    service is registered with the listener's port in its metadata
    (``eco.inbound.port``), so client sidecars dial the listener, not the app.
    """

    listen: str
    to: str
    service: str = ""

    _listen = field_validator("listen")(_check_listen)

    @field_validator("to")
    @classmethod
    def _check_to(cls, value: str) -> str:
        host, _port = split_hostport(value)
        _check_host(host)
        return value.strip()


_ORIGIN = re.compile(r"([a-z][a-z0-9+.-]*)://(\[[0-9a-f:.]+\]|[a-z0-9._~-]+)(?::(\d{1,5}))?\Z")
_DEFAULT_PORTS = {"http": "80", "https": "443"}


def normalize_origin(value: str) -> str:
    """An origin as browsers send it in ``Origin``: ``scheme://host[:port]``, lower case,
    without a default port or a trailing slash. Raises ValueError for anything else,
    ``*`` and ``null`` (what sandboxed pages and local files send) included."""
    text = value.strip().lower().removesuffix("/")
    if text == "*":
        raise ValueError("'*' would let any web page use the bus: list each origin")
    if text == "null":
        raise ValueError(
            "'null' is what sandboxed pages and local files send: any of them could use "
            "the bus; list each origin"
        )
    match = _ORIGIN.match(text)
    if match is None:
        raise ValueError(f"{value!r} is not an origin like https://app.example.com[:port]")
    scheme, host, port = match.groups()
    if port is None or _DEFAULT_PORTS.get(scheme) == port:
        return f"{scheme}://{host}"
    return f"{scheme}://{host}:{int(port)}"


class HttpBridgeConfig(_Model):
    """A bus bridge (docs/bus.md#bridges): ``http`` serves HTTP, Server-Sent
    Events and WebSocket on ``listen``, relayed through this sidecar.

    Requests that carry an ``Origin`` (those of web pages) are refused unless it
    is in ``allowed_origins``. A request head must arrive within
    ``head_timeout``, a body within ``body_timeout``; a connection idle for
    ``idle_timeout`` is closed; at most ``max_connections`` connections are
    held, ``max_connections_per_ip`` from one client address; a WebSocket
    holds at most ``max_subscriptions``."""

    protocol: Literal["http"] = "http"
    listen: str
    max_body: StrictInt = Field(default=1024 * 1024, ge=1, le=8 * 1024 * 1024)
    allowed_origins: tuple[str, ...] = Field(default=(), max_length=64)
    head_timeout: Duration = 10.0
    body_timeout: Duration = 30.0
    idle_timeout: Duration = 30.0
    max_connections: StrictInt = Field(default=1024, ge=1, le=1_000_000)
    max_connections_per_ip: StrictInt = Field(default=512, ge=1, le=1_000_000)
    max_subscriptions: StrictInt = Field(default=256, ge=1, le=100_000)

    _listen = field_validator("listen")(_check_listen)

    @field_validator("allowed_origins")
    @classmethod
    def _check_origins(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(dict.fromkeys(normalize_origin(origin) for origin in value))

    @field_validator("head_timeout", "body_timeout", "idle_timeout")
    @classmethod
    def _check_timeout(cls, value: float) -> float:
        if not 0.001 <= value <= 3600:
            raise ValueError("must be between 1ms and 1h")
        return value


#: The bridge kinds by their ``protocol`` (``http`` when a bridge names none).
BRIDGE_PROTOCOLS: dict[str, type[BaseModel]] = {
    "http": HttpBridgeConfig,
    "amqp": AmqpBridgeConfig,
}


def _bridge_kind(value: Any) -> Any:
    """Validates a bridge as the model its ``protocol`` names, so that its errors name
    its own fields (``bridges[1].url``), not every kind's."""
    if not isinstance(value, dict):
        return value
    protocol = value.get("protocol", "http")
    model = BRIDGE_PROTOCOLS.get(protocol) if isinstance(protocol, str) else None
    if model is None:
        raise ValidationError.from_exception_data(
            "BridgeConfig",
            [
                InitErrorDetails(
                    type=PydanticCustomError(
                        "value_error",
                        "{msg}",
                        {
                            "msg": f"unknown protocol {protocol!r}; expected one of "
                            + ", ".join(BRIDGE_PROTOCOLS)
                        },
                    ),
                    loc=("protocol",),
                    input=protocol,
                )
            ],
        )
    try:
        return model.model_validate(value)
    except ValidationError as err:
        raise _with_known_keys(err, model) from None


def _with_known_keys(err: ValidationError, model: type[BaseModel]) -> ValidationError:
    """``err`` with each unknown key's message listing the keys of the model it is in
    (the file reader would otherwise list those of the first bridge kind)."""
    details: list[InitErrorDetails] = []
    for error in err.errors(include_url=False):
        loc, kind, message = tuple(error["loc"]), error["type"], str(error["msg"])
        if kind == "extra_forbidden":
            kind = "value_error"
            message = unknown_key_message(str(loc[-1]), _keys_at(model, loc[:-1]))
        # "{msg}": a message may hold braces (templates) that are not placeholders.
        error_type = PydanticCustomError(kind, "{msg}", {"msg": message})
        details.append(InitErrorDetails(type=error_type, loc=loc, input=error.get("input")))
    return ValidationError.from_exception_data(err.title, details)


def _keys_at(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    current: Any = model
    for part in loc:
        if isinstance(part, int):
            continue
        fields = current.model_fields if _is_model(current) else {}
        info = fields.get(part)
        if info is None:
            return []
        current = next(
            (
                a
                for a in (info.annotation, *getattr(info.annotation, "__args__", ()))
                if _is_model(a)
            ),
            None,
        )
    return sorted(current.model_fields) if _is_model(current) else []


def _is_model(value: Any) -> TypeGuard[type[BaseModel]]:
    return isinstance(value, type) and issubclass(value, BaseModel)


#: A bus bridge: ``protocol: http`` (the default) or ``protocol: amqp``.
BridgeConfig = Annotated[HttpBridgeConfig | AmqpBridgeConfig, BeforeValidator(_bridge_kind)]


class UpstreamConfig(ProxyPolicy):
    """A service the local applications call, and how to balance across it.

    ``balancer`` is one of ``sdk.balancer.STRATEGIES`` (default
    ``health_based``); ``locality`` prefers endpoints in this node's zone,
    then region. The other keys are the balancer's options and are checked
    against the chosen strategy.
    """

    service: str
    namespace: str = ""
    #: where the applications dial this upstream through the sidecar (null: no listener,
    #: the local API only)
    listen: str | None = None
    balancer: str = DEFAULT_BALANCER
    locality: StrictBool = True
    panic_threshold: float | None = None
    seed: StrictInt | None = None
    smoothing: float | None = None
    decay: float | None = None
    failure_penalty: float | None = None
    vnodes_per_weight: StrictInt | None = None
    max_ring_size: StrictInt | None = None

    @field_validator("service", "namespace")
    @classmethod
    def _check_label(cls, value: str, info: ValidationInfo) -> str:
        if (value or info.field_name == "service") and not _DNS_LABEL.match(value):
            raise ValueError(
                f"{value!r}: lowercase letters, digits and '-', starting and ending with a "
                "letter or digit, at most 63 characters"
            )
        return value

    _listen = field_validator("listen")(_check_listen)

    @field_validator("balancer")
    @classmethod
    def _check_balancer(cls, value: str) -> str:
        if value not in STRATEGIES:
            raise ValueError(f"unknown balancer {value!r}; expected one of {', '.join(STRATEGIES)}")
        return value

    @field_validator(*BALANCER_OPTIONS)
    @classmethod
    def _check_option(cls, value: Any, info: ValidationInfo) -> Any:
        balancer = info.data.get("balancer")
        if value is None or balancer is None:
            return value
        try:
            make_balancer(balancer, **{str(info.field_name): value})
        except TypeError:
            raise ValueError(f"the {balancer} balancer does not take this option") from None
        return value

    @property
    def options(self) -> dict[str, Any]:
        """The balancer options that were set."""
        return {k: getattr(self, k) for k in BALANCER_OPTIONS if getattr(self, k) is not None}

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace or "default", self.service)


def _positive(minimum: float) -> Any:
    def check(value: float) -> float:
        if value <= 0:
            raise ValueError("must be greater than 0")
        if value < minimum:
            raise ValueError(f"must be at least {format_duration(minimum)}")
        return value

    return check


class ListenerTlsConfig(_Model):
    """The certificate (PEM chain) and key the sidecar's own listeners present
    when they are off loopback: the local API, admin and HTTP bridges."""

    cert_file: Path
    key_file: Path

    @field_validator("cert_file", "key_file")
    @classmethod
    def _check_file(cls, value: Path) -> Path:
        if not value.is_file():
            raise ValueError(f"{value}: no such file")
        return value


#: Where the proxy listeners run: the sidecar's own (``python``) or an Envoy it supervises.
DATAPLANES = ("python", "envoy")


class EnvoyConfig(_Model):
    """The Envoy process of ``dataplane: envoy`` (docs/xds.md).

    ``binary``: the Envoy executable (null: ``.tools/envoy-venv/bin/envoy``
    under the working directory, which ``scripts/install-envoy.sh`` installs,
    else ``envoy`` on PATH); ``admin``: Envoy's admin address, on loopback
    (port 0: any free port); ``concurrency``: worker threads; ``log_level``:
    Envoy's own log level; ``restart_backoff`` / ``max_restart_backoff``: how
    long a crashed Envoy waits before it is started again (doubling).
    """

    binary: Path | None = None
    admin: str = "127.0.0.1:0"
    concurrency: StrictInt = Field(default=1, ge=1, le=256)
    log_level: Literal["trace", "debug", "info", "warning", "error", "critical", "off"] = "warning"
    restart_backoff: Duration = 0.5
    max_restart_backoff: Duration = 30.0

    @field_validator("admin")
    @classmethod
    def _check_admin(cls, value: str) -> str:
        host, _port = split_hostport(value, allow_zero=True)
        if not is_loopback(host):
            raise ValueError(
                f"{value}: Envoy's admin page can stop the proxy; keep it on loopback (127.0.0.1)"
            )
        return value.strip()

    @field_validator("binary")
    @classmethod
    def _check_binary(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"{value}: no such file (scripts/install-envoy.sh installs Envoy)")
        return value

    @field_validator("restart_backoff", "max_restart_backoff")
    @classmethod
    def _check_backoff(cls, value: float) -> float:
        if value <= 0:
            raise ValueError("must be greater than 0")
        return value


class SidecarConfig(_Model):
    """Everything one ``eco sidecar`` process needs to know.

    ``grace`` and ``deregister_critical_after`` travel as whole seconds
    (rounded up). ``admin`` may be ``off`` (or null) to disable admin HTTP.
    ``leave_on_shutdown`` removes this node's instances from the registry
    on a graceful stop instead of letting them go through grace.
    """

    node: NodeConfig = Field(default_factory=NodeConfig)
    controlplane: ControlPlaneLinkConfig = Field(default_factory=ControlPlaneLinkConfig)
    data_dir: Path = Path(".eco/sidecar")
    local_api: str = DEFAULT_LOCAL_API
    admin: str | None = DEFAULT_ADMIN
    services: Annotated[
        tuple[LocalServiceConfig, ...],
        _at_most(
            MAX_SERVICES,
            "services",
            f" (the control plane takes at most {MAX_SERVICES} instances per node)",
        ),
    ] = ()
    upstreams: Annotated[tuple[UpstreamConfig, ...], _at_most(MAX_UPSTREAMS, "upstreams")] = ()
    inbound: Annotated[tuple[InboundConfig, ...], _at_most(MAX_INBOUND, "inbound listeners")] = ()
    bridges: tuple[BridgeConfig, ...] = Field(default=(), max_length=8)
    #: TLS for the local API, admin and HTTP bridges when they listen off loopback
    tls: ListenerTlsConfig | None = None
    #: serve those listeners off loopback without TLS anyway (tokens are still checked)
    insecure: StrictBool = False
    #: on shutdown, requests in flight through the proxy get this long to finish
    drain_grace: Duration = 10.0
    grace: Duration = 15.0
    deregister_critical_after: Duration = 60.0
    sync_interval: Duration = 30.0
    leave_on_shutdown: StrictBool = True
    #: run the sync jobs the control plane schedules on this node (docs/sync-jobs.md)
    sync_jobs: StrictBool = True
    #: where those jobs find their named profiles (docs/sync.md, "Named profiles")
    sync: SyncHostConfig = Field(default_factory=SyncHostConfig)
    #: where the proxy listeners run: ``python`` (the sidecar's own) or ``envoy`` (docs/xds.md)
    dataplane: str = "python"
    envoy: EnvoyConfig = Field(default_factory=EnvoyConfig)

    @field_validator("dataplane")
    @classmethod
    def _check_dataplane(cls, value: str) -> str:
        if value not in DATAPLANES:
            raise ValueError(
                f"unknown data plane {value!r}; expected one of {', '.join(DATAPLANES)}"
            )
        return value

    @field_validator("local_api")
    @classmethod
    def _check_local_api(cls, value: str) -> str:
        split_hostport(value, allow_zero=True)
        return value.strip()

    @field_validator("admin", mode="before")
    @classmethod
    def _check_admin(cls, value: Any) -> Any:
        if value is None or value is False:
            return None
        if isinstance(value, str):
            if value.strip().lower() in ("", "off", "none"):
                return None
            split_hostport(value, allow_zero=True)
            return value.strip()
        return value

    @field_validator("inbound", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, dict) else value

    @field_validator("drain_grace")
    @classmethod
    def _check_drain(cls, value: float) -> float:
        if value < 0:
            raise ValueError("must be 0 or greater")
        return value

    _grace = field_validator("grace", "deregister_critical_after")(_positive(1.0))
    _sync = field_validator("sync_interval")(_positive(0.1))

    @model_validator(mode="after")
    def _complete(self) -> Self:
        problem = Problems()

        services: list[LocalServiceConfig] = []
        seen: dict[tuple[str, str, str], int] = {}
        for i, service in enumerate(self.services):
            if not service.id:
                service = service.model_copy(
                    update={"id": f"{self.node.id}-{service.name}-{service.port}"}
                )
                if not _INSTANCE_ID.match(service.id):
                    problem(("services", i, "id"), f"the default id {service.id!r} is too long")
            key = (service.namespace or "default", service.name, service.id)
            if key in seen:
                problem(
                    ("services", i, "id"),
                    f"{service.id!r} is also the id of services[{seen[key]}]",
                )
            seen.setdefault(key, i)
            names: dict[str, int] = {}
            for j, check in enumerate(service.checks):
                if check.name in names:
                    problem(
                        ("services", i, "checks", j),
                        f"check name {check.name!r} is also used by checks[{names[check.name]}]; "
                        "give one a different name",
                    )
                names.setdefault(check.name, j)
            services.append(service)
        # The sidecar adds eco.inbound.port to a service behind an inbound listener:
        # leave it room within what the control plane takes.
        fronted = {fronted_service(entry, services) for entry in self.inbound}
        reserve = len(INBOUND_PORT_KEY) + 5
        for i, service in enumerate(services):
            if service.name not in fronted:
                continue
            behind = (
                f"for a service behind an inbound listener (the sidecar adds {INBOUND_PORT_KEY})"
            )
            if len(service.metadata) >= _MAX_METADATA:
                problem(
                    ("services", i, "metadata"),
                    f"at most {_MAX_METADATA - 1} entries {behind}, got {len(service.metadata)}",
                )
            elif (size := _metadata_bytes(service.metadata)) > _MAX_METADATA_BYTES - reserve:
                problem(
                    ("services", i, "metadata"),
                    f"larger than {_MAX_METADATA_BYTES - reserve} bytes in all {behind}, "
                    f"got {size}",
                )
        upstreams: dict[tuple[str, str], int] = {}
        for i, upstream in enumerate(self.upstreams):
            if upstream.key in upstreams:
                problem(
                    ("upstreams", i, "service"),
                    f"{upstream.service!r} is also upstreams[{upstreams[upstream.key]}]",
                )
            upstreams.setdefault(upstream.key, i)
        listens: dict[str, str] = {}

        def claim(listen: str | None, where: str, loc: tuple[str | int, ...]) -> None:
            if listen is None:
                return
            host, port = split_hostport(listen, allow_zero=True)
            if port and (key := f"{host}:{port}") in listens:
                problem(loc, f"{listen} is also the listen address of {listens[key]}")
            elif port:
                listens[key] = where

        claim(self.local_api, "local_api", ("local_api",))
        claim(self.admin, "admin", ("admin",))
        for i, upstream in enumerate(self.upstreams):
            claim(upstream.listen, f"upstreams[{i}]", ("upstreams", i, "listen"))
        amqp_names: dict[str, int] = {}
        for i, bridge in enumerate(self.bridges):
            if isinstance(bridge, HttpBridgeConfig):
                claim(bridge.listen, f"bridges[{i}]", ("bridges", i, "listen"))
            elif bridge.name in amqp_names:
                problem(
                    ("bridges", i, "name"),
                    f"{bridge.name!r} is also the name of bridges[{amqp_names[bridge.name]}]; "
                    "give each AMQP bridge its own",
                )
            else:
                amqp_names[bridge.name] = i
        local_names = {s.name for s in services}
        for i, inbound in enumerate(self.inbound):
            claim(inbound.listen, f"inbound[{i}]", ("inbound", i, "listen"))
            if inbound.service and inbound.service not in local_names:
                problem(
                    ("inbound", i, "service"),
                    f"{inbound.service!r} is not one of the local services "
                    f"({', '.join(sorted(local_names)) or 'none'})",
                )
        if self.dataplane == "envoy":
            # Envoy is configured once, by the control plane: it cannot report a
            # port it picked back into the instance metadata.
            at_zero = [
                (("upstreams", i, "listen"), u.listen) for i, u in enumerate(self.upstreams)
            ] + [(("inbound", i, "listen"), entry.listen) for i, entry in enumerate(self.inbound)]
            for loc, listen in at_zero:
                if listen is not None and split_hostport(listen, allow_zero=True)[1] == 0:
                    problem(loc, "port 0 is not supported with dataplane: envoy; give a port")
        if self.tls is None and not self.insecure:
            for where, listen in self.exposed_listeners():
                problem(
                    ("tls",),
                    f"{where} listens on {listen}, off loopback: give tls.cert_file and "
                    "tls.key_file (or insecure: true to serve plaintext)",
                )
                break
        problem.raise_if_any("SidecarConfig")
        object.__setattr__(self, "services", tuple(services))
        return self

    def exposed_listeners(self) -> list[tuple[str, str]]:
        """The sidecar's own listeners off loopback, as (key, address): these
        serve TLS (``tls``) and check the tokens clients present."""
        listeners = [("local_api", self.local_api)]
        if self.admin is not None:
            listeners.append(("admin", self.admin))
        listeners += [
            (f"bridges[{i}]", bridge.listen)
            for i, bridge in enumerate(self.bridges)
            if isinstance(bridge, HttpBridgeConfig)
        ]
        return [
            (k, a) for k, a in listeners if not is_loopback(split_hostport(a, allow_zero=True)[0])
        ]


def fronted_service(inbound: InboundConfig, services: Sequence[LocalServiceConfig]) -> str:
    """The local service an inbound listener fronts: its ``service``, or the one on
    ``to``'s port; "" when none is."""
    if inbound.service:
        return inbound.service
    port = split_hostport(inbound.to)[1]
    return next((service.name for service in services if service.port == port), "")


def parse_config(text: str, source: str = "sidecar.yaml") -> SidecarConfig:
    """Validates YAML text; raises :class:`ConfigError` naming line and field."""
    return read_config(text, source, SidecarConfig)


def load_config(path: str | Path) -> SidecarConfig:
    """Reads and validates a sidecar configuration file.

    Raises :class:`ConfigError` (a ValueError) whose message is one line:
    ``FILE:LINE: FIELD: what is wrong``.
    """
    path = Path(path)
    return read_config_file(path, SidecarConfig, path.name if path.parent == Path() else str(path))

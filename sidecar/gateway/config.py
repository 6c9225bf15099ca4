"""The gateway's configuration: frozen, validated models, read from YAML in one place.

::

    listen: "127.0.0.1:8080"
    controlplane: {addresses: ["127.0.0.1:7400"]}
    routes:
      - name: orders
        match: {hosts: [api.example.com], path_prefix: /api/orders, methods: [GET, POST]}
        upstream: orders
        rewrite: {strip_prefix: /api}
        timeout: 5s

:func:`load_config` is the only reader of the file; the gateway's parts receive
a :class:`GatewayConfig`. A bad file is one :class:`ConfigError` that lists
every problem, each naming the line and the field
(``gateway.yaml:12: routes[1].split[0].weight: …``). Every key is in
docs/gateway.md (Configuration, Routing).

A route's ``policy`` holds the sidecar's proxy keys (retries, timeouts,
circuit breaking, outlier ejection, balancer): :class:`RoutePolicy` *is* a
:class:`sidecar.config.UpstreamConfig`, so the sidecar's upstream machinery
takes :meth:`RouteConfig.upstream_config` as it is. The top-level ``policy``
gives every route its defaults and the listener its limits.
"""

from __future__ import annotations

import hashlib
import re
import socket
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, Self

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    ValidationError,
    field_validator,
    model_validator,
)

from serving.addresses import is_loopback
from sidecar._config_file import (
    ConfigError,
    ConfigProblem,
    Problems,
    read_config,
    read_config_file,
)
from sidecar.config import (
    ControlPlaneLinkConfig,
    NodeConfig,
    UpstreamConfig,
    normalize_origin,
    split_hostport,
)
from sidecar.gateway.auth import (
    AllowConfig,
    ConsumerConfig,
    HmacConfig,
    JwtConfig,
    KeyAuthConfig,
    MtlsConfig,
    consumer_problems,
)
from sidecar.gateway.cache import CacheConfig, CacheStoreConfig
from sidecar.gateway.ratelimit import RateLimitPolicies, RateLimitStoreConfig
from sidecar.health import Duration

__all__ = [
    "DEFAULT_LISTEN",
    "LISTENER_POLICY_KEYS",
    "MAX_REGEX_LENGTH",
    "MAX_ROUTES",
    "Backend",
    "ConfigError",
    "ConfigProblem",
    "CorsConfig",
    "GatewayConfig",
    "GatewayTlsConfig",
    "JsonBodyConfig",
    "MatchConfig",
    "PluginsConfig",
    "RedirectConfig",
    "RequestTransformConfig",
    "ResponseTransformConfig",
    "RewriteConfig",
    "RouteConfig",
    "RoutePolicy",
    "SplitConfig",
    "load_config",
    "parse_config",
]

DEFAULT_LISTEN = "127.0.0.1:8080"
#: Routes one file may hold (a 1 MiB file holds about 10,000 short ones).
MAX_ROUTES = 50_000
#: The longest ``path_regex`` (match or rewrite), in characters.
MAX_REGEX_LENGTH = 1024
MAX_HOSTS = 64
MAX_CONDITIONS = 32
MAX_SPLIT = 64
MAX_ENDPOINTS = 256
MAX_TRANSFORM_ENTRIES = 64
#: The largest body a transform may buffer (``max_body``).
MAX_BODY_LIMIT = 16 * 1024 * 1024
DEFAULT_MAX_BODY = 1024 * 1024

#: ProxyPolicy keys that belong to the one listener, not to a route: they are
#: set in the top-level ``policy`` only.
LISTENER_POLICY_KEYS = (
    "max_request_headers_kb",
    "max_url_kb",
    "max_headers",
    "allow_trace",
    "head_timeout",
    "max_connections",
    "max_connections_per_ip",
)
#: UpstreamConfig keys a policy may not set: the route says which service, the
#: listener is the gateway's, and it speaks HTTP.
_NOT_POLICY_KEYS = {
    "service": "the route names its service (upstream or split)",
    "namespace": "the route has its own namespace key",
    "listen": "the gateway has one listener (the top-level listen)",
    "protocol": "the gateway speaks HTTP to its upstreams",
}

_ROUTE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}\Z")
_DNS_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\Z")
_HOST_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\Z")
_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,128}\Z")
_METHOD = re.compile(r"^[A-Z]{1,20}\Z")
_GROUP_REF = re.compile(r"\\(\d+)|\\g<([^>]*)>")
#: Header fields a transform may not set, add or remove: they frame the message or
#: the connection, and the data plane owns them (a set Content-Length would smuggle).
_FRAMING_HEADERS = frozenset(
    {
        "connection",
        "content-length",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def _label(value: str) -> str:
    if not _DNS_LABEL.match(value):
        raise ValueError(
            f"{value!r}: lowercase letters, digits and '-', starting and ending with a "
            "letter or digit, at most 63 characters"
        )
    return value


def _namespace(value: str) -> str:
    return _label(value) if value else value


def _host_pattern(value: str) -> str:
    """An exact host name (or IP address), or ``*.suffix``; lower case, no port."""
    text = value.strip().lower().rstrip(".")
    if text == "*":
        raise ValueError("'*' matches every host: leave hosts out instead")
    name = text[2:] if text.startswith("*.") else text
    if ":" in name and not name.startswith("["):
        raise ValueError(f"{value!r}: a host without a port (the port is the listener's)")
    labels = name.split(".")
    if not name or len(name) > 253 or not all(_HOST_LABEL.match(label) for label in labels):
        raise ValueError(f"{value!r} is not a host name or '*.' followed by one")
    return text


def _header_name(value: str) -> str:
    if not _TOKEN.match(value):
        raise ValueError(f"{value[:64]!r} is not a header field name")
    return value.lower()


def _field_value(value: str) -> str:
    if len(value) > 4096 or any(c in value for c in "\r\n\0"):
        raise ValueError(
            f"{value[:64]!r}: a header or query value is at most 4096 characters, "
            "without CR, LF or NUL"
        )
    return value


def _compile(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    if len(value) > MAX_REGEX_LENGTH:
        raise ValueError(f"a regular expression of at most {MAX_REGEX_LENGTH} characters")
    try:
        return re.compile(value)
    except re.error as exc:
        raise ValueError(f"{value!r} is not a regular expression: {exc}") from None


#: A regular expression, compiled once when the file is read.
Regex = Annotated[re.Pattern[str], BeforeValidator(_compile)]
HostPattern = Annotated[str, AfterValidator(_host_pattern)]
HeaderName = Annotated[str, AfterValidator(_header_name)]
FieldValue = Annotated[str, AfterValidator(_field_value)]


def _path(value: str) -> str:
    if not value.startswith("/") or len(value) > 2048 or any(c.isspace() for c in value):
        raise ValueError(f"{value[:64]!r}: a path starts with '/', without spaces")
    if "?" in value or "#" in value:
        raise ValueError(f"{value[:64]!r}: a path without '?' or '#' (match the query with query)")
    return value


Path_ = Annotated[str, AfterValidator(_path)]


def _methods(value: tuple[str, ...]) -> tuple[str, ...]:
    out = tuple(dict.fromkeys(m.strip().upper() for m in value))
    for method in out:
        if not _METHOD.match(method):
            raise ValueError(f"{method[:32]!r} is not an HTTP method")
    return out


class MatchConfig(_Model):
    """Which requests a route takes; every condition given must hold.

    ``hosts``: exact names or ``*.example.com`` (any name ending in
    ``.example.com``); none: any host. At most one of ``path`` (exact),
    ``path_prefix`` (whole segments: ``/api`` takes ``/api`` and ``/api/x``,
    not ``/apix``) and ``path_regex`` (the whole path must match); none: every
    path. ``methods``, ``headers`` and ``query`` (name: value, equal to one
    of the request's values) narrow it further.
    """

    hosts: Annotated[tuple[HostPattern, ...], Field(max_length=MAX_HOSTS)] = ()
    path: Path_ | None = None
    path_prefix: Path_ | None = None
    path_regex: Regex | None = None
    methods: Annotated[tuple[str, ...], Field(max_length=MAX_CONDITIONS)] = ()
    headers: Annotated[dict[HeaderName, FieldValue], Field(max_length=MAX_CONDITIONS)] = Field(
        default_factory=dict
    )
    query: Annotated[dict[str, FieldValue], Field(max_length=MAX_CONDITIONS)] = Field(
        default_factory=dict
    )

    @field_validator("path_prefix")
    @classmethod
    def _trim_prefix(cls, value: str | None) -> str | None:
        # "/api/" and "/api" are one prefix: both take /api and /api/...
        return value if value is None or value == "/" else value.rstrip("/") or "/"

    _methods = field_validator("methods")(_methods)

    @field_validator("query")
    @classmethod
    def _check_query_names(cls, value: dict[str, str]) -> dict[str, str]:
        for name in value:
            if not name or len(name) > 256 or any(c in name for c in "&=#\r\n\0 "):
                raise ValueError(f"{name[:64]!r} is not a query parameter name")
        return value

    @model_validator(mode="after")
    def _one_path(self) -> Self:
        given = [k for k in ("path", "path_prefix", "path_regex") if getattr(self, k) is not None]
        if len(given) > 1:
            raise ValueError(f"give one of path, path_prefix and path_regex, not {given}")
        return self

    @property
    def conditions(self) -> int:
        """How many header, query and method conditions: more wins a tie (Routing)."""
        return len(self.headers) + len(self.query) + (1 if self.methods else 0)


def _endpoint(value: str) -> str:
    host, _port = split_hostport(value)
    if not host:
        raise ValueError(f"{value!r} is not HOST:PORT")
    return value.strip()


Endpoint = Annotated[str, AfterValidator(_endpoint)]


class SplitConfig(_Model):
    """One service of a weighted split. ``endpoints`` (``HOST:PORT``) are fixed
    addresses used instead of the registry's instances of ``service``."""

    service: Annotated[str, AfterValidator(_label)]
    weight: StrictInt = Field(default=1, ge=0, le=10_000)
    namespace: Annotated[str, AfterValidator(_namespace)] = ""
    endpoints: Annotated[tuple[Endpoint, ...], Field(max_length=MAX_ENDPOINTS)] = ()


class RedirectConfig(_Model):
    """Answer with a redirect instead of forwarding: either ``location`` (an
    absolute URL or a path, sent as is), or any of ``scheme``, ``host``,
    ``port`` and ``path`` replacing those of the request's URL (the path,
    after ``rewrite``, and the query are kept unless given)."""

    location: str | None = None
    scheme: Literal["http", "https"] | None = None
    host: str | None = None
    port: StrictInt | None = Field(default=None, ge=1, le=65535)
    path: Path_ | None = None
    keep_query: StrictBool = True
    status: Literal[301, 302, 307, 308] = 302

    @field_validator("location")
    @classmethod
    def _check_location(cls, value: str | None) -> str | None:
        if value is not None:
            if not value or len(value) > 2048 or any(c.isspace() or c == "\0" for c in value):
                raise ValueError("a URL or path without spaces, at most 2048 characters")
            if not (value.startswith("/") or re.match(r"^https?://[^/?#]+", value)):
                raise ValueError(f"{value[:64]!r}: an absolute http(s) URL or a path from '/'")
        return value

    @field_validator("host")
    @classmethod
    def _check_host(cls, value: str | None) -> str | None:
        if value is not None and value.startswith("*"):
            raise ValueError("a redirect goes to one host")
        return None if value is None else _host_pattern(value)

    @model_validator(mode="after")
    def _one_form(self) -> Self:
        parts = [k for k in ("scheme", "host", "port", "path") if getattr(self, k) is not None]
        if self.location is not None and parts:
            raise ValueError(f"give location, or {', '.join(parts)}, not both")
        if self.location is None and not parts:
            raise ValueError("give location, or at least one of scheme, host, port and path")
        return self


class RewriteConfig(_Model):
    """The path sent upstream: ``strip_prefix`` removes a leading prefix (whole
    segments; ``/`` is left when nothing is), or ``path_regex`` and
    ``replacement`` replace the first match (``\\1``, ``\\g<name>`` refer to
    its groups)."""

    strip_prefix: Path_ | None = None
    path_regex: Regex | None = None
    replacement: str | None = None

    @field_validator("strip_prefix")
    @classmethod
    def _trim(cls, value: str | None) -> str | None:
        if value is not None and value.rstrip("/") == "":
            raise ValueError("stripping '/' changes nothing")
        return None if value is None else value.rstrip("/")

    @model_validator(mode="after")
    def _one_form(self) -> Self:
        if self.strip_prefix is not None:
            if self.path_regex is not None or self.replacement is not None:
                raise ValueError("give strip_prefix, or path_regex and replacement, not both")
            return self
        if self.path_regex is None or self.replacement is None:
            raise ValueError("give strip_prefix, or path_regex and replacement")
        for number, name in _GROUP_REF.findall(self.replacement):
            if number and int(number) > self.path_regex.groups:
                raise ValueError(f"replacement refers to group {number}, which path_regex lacks")
            if (
                name
                and not (name.isdigit() and int(name) <= self.path_regex.groups)
                and (name not in self.path_regex.groupindex)
            ):
                raise ValueError(f"replacement refers to group {name!r}, which path_regex lacks")
        return self


class RoutePolicy(UpstreamConfig):
    """How a route forwards: the sidecar's proxy keys (docs/sidecar.md, upstreams),
    less ``service``, ``namespace``, ``listen`` and ``protocol``.

    Being an :class:`UpstreamConfig`, it is what the sidecar's upstream
    machinery takes; :meth:`RouteConfig.upstream_config` fills in the service.
    """

    service: str = ""
    protocol: str = "http"

    @model_validator(mode="before")
    @classmethod
    def _refuse_route_keys(cls, value: Any) -> Any:
        if isinstance(value, dict):
            for key, why in _NOT_POLICY_KEYS.items():
                if key in value:
                    raise ValueError(f"{key!r} is not a policy key: {why}")
        return value


def _headers_map(value: dict[str, str]) -> dict[str, str]:
    for name in value:
        if name in _FRAMING_HEADERS:
            raise ValueError(f"{name!r} frames the message: the gateway sets it, not a transform")
    return value


def _header_names(value: tuple[str, ...]) -> tuple[str, ...]:
    names = tuple(_header_name(n) for n in value)
    for name in names:
        if name in _FRAMING_HEADERS or name == "host":
            raise ValueError(f"{name!r} cannot be removed: the gateway sets it")
    return names


HeaderMap = Annotated[
    dict[HeaderName, FieldValue],
    Field(max_length=MAX_TRANSFORM_ENTRIES),
    AfterValidator(_headers_map),
]
HeaderNames = Annotated[
    tuple[str, ...], Field(max_length=MAX_TRANSFORM_ENTRIES), AfterValidator(_header_names)
]


def _json_path(value: str) -> str:
    parts = value.split(".")
    if not value or len(value) > 256 or not all(parts):
        raise ValueError(f"{value[:64]!r}: a field name, or a dotted path like 'a.b.c'")
    return value


JsonPath = Annotated[str, AfterValidator(_json_path)]


class JsonBodyConfig(_Model):
    """Changes to a JSON object body, in this order: ``remove``, ``rename``
    (old: new), ``set`` (field: any JSON value). A name may be a dotted path
    (``user.id``) into nested objects."""

    set: Annotated[dict[JsonPath, Any], Field(max_length=MAX_TRANSFORM_ENTRIES)] = Field(
        default_factory=dict
    )
    rename: Annotated[dict[JsonPath, JsonPath], Field(max_length=MAX_TRANSFORM_ENTRIES)] = Field(
        default_factory=dict
    )
    remove: Annotated[tuple[JsonPath, ...], Field(max_length=MAX_TRANSFORM_ENTRIES)] = ()


MaxBody = Annotated[StrictInt, Field(ge=1, le=MAX_BODY_LIMIT)]


class RequestTransformConfig(_Model):
    """Changes to a request on its way upstream: header fields (``set``
    replaces, ``add`` appends, ``remove``), query parameters, and a JSON body
    of at most ``max_body`` bytes (a larger one is refused with 413)."""

    set_headers: HeaderMap = Field(default_factory=dict)
    add_headers: HeaderMap = Field(default_factory=dict)
    remove_headers: HeaderNames = ()
    set_query: Annotated[dict[str, FieldValue], Field(max_length=MAX_TRANSFORM_ENTRIES)] = Field(
        default_factory=dict
    )
    remove_query: Annotated[tuple[str, ...], Field(max_length=MAX_TRANSFORM_ENTRIES)] = ()
    json_body: JsonBodyConfig | None = None
    max_body: MaxBody = DEFAULT_MAX_BODY


class ResponseTransformConfig(_Model):
    """Changes to a response on its way back: header fields, and a JSON body
    of at most ``max_body`` bytes (a larger one passes unchanged)."""

    set_headers: HeaderMap = Field(default_factory=dict)
    add_headers: HeaderMap = Field(default_factory=dict)
    remove_headers: HeaderNames = ()
    json_body: JsonBodyConfig | None = None
    max_body: MaxBody = DEFAULT_MAX_BODY


_CORS_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")


class CorsConfig(_Model):
    """Cross-origin requests from web pages: ``origins`` allowed (``*``: any,
    not with ``credentials``), the ``methods`` and request ``headers`` a
    preflight may ask for (no headers: those it asks for), ``expose_headers``
    to the page, ``credentials`` (cookies), and ``max_age`` of a preflight."""

    origins: Annotated[tuple[str, ...], Field(min_length=1, max_length=256)]
    methods: Annotated[tuple[str, ...], Field(max_length=MAX_CONDITIONS)] = _CORS_METHODS
    headers: Annotated[tuple[HeaderName, ...], Field(max_length=MAX_TRANSFORM_ENTRIES)] = ()
    expose_headers: Annotated[tuple[HeaderName, ...], Field(max_length=MAX_TRANSFORM_ENTRIES)] = ()
    credentials: StrictBool = False
    max_age: Duration | None = None

    @field_validator("origins")
    @classmethod
    def _check_origins(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        out = []
        for origin in value:
            text = origin.strip().lower()
            if text == "*":
                out.append("*")
            elif text == "null":
                raise ValueError(
                    "'null' is what sandboxed pages and local files send: list origins"
                )
            else:
                out.append(normalize_origin(origin))
        if "*" in out and len(out) > 1:
            raise ValueError("'*' already takes every origin: give it alone")
        return tuple(dict.fromkeys(out))

    _methods = field_validator("methods")(_methods)

    @field_validator("max_age")
    @classmethod
    def _check_age(cls, value: float | None) -> float | None:
        if value is not None and not 0 <= value <= 86_400:
            raise ValueError("between 0 and 24h")
        return value

    @model_validator(mode="after")
    def _no_any_with_credentials(self) -> Self:
        if self.credentials and self.origins == ("*",):
            raise ValueError("credentials need the origins listed: browsers refuse '*' with them")
        return self


class PluginsConfig(_Model):
    """The plugins a route runs, each off unless given (docs/gateway.md)."""

    key_auth: KeyAuthConfig | None = None
    jwt: JwtConfig | None = None
    mtls: MtlsConfig | None = None
    hmac: HmacConfig | None = None
    allow: AllowConfig | None = None
    rate_limit: RateLimitPolicies | None = None
    request_transform: RequestTransformConfig | None = None
    cache: CacheConfig | None = None
    response_transform: ResponseTransformConfig | None = None
    cors: CorsConfig | None = None

    @property
    def names(self) -> tuple[str, ...]:
        """The plugins given, in the order of the model."""
        return tuple(name for name in type(self).model_fields if getattr(self, name) is not None)


class Backend(_Model):
    """Where a route forwards, one of its weighted choices: a registry service,
    or fixed ``endpoints`` when given."""

    service: str
    namespace: str = ""
    weight: int = 1
    endpoints: tuple[str, ...] = ()

    @property
    def key(self) -> tuple[str, str]:
        """(namespace, service), as the sidecar's upstreams are keyed."""
        return (self.namespace or "default", self.service)


def _route_name(value: str) -> str:
    if not _ROUTE_NAME.match(value):
        raise ValueError(
            f"{value[:64]!r} is not a route name: letters, digits, '.', '_' and '-', "
            "starting with a letter or digit, at most 128 characters"
        )
    return value


class RouteConfig(_Model):
    """One route: which requests (``match``), where they go (``upstream``,
    ``split`` or ``redirect``: exactly one), how (``rewrite``, ``timeout``,
    ``policy``) and through which ``plugins``."""

    name: Annotated[str, AfterValidator(_route_name)]
    match: MatchConfig = Field(default_factory=MatchConfig)
    upstream: Annotated[str, AfterValidator(_label)] | None = None
    namespace: Annotated[str, AfterValidator(_namespace)] = ""
    endpoints: Annotated[tuple[Endpoint, ...], Field(max_length=MAX_ENDPOINTS)] = ()
    split: Annotated[tuple[SplitConfig, ...], Field(max_length=MAX_SPLIT)] = ()
    redirect: RedirectConfig | None = None
    rewrite: RewriteConfig | None = None
    timeout: Duration | None = None
    policy: RoutePolicy = Field(default_factory=RoutePolicy)
    plugins: PluginsConfig = Field(default_factory=PluginsConfig)

    @field_validator("timeout")
    @classmethod
    def _check_timeout(cls, value: float | None) -> float | None:
        if value is not None and value < 0:
            raise ValueError("must be 0 (no timeout) or greater")
        return value

    @field_validator("policy")
    @classmethod
    def _no_listener_keys(cls, value: RoutePolicy) -> RoutePolicy:
        keys = sorted(set(LISTENER_POLICY_KEYS) & value.model_fields_set)
        if keys:
            raise ValueError(
                f"{', '.join(keys)}: the listener's limits, set in the top-level policy only"
            )
        return value

    @model_validator(mode="after")
    def _one_target(self) -> Self:
        given = [k for k in ("upstream", "split", "redirect") if getattr(self, k)]
        if len(given) != 1:
            raise ValueError(
                "give one of upstream, split and redirect"
                + (f", not {' and '.join(given)}" if given else "")
            )
        if self.endpoints and self.upstream is None:
            raise ValueError("endpoints go with upstream (a split entry has its own)")
        if self.split:
            if sum(entry.weight for entry in self.split) == 0:
                raise ValueError("the split's weights are all 0: give one a weight")
            seen: set[tuple[str, str]] = set()
            for entry in self.split:
                key = (entry.namespace or self.namespace, entry.service)
                if key in seen:
                    raise ValueError(f"the split names {entry.service!r} twice")
                seen.add(key)
        if self.redirect is not None and (self.timeout is not None or self.policy.model_fields_set):
            raise ValueError("a redirect forwards nothing: timeout and policy do not apply")
        if self.timeout is not None and "timeout" in self.policy.model_fields_set:
            raise ValueError("give timeout or policy.timeout, not both")
        return self

    @property
    def backends(self) -> tuple[Backend, ...]:
        """Where the route forwards, with weights (none for a redirect)."""
        if self.upstream is not None:
            return (
                Backend(service=self.upstream, namespace=self.namespace, endpoints=self.endpoints),
            )
        return tuple(
            Backend(
                service=entry.service,
                namespace=entry.namespace or self.namespace,
                weight=entry.weight,
                endpoints=entry.endpoints,
            )
            for entry in self.split
        )

    def upstream_config(self, backend: Backend) -> UpstreamConfig:
        """The sidecar upstream for one backend: this route's policy with its service."""
        return self.policy.model_copy(
            update={"service": backend.service, "namespace": backend.namespace}
        )


class GatewayTlsConfig(_Model):
    """The listener's certificate chain and key (PEM): it serves HTTPS, over
    HTTP/2 to clients that choose it by ALPN (``http2``, on by default) and
    HTTP/1.1 to the others.

    Client certificates are asked for (not required) when a route uses the
    ``mtls`` plugin; the handshake trusts every such route's ``ca_file``,
    and each route checks its own.
    """

    cert: Path
    key: Path
    #: offer HTTP/2 (ALPN h2, then http/1.1); false: HTTP/1.1 only
    http2: StrictBool = True

    @field_validator("cert", "key")
    @classmethod
    def _check_file(cls, value: Path) -> Path:
        if not value.is_file():
            raise ValueError(f"{value}: no such file")
        return value


def _listen(value: str) -> str:
    split_hostport(value, allow_zero=True)
    return value.strip()


def _admin(value: Any) -> Any:
    if value is None or value is False:
        return None
    if isinstance(value, str):
        if value.strip().lower() in ("", "off", "none"):
            return None
        return _listen(value)
    return value


def _access_log(value: str | None) -> str | None:
    if value is not None and (not value.strip() or "\0" in value):
        raise ValueError("a file path, '-' for standard output, or null for none")
    return value


class ControlPlaneRoutesConfig(_Model):
    """The routes stored in the control plane (``eco route apply``) that this
    gateway serves besides its file's: every route, or those of one ``group``."""

    group: str = Field(default="", max_length=128)


class GatewayConfig(_Model):
    """Everything one ``eco gateway`` process needs to know (docs/gateway.md)."""

    listen: Annotated[str, AfterValidator(_listen)] = DEFAULT_LISTEN
    tls: GatewayTlsConfig | None = None
    #: required when a route forwards to registry services (not fixed endpoints)
    controlplane: ControlPlaneLinkConfig | None = None
    admin: Annotated[str | None, BeforeValidator(_admin)] = None
    data_dir: Path = Path(".eco/gateway")
    #: every route's defaults, and the listener's limits
    policy: RoutePolicy = Field(default_factory=RoutePolicy)
    #: who may call, and the credentials each holds (the authentication plugins)
    consumers: tuple[ConsumerConfig, ...] = ()
    routes: Annotated[tuple[RouteConfig, ...], Field(max_length=MAX_ROUTES)] = ()
    #: the Redis that rate limits with scope: global share
    rate_limit_store: RateLimitStoreConfig | None = None
    #: the memory the routes' cached responses share
    cache: CacheStoreConfig = Field(default_factory=CacheStoreConfig)
    #: a file of JSON lines, "-" for standard output, null for none
    access_log: Annotated[str | None, AfterValidator(_access_log)] = None
    #: also serve the routes stored in the control plane, followed over a watch
    controlplane_routes: ControlPlaneRoutesConfig | None = None
    #: the node this gateway is in the registry (its session), as a sidecar's ``node``;
    #: the id defaults to ``<host name>-gateway-<6 hex of data_dir's absolute path>``,
    #: so that replicas on one host (each with its data_dir) are different nodes
    node: NodeConfig | None = None

    @property
    def node_id(self) -> str:
        """The node id of this gateway's session with the control plane."""
        if self.node is not None and "id" in self.node.model_fields_set:
            return self.node.id
        place = hashlib.sha256(str(self.data_dir.absolute()).encode()).hexdigest()[:6]
        return f"{socket.gethostname()[:100]}-gateway-{place}"

    @model_validator(mode="after")
    def _complete(self) -> Self:
        problem = Problems()

        names: dict[str, int] = {}
        registry: list[str] = []
        for i, route in enumerate(self.routes):
            if route.name in names:
                problem(
                    ("routes", i, "name"),
                    f"{route.name!r} is also the name of routes[{names[route.name]}]",
                )
            names.setdefault(route.name, i)
            registry += [f"routes[{i}]" for b in route.backends if not b.endpoints][:1]
            self._check_plugins(i, route.plugins, problem)
            strip = route.rewrite.strip_prefix if route.rewrite is not None else None
            fixed = route.match.path_prefix or route.match.path
            if strip is not None and fixed not in (None, "/") and not _within(fixed, strip):
                problem(
                    ("routes", i, "rewrite", "strip_prefix"),
                    f"{strip!r} is not a prefix of every path the route takes ({fixed!r})",
                )
        if self.controlplane_routes is not None and self.controlplane is None:
            problem(
                ("controlplane_routes",),
                "the routes stored in the control plane need controlplane (where it is)",
            )
        if registry and self.controlplane is None:
            problem(
                ("controlplane",),
                f"{registry[0]} forwards to a registry service: give controlplane "
                "(or fixed endpoints on every route)",
            )
        for text in consumer_problems(self.consumers):
            where, _, message = text.partition(": ")
            problem(_loc(where), message)
        if self.admin is not None and _same_address(self.admin, self.listen):
            problem(("admin",), f"{self.admin} is also the listen address")
        if (
            self.admin is not None
            and not is_loopback(split_hostport(self.admin, allow_zero=True)[0])
            and (self.tls is None or self.controlplane is None)
        ):
            problem(
                ("admin",),
                f"{self.admin} is off loopback: it then serves TLS with the listener's "
                "certificate (give tls) and checks tokens with the control plane "
                "(give controlplane); or keep it on 127.0.0.1",
            )
        routes = self._with_defaults(problem)
        problem.raise_if_any("GatewayConfig")
        object.__setattr__(self, "routes", routes)
        return self

    def with_routes(self, routes: Sequence[RouteConfig]) -> GatewayConfig:
        """This configuration serving ``routes`` instead of its own, checked as a
        whole (names, plugins against the top-level keys, the policy defaults);
        raises ValidationError listing the problems."""
        fields = {name: getattr(self, name) for name in type(self).model_fields}
        return type(self).model_validate({**fields, "routes": tuple(routes)})

    def _check_plugins(self, i: int, plugins: PluginsConfig, problem: Any) -> None:
        if plugins.mtls is not None and self.tls is None:
            problem(
                ("routes", i, "plugins", "mtls"),
                "client certificates come over TLS: give the top-level tls",
            )
        for j, policy in enumerate(plugins.rate_limit or ()):
            if policy.scope == "global" and self.rate_limit_store is None:
                problem(
                    ("routes", i, "plugins", "rate_limit", j, "scope"),
                    "scope: global needs the top-level rate_limit_store (a Redis url)",
                )
        cache = plugins.cache
        if cache is not None and (cache.max_entry_bytes or 0) > self.cache.max_entry_bytes:
            problem(
                ("routes", i, "plugins", "cache", "max_entry_bytes"),
                f"larger than the top-level cache.max_entry_bytes ({self.cache.max_entry_bytes})",
            )

    def _with_defaults(self, problem: Any) -> tuple[RouteConfig, ...]:
        """Each route with its effective policy: the top-level one, then the route's
        own keys, then its ``timeout``."""
        base = self.policy.model_dump(
            include=self.policy.model_fields_set - set(LISTENER_POLICY_KEYS)
        )
        out = []
        for i, route in enumerate(self.routes):
            own = route.policy.model_dump(include=route.policy.model_fields_set)
            if route.redirect is not None or (not base and route.timeout is None):
                # A redirect forwards nothing: no policy applies to it (and a
                # policy on it would be refused when the routes are checked again,
                # as with_routes does for the routes stored in the control plane).
                out.append(route)
                continue
            merged = {**base, **own}
            if route.timeout is not None:
                merged["timeout"] = route.timeout
            try:
                policy = RoutePolicy.model_validate(merged)
            except ValidationError as err:
                first = err.errors(include_url=False)[0]
                where = ".".join(str(p) for p in first["loc"])
                problem(
                    ("routes", i, "policy"),
                    f"with the top-level policy: {where}: "
                    + str(first["msg"]).removeprefix("Value error, "),
                )
                continue
            out.append(route.model_copy(update={"policy": policy}))
        return tuple(out)

    @property
    def client_ca_files(self) -> tuple[Path, ...]:
        """The CA files of every route's ``mtls`` plugin: what the listener trusts
        for client certificates (empty: it asks for none)."""
        files = (r.plugins.mtls.ca_file for r in self.routes if r.plugins.mtls is not None)
        return tuple(dict.fromkeys(files))

    def iter_backends(self) -> Iterator[tuple[RouteConfig, Backend]]:
        for route in self.routes:
            for backend in route.backends:
                yield route, backend


def _loc(where: str) -> tuple[str | int, ...]:
    """``consumers[3].api_keys`` → ``("consumers", 3, "api_keys")``."""
    loc: list[str | int] = []
    for part in where.split("."):
        name, _, index = part.partition("[")
        if name:
            loc.append(name)
        if index:
            loc.append(int(index.rstrip("]")))
    return tuple(loc)


def _within(path: str, prefix: str) -> bool:
    """Whether ``prefix`` (whole segments) is a prefix of ``path``."""
    return path == prefix or path.startswith(prefix + "/")


def _same_address(a: str, b: str) -> bool:
    host_a, port_a = split_hostport(a, allow_zero=True)
    host_b, port_b = split_hostport(b, allow_zero=True)
    return port_a != 0 and port_a == port_b and host_a == host_b


def parse_config(text: str, source: str = "gateway.yaml") -> GatewayConfig:
    """Validates YAML text; raises :class:`ConfigError` listing every problem."""
    return read_config(text, source, GatewayConfig)


def load_config(path: str | Path) -> GatewayConfig:
    """Reads and validates a gateway configuration file; raises :class:`ConfigError`
    (a ValueError) whose ``lines()`` are every problem, ``FILE:LINE: FIELD: why``."""
    path = Path(path)
    return read_config_file(path, GatewayConfig, path.name if path.parent == Path() else str(path))

"""`EtcdConfig`: where the etcd cluster is and how to talk to it, parsed from a URL.

::

    etcd://[USER[:PASSWORD]@]HOST[:PORT][,HOST[:PORT]...][/PREFIX][?OPTIONS]

``PORT`` defaults to 2379; an IPv6 host is written in brackets (``[::1]:2379``).
``PREFIX`` is the namespace every key of the store lives under
(``etcd://h/ecosystem``: the store key ``/a`` is the etcd key ``/ecosystem/a``);
without one the store uses etcd's whole key space. User, password and prefix may be
percent-encoded. Options (each at most once):

- ``ca=FILE``: PEM bundle to verify the servers with (turns TLS on);
- ``cert=FILE`` and ``key=FILE``: client certificate and its key (TLS; both or neither);
- ``tls=true``: TLS with the system's trust roots;
- ``timeout=SECONDS``: deadline of one request (default 5);
- ``connect_timeout=SECONDS``: how long ``start()`` tries to reach a member (default 5).

Parsing is pure: files are read, and hosts resolved, only when the store starts.
"""

from __future__ import annotations

import math
import urllib.parse
from dataclasses import dataclass, field

__all__ = ["EtcdConfig", "parse_etcd_url"]

DEFAULT_PORT = 2379
_OPTIONS = frozenset({"ca", "cert", "key", "tls", "timeout", "connect_timeout"})
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


@dataclass(frozen=True, slots=True)
class EtcdConfig:
    """A validated etcd connection: members, key prefix, credentials and TLS files."""

    endpoints: tuple[str, ...]  # "host:port", IPv6 hosts bracketed
    prefix: str = ""  # "" or "/name[/name...]", never ending in "/"
    user: str = ""
    password: str = field(default="", repr=False)
    tls: bool = False
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    timeout: float = 5.0
    connect_timeout: float = 5.0

    def __post_init__(self) -> None:
        if not self.endpoints:
            raise ValueError("at least one etcd endpoint is required")
        if self.prefix and (not self.prefix.startswith("/") or self.prefix.endswith("/")):
            raise ValueError(
                f"prefix must be empty or '/name' without a trailing '/', got {self.prefix!r}"
            )
        if self.password and not self.user:
            raise ValueError("a password needs a user")
        if bool(self.cert_file) != bool(self.key_file):
            raise ValueError("cert and key go together: give both or neither")
        if (self.ca_file or self.cert_file) and not self.tls:
            raise ValueError("ca, cert and key need tls=True")
        for name in ("timeout", "connect_timeout"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")

    def url(self) -> str:
        """The URL again, with the password left out (safe to log)."""
        auth = f"{urllib.parse.quote(self.user, safe='')}:***@" if self.user else ""
        query = [(k, v) for k, v in (("ca", self.ca_file), ("cert", self.cert_file),
                                      ("key", self.key_file)) if v]  # fmt: skip
        if self.tls and not query:
            query.append(("tls", "true"))
        suffix = "?" + urllib.parse.urlencode(query) if query else ""
        return f"etcd://{auth}{','.join(self.endpoints)}{urllib.parse.quote(self.prefix)}{suffix}"


def parse_etcd_url(url: str) -> EtcdConfig:
    """Parses and validates an ``etcd://`` URL (see the module docstring); raises
    ValueError naming what is wrong."""
    scheme, sep, rest = url.partition("://")
    if scheme != "etcd" or not sep:
        raise ValueError("expected etcd://HOST[:PORT][,HOST[:PORT]...][/PREFIX]")
    if "#" in rest:
        raise ValueError("an etcd URL has no fragment ('#')")
    rest, _, query = rest.partition("?")
    netloc, slash, path = rest.partition("/")
    user = password = ""
    if "@" in netloc:
        userinfo, _, netloc = netloc.rpartition("@")
        raw_user, colon, raw_password = userinfo.partition(":")
        user = urllib.parse.unquote(raw_user)
        password = urllib.parse.unquote(raw_password)
        if not user:
            raise ValueError("empty user name before '@'")
        if colon and not password:
            raise ValueError(f"empty password for user {user!r}")
    endpoints = tuple(_endpoint(part) for part in netloc.split(","))
    prefix = ""
    if slash:
        prefix = "/" + urllib.parse.unquote(path).strip("/")
        if prefix == "/":
            prefix = ""
        if "//" in prefix:
            raise ValueError(f"prefix {prefix!r} has an empty path segment")
    options = _options(query)
    tls = bool(options.get("ca") or options.get("cert") or options.get("key"))
    if "tls" in options:
        flag = options["tls"].lower()
        if flag not in _TRUE | _FALSE:
            raise ValueError(f"tls must be true or false, got {options['tls']!r}")
        if flag in _FALSE and tls:
            raise ValueError("tls=false contradicts ca/cert/key")
        tls = flag in _TRUE
    return EtcdConfig(
        endpoints=endpoints,
        prefix=prefix,
        user=user,
        password=password,
        tls=tls,
        ca_file=options.get("ca", ""),
        cert_file=options.get("cert", ""),
        key_file=options.get("key", ""),
        timeout=_seconds(options, "timeout", 5.0),
        connect_timeout=_seconds(options, "connect_timeout", 5.0),
    )


def _endpoint(part: str) -> str:
    if not part:
        raise ValueError("empty host in the host list")
    if part.startswith("["):
        host, bracket, port = part[1:].partition("]")
        if not bracket or not host:
            raise ValueError(f"bad IPv6 host {part!r}: expected [ADDRESS]:PORT")
        if port and not port.startswith(":"):
            raise ValueError(f"bad host {part!r}: expected [ADDRESS]:PORT")
        port = port[1:]
        host = f"[{host}]"
    else:
        if part.count(":") > 1:
            raise ValueError(f"bad host {part!r}: write an IPv6 address in brackets")
        host, _, port = part.partition(":")
        if not host:
            raise ValueError(f"bad host {part!r}: no host name")
    if not port:
        return f"{host}:{DEFAULT_PORT}"
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"bad port in {part!r}: expected 1-65535")
    return f"{host}:{int(port)}"


def _options(query: str) -> dict[str, str]:
    options: dict[str, str] = {}
    if not query:
        return options
    try:
        pairs = urllib.parse.parse_qsl(query, keep_blank_values=True, strict_parsing=True)
    except ValueError as exc:
        raise ValueError(f"bad query string {query!r}") from exc
    for name, value in pairs:
        if name not in _OPTIONS:
            known = ", ".join(sorted(_OPTIONS))
            raise ValueError(f"unknown option {name!r} (known: {known})")
        if name in options:
            raise ValueError(f"option {name!r} given twice")
        if not value:
            raise ValueError(f"option {name!r} needs a value")
        options[name] = value
    return options


def _seconds(options: dict[str, str], name: str, default: float) -> float:
    if name not in options:
        return default
    try:
        value = float(options[name])
    except ValueError:
        raise ValueError(f"{name} must be a number of seconds, got {options[name]!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive number of seconds, got {options[name]!r}")
    return value

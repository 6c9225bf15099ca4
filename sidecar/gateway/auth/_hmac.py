"""``hmac``: requests signed with a shared secret, as HTTP Message Signatures (RFC 9421).

::

    plugins:
      hmac: {replay_window: 5m, clock_skew: 30s, require_nonce: true}

A client signs with the secret of one of its consumer's ``hmac_secrets``
and sends two fields (RFC 9421 §4)::

    Signature-Input: sig1=("@method" "@authority" "@target-uri" "content-digest")\
      ;created=1700000000;nonce="n-1";keyid="alice-key";alg="hmac-sha256"
    Signature: sig1=:<base64 of HMAC-SHA256(secret, signature base)>:

The signature base is built exactly as RFC 9421 §2.5 says, for the derived
components ``@method``, ``@target-uri``, ``@authority``, ``@scheme``,
``@request-target``, ``@path`` and ``@query`` and for any header field
(without component parameters). The plugin insists that the signature
covers ``@method``, ``@authority``, the path (``@path``, ``@target-uri`` or
``@request-target``), the query when the request has one, and
``content-digest`` (RFC 9530, checked against the body) when the request
has a body; ``created`` must be within ``replay_window`` (plus
``clock_skew``), and a ``nonce`` is accepted once within that window (a
bounded memory of ``nonce_cache_size`` entries, oldest forgotten first).
Refusals are 401 with ``WWW-Authenticate: Signature realm="gateway",
error="…"`` and an ``Accept-Signature`` field saying what to sign.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from sidecar.gateway.auth._base import DEFAULT_REALM, check_realm, quoted, unauthorized
from sidecar.gateway.auth._consumers import ConsumerIndex
from sidecar.gateway.auth._sfv import (
    InnerList,
    Item,
    StructuredFieldError,
    parse_dictionary,
    serialize_inner_list,
    serialize_item,
)
from sidecar.gateway.request import GatewayRequest, LocalResponse
from sidecar.health import Duration

__all__ = [
    "HmacAuth",
    "HmacConfig",
    "SignatureError",
    "content_digest",
    "sign",
    "signature_base",
]

_log = logging.getLogger(__name__)

ALGORITHM = "hmac-sha256"
MAX_SIGNATURE_FIELD_BYTES = 4096
MAX_COVERED_COMPONENTS = 32
_DEFAULT_PORTS = {"http": ":80", "https": ":443"}
_DIGESTS: dict[str, Callable[[bytes], Any]] = {
    "sha-256": hashlib.sha256,
    "sha-512": hashlib.sha512,
}
_ACCEPT_SIGNATURE = (
    f'sig1=("@method" "@authority" "@target-uri" "content-digest");created;nonce;alg="{ALGORITHM}"'
)


class SignatureError(ValueError):
    """A signature cannot be checked or does not hold; the message says why."""


class _BodyMissing(Exception):
    """The request has a body, but the gateway did not hand it to the plugin."""


def _has_body(request: GatewayRequest) -> bool:
    """Whether the request has a body (read or announced by its head)."""
    if request.body:
        return True
    length = request.headers.get("content-length")
    if length is not None and length.strip() not in ("", "0"):
        return True
    return "transfer-encoding" in request.headers


class HmacConfig(BaseModel):
    """``replay_window``: how old a signature's ``created`` may be;
    ``clock_skew``: tolerance for clocks ahead or behind; ``require_nonce``:
    every signature carries a ``nonce``, accepted once; ``nonce_cache_size``:
    how many nonces are remembered; ``components``: more components every
    signature must cover (e.g. ``content-type``); ``realm``: named in the
    challenge."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    replay_window: Duration = 300.0
    clock_skew: Duration = 30.0
    require_nonce: bool = True
    nonce_cache_size: Annotated[int, Field(ge=100, le=10_000_000)] = 100_000
    components: Annotated[tuple[str, ...], Field(max_length=16)] = ()
    realm: str = DEFAULT_REALM

    _realm = field_validator("realm")(check_realm)

    @field_validator("replay_window")
    @classmethod
    def _check_window(cls, value: float) -> float:
        if not 1 <= value <= 3600:
            raise ValueError("from 1s to 1h")
        return value

    @field_validator("clock_skew")
    @classmethod
    def _check_skew(cls, value: float) -> float:
        if not 0 <= value <= 600:
            raise ValueError("from 0s to 10m")
        return value

    @field_validator("components")
    @classmethod
    def _check_components(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for name in value:
            if name != name.lower() or not name or " " in name:
                raise ValueError(f"{name!r}: a component is a lower-case field name or @-name")
            if name.startswith("@") and name not in _DERIVED:
                raise ValueError(f"{name!r} is not a derived component: {', '.join(_DERIVED)}")
        return value


def _authority(request: GatewayRequest) -> str:
    host = (request.headers.get("host") or request.host).strip().lower()
    default = _DEFAULT_PORTS.get(request.scheme, "")
    if default and host.endswith(default):
        host = host[: -len(default)]
    return host


def _target_uri(request: GatewayRequest) -> str:
    return f"{request.scheme}://{_authority(request)}{request.target}"


_DERIVED: dict[str, Callable[[GatewayRequest], str]] = {
    "@method": lambda r: r.method,
    "@target-uri": _target_uri,
    "@authority": _authority,
    "@scheme": lambda r: r.scheme.lower(),
    "@request-target": lambda r: r.target,
    "@path": lambda r: r.path or "/",
    "@query": lambda r: f"?{r.query}",
}


def _component_value(request: GatewayRequest, item: Item) -> str:
    name = item.value
    if not isinstance(name, str) or isinstance(name, bool):
        raise SignatureError("a covered component is not a string")
    if item.params:
        raise SignatureError(
            f"component parameters ({name};{';'.join(item.params)}) are not supported"
        )
    if name.startswith("@"):
        derive = _DERIVED.get(name)
        if derive is None:
            raise SignatureError(f"the derived component {name!r} is not supported")
        return derive(request)
    if name != name.lower():
        raise SignatureError(f"component {name!r} must be lower case")
    values = request.headers.get_all(name)
    if not values:
        raise SignatureError(f"the covered field {name!r} is not in the request")
    return ", ".join(v.strip() for v in values)


def signature_base(request: GatewayRequest, signature_params: InnerList) -> bytes:
    """The signature base of RFC 9421 §2.5 for ``request`` and the covered
    components and parameters of one ``Signature-Input`` member."""
    lines: list[str] = []
    seen: set[str] = set()
    for item in signature_params.items:
        identifier = serialize_item(item.value)
        if identifier in seen:
            raise SignatureError(f"component {identifier} is covered twice")
        seen.add(identifier)
        value = _component_value(request, item)
        if "\n" in value or "\r" in value:
            raise SignatureError(f"component {identifier} holds a line break")
        lines.append(f"{identifier}: {value}")
    lines.append(f'"@signature-params": {serialize_inner_list(signature_params)}')
    return "\n".join(lines).encode()


def content_digest(body: bytes, algorithm: str = "sha-256") -> str:
    """A ``Content-Digest`` field value (RFC 9530) for ``body``."""
    digest = _DIGESTS[algorithm](body).digest()
    return f"{algorithm}=:{base64.b64encode(digest).decode()}:"


def _check_content_digest(field_value: str, body: bytes) -> None:
    try:
        members = parse_dictionary(field_value)
    except StructuredFieldError as exc:
        raise SignatureError(f"Content-Digest is malformed: {exc}") from None
    checked = 0
    for algorithm, member in members.items():
        make = _DIGESTS.get(algorithm)
        if make is None:
            continue
        if not isinstance(member, Item) or not isinstance(member.value, bytes):
            raise SignatureError(f"Content-Digest {algorithm} is not a byte sequence")
        if not hmac.compare_digest(member.value, make(body).digest()):
            raise SignatureError("Content-Digest does not match the body")
        checked += 1
    if not checked:
        raise SignatureError("Content-Digest has no sha-256 or sha-512 digest")


class HmacAuth:
    """The ``hmac`` plugin (module docstring). ``clock`` is the wall clock (seconds)."""

    name = "hmac"
    needs_body = True

    def __init__(
        self,
        config: HmacConfig,
        consumers: ConsumerIndex,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._config = config
        self._consumers = consumers
        self._clock = clock
        self._nonces: OrderedDict[tuple[str, str], float] = OrderedDict()
        self._required = tuple(config.components)
        self._challenge = f"Signature realm={quoted(config.realm)}"

    def challenge(self) -> str:
        return self._challenge

    def present(self, request: GatewayRequest) -> bool:
        return "signature-input" in request.headers or "signature" in request.headers

    def _refuse(self, error: str, description: str) -> LocalResponse:
        challenge = f'{self._challenge}, error="{error}", error_description={quoted(description)}'
        return unauthorized(
            error, description, (challenge,), (("accept-signature", _ACCEPT_SIGNATURE),)
        )

    async def authenticate(self, request: GatewayRequest) -> LocalResponse | None:
        inputs = request.headers.get_all("signature-input")
        signatures = request.headers.get_all("signature")
        if not inputs or not signatures:
            return unauthorized(
                "unauthenticated",
                "a signed request is required (Signature-Input and Signature fields)",
                (self._challenge,),
                (("accept-signature", _ACCEPT_SIGNATURE),),
            )
        try:
            self._verify(request, ", ".join(inputs), ", ".join(signatures))
        except _BodyMissing:
            _log.error(
                "hmac: route %r: the request body was not read for the plugin", request.route
            )
            return LocalResponse.error(
                500, "internal", "the gateway could not check the request body's digest"
            )
        except SignatureError as exc:
            return self._refuse("invalid_signature", str(exc))
        return None

    def _verify(self, request: GatewayRequest, inputs: str, signatures: str) -> None:
        if len(inputs) > MAX_SIGNATURE_FIELD_BYTES or len(signatures) > MAX_SIGNATURE_FIELD_BYTES:
            raise SignatureError(
                f"a signature field is longer than {MAX_SIGNATURE_FIELD_BYTES} bytes"
            )
        try:
            input_members = parse_dictionary(inputs)
            signature_members = parse_dictionary(signatures)
        except StructuredFieldError as exc:
            raise SignatureError(f"a signature field is malformed: {exc}") from None
        # The first labelled signature that names a key id is the one checked
        # (one HMAC per request, whatever else the client attached).
        label, params = next(
            (
                (name, member)
                for name, member in input_members.items()
                if isinstance(member, InnerList) and "keyid" in member.params
            ),
            (None, None),
        )
        if label is None or params is None:
            raise SignatureError("Signature-Input has no signature with a keyid")
        signed = signature_members.get(label)
        if not isinstance(signed, Item) or not isinstance(signed.value, bytes):
            raise SignatureError(f"Signature has no byte sequence labelled {label!r}")
        if len(params.items) > MAX_COVERED_COMPONENTS:
            raise SignatureError(f"more than {MAX_COVERED_COMPONENTS} covered components")

        key_id = params.params["keyid"]
        alg = params.params.get("alg", ALGORITHM)
        if alg != ALGORITHM:
            raise SignatureError(f"alg {alg!r} is not accepted (only {ALGORITHM})")
        credential = self._consumers.by_hmac_key_id(key_id) if isinstance(key_id, str) else None
        if credential is None:
            raise SignatureError("the keyid is not known")

        self._check_time(params)
        self._check_coverage(request, params)
        has_body = _has_body(request)
        if has_body and request.body is None:
            # The gateway must read the body for a plugin with needs_body; a
            # digest that cannot be checked is never taken on trust.
            raise _BodyMissing
        body = request.body or b""
        if has_body or "content-digest" in request.headers:
            digest_field = request.headers.get("content-digest")
            if digest_field is None:
                raise SignatureError("a request with a body needs a Content-Digest field")
            _check_content_digest(", ".join(request.headers.get_all("content-digest")), body)

        base = signature_base(request, params)
        expected = hmac.new(credential.secret, base, hashlib.sha256).digest()
        if not hmac.compare_digest(expected, signed.value):
            raise SignatureError("the signature does not verify")

        nonce = params.params.get("nonce")
        if nonce is not None:
            self._remember_nonce(str(key_id), str(nonce), float(params.params["created"]))
        request.consumer = self._consumers.consumer(credential.consumer.name, self.name)

    def _check_time(self, params: InnerList) -> None:
        config = self._config
        now = self._clock()
        created = params.params.get("created")
        if not isinstance(created, int) or isinstance(created, bool):
            raise SignatureError("the signature has no created time (an integer)")
        if created > now + config.clock_skew:
            raise SignatureError("the signature was created in the future (check the clock)")
        if created < now - config.replay_window - config.clock_skew:
            raise SignatureError(
                f"the signature is older than the replay window ({config.replay_window:g}s)"
            )
        expires = params.params.get("expires")
        if expires is not None:
            if not isinstance(expires, int) or isinstance(expires, bool):
                raise SignatureError("expires is not an integer")
            if expires < now - config.clock_skew:
                raise SignatureError("the signature has expired")
        nonce = params.params.get("nonce")
        if nonce is None and config.require_nonce:
            raise SignatureError("the signature needs a nonce")
        if nonce is not None and (not isinstance(nonce, str) or not 0 < len(nonce) <= 128):
            raise SignatureError("the nonce is a string of 1 to 128 characters")

    def _check_coverage(self, request: GatewayRequest, params: InnerList) -> None:
        covered = {item.value for item in params.items if isinstance(item.value, str)}
        missing: list[str] = [c for c in ("@method", "@authority") if c not in covered]
        whole_target = "@target-uri" in covered or "@request-target" in covered
        if not whole_target and "@path" not in covered:
            missing.append("@path")
        if request.query and not whole_target and "@query" not in covered:
            missing.append("@query")
        if (_has_body(request) or "content-digest" in request.headers) and (
            "content-digest" not in covered
        ):
            missing.append("content-digest")
        missing.extend(c for c in self._required if c not in covered)
        if missing:
            raise SignatureError(f"the signature must cover {', '.join(missing)}")

    def _remember_nonce(self, key_id: str, nonce: str, created: float) -> None:
        config = self._config
        now = self._clock()
        nonces = self._nonces
        # Forget nonces whose signatures the window refuses anyway (oldest first).
        while nonces:
            first, until = next(iter(nonces.items()))
            if until > now:
                break
            del nonces[first]
        entry = (key_id, nonce)
        seen = nonces.get(entry)
        if seen is not None and seen > now:
            raise SignatureError("the nonce was used already (a replayed request)")
        nonces[entry] = created + config.replay_window + 2 * config.clock_skew
        nonces.move_to_end(entry)
        while len(nonces) > config.nonce_cache_size:
            nonces.popitem(last=False)


def sign(
    request: GatewayRequest,
    key_id: str,
    secret: bytes,
    *,
    components: Sequence[str] = ("@method", "@authority", "@target-uri"),
    created: int | None = None,
    nonce: str | None = None,
    label: str = "sig1",
) -> tuple[str, str]:
    """The ``Signature-Input`` and ``Signature`` values that sign ``request``
    (for clients and tests; adds ``content-digest`` to the request first when
    it is covered and missing)."""
    if "content-digest" in components and "content-digest" not in request.headers:
        request.headers.set("content-digest", content_digest(request.body or b""))
    params: dict[str, int | str | bool | bytes | float] = {
        "created": int(time.time()) if created is None else created
    }
    if nonce is not None:
        params["nonce"] = nonce
    params["keyid"] = key_id
    params["alg"] = ALGORITHM
    inner = InnerList(tuple(Item(c) for c in components), params)
    base = signature_base(request, inner)
    signature = base64.b64encode(hmac.new(secret, base, hashlib.sha256).digest()).decode()
    return f"{label}={serialize_inner_list(inner)}", f"{label}=:{signature}:"

"""Consumers: who may call through the gateway, and the credentials each holds.

::

    consumers:
      - name: alice
        groups: [admins]
        api_keys: ["k-alice-1"]
        hmac_secrets: {alice-key: "a secret of 16 characters or more"}

:class:`ConsumerIndex` turns that list into the two lookups the plugins
make per request: API key → consumer, HMAC key id → (consumer, secret).
API keys are indexed by their SHA-256 digest, so the lookup's timing says
nothing about how close a guess came, and the digest found is compared once
more with :func:`hmac.compare_digest`. Secrets are :class:`~pydantic.SecretStr`:
they print as ``**********`` in a repr, a log line or ``/status``.

The identity of an authenticated consumer goes upstream in
:data:`IDENTITY_HEADERS`; the gateway removes those names from every
incoming request first, so that a client cannot claim to be somebody.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from collections.abc import Iterable, Mapping
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from sidecar.gateway.request import Consumer, GatewayRequest

__all__ = [
    "CONSUMER_GROUPS_HEADER",
    "CONSUMER_NAME_HEADER",
    "IDENTITY_HEADERS",
    "MAX_API_KEY_LENGTH",
    "MAX_CONSUMERS",
    "ConsumerConfig",
    "ConsumerIndex",
    "HmacCredential",
    "consumer_problems",
    "identity_headers",
    "is_usable_name",
]

#: The consumer's name, sent upstream by the gateway (never taken from a client).
CONSUMER_NAME_HEADER = "x-consumer-name"
#: The consumer's groups, comma-separated, sent upstream by the gateway.
CONSUMER_GROUPS_HEADER = "x-consumer-groups"
#: Header names the gateway removes from every incoming request before the
#: plugins run, and sets itself after authentication (:func:`identity_headers`).
IDENTITY_HEADERS: tuple[str, ...] = (CONSUMER_NAME_HEADER, CONSUMER_GROUPS_HEADER)

MAX_CONSUMERS = 100_000
MAX_API_KEY_LENGTH = 256
MIN_API_KEY_LENGTH = 8
MIN_HMAC_SECRET_BYTES = 16
MAX_CREDENTIALS_PER_CONSUMER = 64

# Names travel in header values: visible ASCII, no comma (the groups header
# is a comma-separated list), no spaces.
_NAME = re.compile(r"[A-Za-z0-9][\x21-\x2b\x2d-\x7e]{0,127}")
_KEY_ID = re.compile(r"[\x21-\x7e]{1,128}")
_KEY_CHARS = re.compile(r"[\x21-\x7e]+")


def is_usable_name(value: str) -> bool:
    """Whether ``value`` can name a consumer or a group (it goes into a header value)."""
    return _NAME.fullmatch(value) is not None


def _check_name(value: str, what: str) -> str:
    if not is_usable_name(value):
        raise ValueError(
            f"{value!r} is not a usable {what}: 1 to 128 visible ASCII characters "
            "starting with a letter or digit, without spaces or commas"
        )
    return value


def _secret_bytes(secret: str) -> bytes:
    """A secret as written in the config: text (its UTF-8 bytes) or ``base64:…``."""
    if secret.startswith("base64:"):
        try:
            return base64.b64decode(secret[7:], validate=True)
        except binascii.Error:
            raise ValueError("the text after 'base64:' is not valid base64") from None
    return secret.encode()


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ConsumerConfig(_Model):
    """One consumer: its ``name`` (sent upstream in ``x-consumer-name``), its
    ``groups`` (``x-consumer-groups``, and what ``allow`` checks), the API keys
    that identify it to ``key_auth`` and the HMAC secrets, by key id, that it
    signs requests with (``hmac``)."""

    # A secret typed in the wrong place must not come back in an error message.
    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)

    name: str
    groups: tuple[str, ...] = ()
    api_keys: Annotated[tuple[SecretStr, ...], Field(max_length=MAX_CREDENTIALS_PER_CONSUMER)] = ()
    hmac_secrets: Annotated[
        dict[str, SecretStr], Field(max_length=MAX_CREDENTIALS_PER_CONSUMER)
    ] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _check_consumer_name(cls, value: str) -> str:
        return _check_name(value, "consumer name")

    @field_validator("groups")
    @classmethod
    def _check_groups(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for group in value:
            _check_name(group, "group name")
        if len(set(value)) != len(value):
            raise ValueError("a group is listed twice")
        return value

    @field_validator("api_keys")
    @classmethod
    def _check_api_keys(cls, value: tuple[SecretStr, ...]) -> tuple[SecretStr, ...]:
        for position, key in enumerate(value):
            text = key.get_secret_value()
            if not MIN_API_KEY_LENGTH <= len(
                text
            ) <= MAX_API_KEY_LENGTH or not _KEY_CHARS.fullmatch(text):
                # Never echo the key itself: the message goes to logs and terminals.
                raise ValueError(
                    f"api key #{position + 1} must be {MIN_API_KEY_LENGTH} to "
                    f"{MAX_API_KEY_LENGTH} visible ASCII characters (no spaces)"
                )
        if len({k.get_secret_value() for k in value}) != len(value):
            raise ValueError("the same api key is listed twice")
        return value

    @field_validator("hmac_secrets")
    @classmethod
    def _check_hmac_secrets(cls, value: dict[str, SecretStr]) -> dict[str, SecretStr]:
        for key_id, secret in value.items():
            if not _KEY_ID.fullmatch(key_id):
                raise ValueError(
                    f"key id {key_id!r}: 1 to 128 visible ASCII characters (no spaces)"
                )
            try:
                raw = _secret_bytes(secret.get_secret_value())
            except ValueError as exc:
                raise ValueError(f"the secret of key id {key_id!r}: {exc}") from None
            if len(raw) < MIN_HMAC_SECRET_BYTES:
                raise ValueError(
                    f"the secret of key id {key_id!r} is too short: at least "
                    f"{MIN_HMAC_SECRET_BYTES} bytes (write binary secrets as 'base64:…')"
                )
        return value


def consumer_problems(consumers: Iterable[ConsumerConfig]) -> list[str]:
    """What is wrong across a list of consumers (each one alone being valid):
    a name, an API key or an HMAC key id used twice. Each problem names the
    consumer's position, as ``consumers[3]: …``; an empty list when all is well.
    For the gateway's config model to report beside its other problems."""
    problems: list[str] = []
    names: dict[str, int] = {}
    keys: dict[bytes, int] = {}
    key_ids: dict[str, int] = {}
    count = 0
    for position, consumer in enumerate(consumers):
        count += 1
        where = f"consumers[{position}]"
        if consumer.name in names:
            problems.append(
                f"{where}.name: {consumer.name!r} is already the name of "
                f"consumers[{names[consumer.name]}]"
            )
        names.setdefault(consumer.name, position)
        for key in consumer.api_keys:
            digest = hashlib.sha256(key.get_secret_value().encode()).digest()
            if digest in keys and keys[digest] != position:
                problems.append(
                    f"{where}.api_keys: one of its keys is also a key of consumers[{keys[digest]}]"
                )
            keys.setdefault(digest, position)
        for key_id in consumer.hmac_secrets:
            if key_id in key_ids:
                problems.append(
                    f"{where}.hmac_secrets: key id {key_id!r} is also a key id of "
                    f"consumers[{key_ids[key_id]}]"
                )
            key_ids.setdefault(key_id, position)
    if count > MAX_CONSUMERS:
        problems.append(f"consumers: at most {MAX_CONSUMERS} consumers ({count} given)")
    return problems


class HmacCredential:
    """One HMAC key: the consumer it belongs to and the secret's bytes."""

    __slots__ = ("consumer", "secret")

    def __init__(self, consumer: ConsumerConfig, secret: bytes) -> None:
        self.consumer = consumer
        self.secret = secret

    def __repr__(self) -> str:  # never the secret
        return f"HmacCredential(consumer={self.consumer.name!r})"


class ConsumerIndex:
    """The configured consumers, indexed for the per-request lookups.

    Built once per configuration (raises ValueError listing
    :func:`consumer_problems`); every lookup is a dict access.
    """

    __slots__ = ("_by_key", "_by_key_id", "_by_name")

    def __init__(self, consumers: Iterable[ConsumerConfig] = ()) -> None:
        consumers = tuple(consumers)
        problems = consumer_problems(consumers)
        if problems:
            raise ValueError("; ".join(problems))
        self._by_name = {c.name: c for c in consumers}
        self._by_key: dict[bytes, ConsumerConfig] = {}
        self._by_key_id: dict[str, HmacCredential] = {}
        for consumer in consumers:
            for key in consumer.api_keys:
                self._by_key[hashlib.sha256(key.get_secret_value().encode()).digest()] = consumer
            for key_id, secret in consumer.hmac_secrets.items():
                self._by_key_id[key_id] = HmacCredential(
                    consumer, _secret_bytes(secret.get_secret_value())
                )

    def __len__(self) -> int:
        return len(self._by_name)

    def by_name(self, name: str) -> ConsumerConfig | None:
        return self._by_name.get(name)

    def by_api_key(self, key: str) -> ConsumerConfig | None:
        """The consumer holding API key ``key`` (None when nobody does)."""
        if not key or len(key) > MAX_API_KEY_LENGTH:
            return None
        try:
            digest = hashlib.sha256(key.encode()).digest()
        except UnicodeEncodeError:
            return None
        consumer = self._by_key.get(digest)
        if consumer is None:
            return None
        # The dict matched on the digest; compare once more in constant time so
        # that no code path ever compares key material with ==.
        for candidate in consumer.api_keys:
            stored = hashlib.sha256(candidate.get_secret_value().encode()).digest()
            if hmac.compare_digest(stored, digest):
                return consumer
        return None

    def by_hmac_key_id(self, key_id: str) -> HmacCredential | None:
        return self._by_key_id.get(key_id)

    def consumer(
        self, name: str, via: str, *, claims: Mapping[str, object] | None = None
    ) -> Consumer:
        """The :class:`Consumer` for ``name``: with its configured groups when it is
        a configured consumer, with none otherwise."""
        config = self._by_name.get(name)
        groups = config.groups if config is not None else ()
        if claims is None:
            return Consumer(name=name, via=via, groups=groups)
        return Consumer(name=name, via=via, groups=groups, claims=claims)


def identity_headers(request: GatewayRequest) -> list[tuple[str, str]]:
    """The header fields that tell the upstream who the consumer is (none when
    no plugin authenticated the request). The gateway removes
    :data:`IDENTITY_HEADERS` from the incoming request first, so these are the
    only ones the upstream sees."""
    consumer = request.consumer
    if consumer is None:
        return []
    fields = [(CONSUMER_NAME_HEADER, consumer.name)]
    if consumer.groups:
        fields.append((CONSUMER_GROUPS_HEADER, ",".join(consumer.groups)))
    return fields

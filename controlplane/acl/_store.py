"""Policies and tokens in the store, under their own prefix, shared by every replica.

Keys (values are JSON: small records only the control plane reads)::

    /ecosystem/v1/acl/bootstrap              the accessor id of the bootstrap token
    /ecosystem/v1/acl/policies/<name>        {"name", "description", "rules": ["r:p:a", ...]}
    /ecosystem/v1/acl/tokens/<accessor>      {"accessor_id", "description", "policies",
                                              "create_time", "secret_sha256"}
    /ecosystem/v1/acl/secrets/<sha256>       the accessor id, to find a token by its secret

A secret is 32 random bytes (URL-safe base64); only its SHA-256 is stored, so
reading the store does not give anyone a usable token. Resolving a secret is
cached for ``CACHE_SECONDS`` per replica: a deleted token or a changed policy
takes effect everywhere within that time.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import time
import uuid
from dataclasses import dataclass, field

from controlplane.registry import ROOT_PREFIX
from controlplane.store import Compare, DeleteOp, PutOp, Store
from serving.acl import RESOURCES, Rule, check_rule, parse_rule
from serving.errors import (
    AlreadyExistsError,
    FailedPreconditionError,
    FieldViolation,
    InvalidArgumentError,
    NotFoundError,
)

__all__ = [
    "ACL_PREFIX",
    "CACHE_SECONDS",
    "MANAGEMENT_POLICY",
    "AclStore",
    "Identity",
    "Policy",
    "TokenRecord",
    "hash_secret",
]

ACL_PREFIX = ROOT_PREFIX + "acl/"
_BOOTSTRAP_KEY = ACL_PREFIX + "bootstrap"
_POLICIES = ACL_PREFIX + "policies/"
_TOKENS = ACL_PREFIX + "tokens/"
_SECRETS = ACL_PREFIX + "secrets/"
CACHE_SECONDS = 1.0
_CACHE_MAX = 10_000
#: The policy bootstrap creates: write on everything.
MANAGEMENT_POLICY = "global-management"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Policy:
    name: str
    description: str = ""
    rules: tuple[Rule, ...] = ()

    def to_json(self) -> bytes:
        rules = [str(rule) for rule in self.rules]
        return json.dumps(
            {"name": self.name, "description": self.description, "rules": rules}
        ).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> Policy:
        data = json.loads(raw)
        rules = tuple(parse_rule(text) for text in data.get("rules", ()))
        return cls(str(data["name"]), str(data.get("description", "")), rules)


@dataclass(frozen=True, slots=True)
class TokenRecord:
    accessor_id: str
    description: str
    policies: tuple[str, ...]
    create_time: int
    secret_sha256: str = field(repr=False)

    def to_json(self) -> bytes:
        return json.dumps(
            {
                "accessor_id": self.accessor_id,
                "description": self.description,
                "policies": list(self.policies),
                "create_time": self.create_time,
                "secret_sha256": self.secret_sha256,
            }
        ).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> TokenRecord:
        data = json.loads(raw)
        return cls(
            str(data["accessor_id"]),
            str(data.get("description", "")),
            tuple(str(p) for p in data.get("policies", ())),
            int(data.get("create_time", 0)),
            str(data["secret_sha256"]),
        )


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a call comes from: a token (its accessor id and description, never
    its secret) and the rules of its policies; ``anonymous`` without a token."""

    accessor_id: str
    description: str
    rules: tuple[Rule, ...]

    @property
    def anonymous(self) -> bool:
        return not self.accessor_id

    def __str__(self) -> str:
        if self.anonymous:
            return "anonymous"
        return f"{self.accessor_id} ({self.description})" if self.description else self.accessor_id


ANONYMOUS = Identity("", "", ())


def _check_name(value: str, field_name: str) -> None:
    if not _NAME.match(value):
        raise InvalidArgumentError(
            [
                FieldViolation(
                    field_name, "1-128 letters, digits, '.', '-' or '_', not starting with a symbol"
                )
            ]
        )


class AclStore:
    """Policies and tokens over a Store (see the module docstring)."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._cache: dict[str, tuple[float, Identity | None]] = {}

    @property
    def store(self) -> Store:
        """The store it keeps policies and tokens in (the control plane's)."""
        return self._store

    # Policies.

    async def create_policy(self, policy: Policy) -> Policy:
        _check_name(policy.name, "policy.name")
        problems = []
        for index, rule in enumerate(policy.rules):
            try:
                check_rule(rule)
            except ValueError as exc:
                problems.append(FieldViolation(f"policy.rules[{index}]", str(exc)))
        if problems:
            raise InvalidArgumentError(problems)
        key = _POLICIES + policy.name
        result = await self._store.txn(
            [Compare(key, "exists", "==", False)], [PutOp(key, policy.to_json())]
        )
        if not result.succeeded:
            raise AlreadyExistsError(f"policy {policy.name!r} already exists")
        return policy

    async def get_policy(self, name: str) -> Policy:
        kv = await self._store.get(_POLICIES + name)
        if kv is None:
            raise NotFoundError(f"no policy {name!r}")
        return Policy.from_json(kv.value)

    async def list_policies(self) -> list[Policy]:
        result = await self._store.range(_POLICIES)
        return [Policy.from_json(kv.value) for kv in result.kvs]

    async def delete_policy(self, name: str) -> None:
        if not await self._store.delete(_POLICIES + name):
            raise NotFoundError(f"no policy {name!r}")
        self._cache.clear()

    # Tokens.

    async def create_token(
        self,
        policies: list[str],
        description: str,
        *,
        extra: list[PutOp] | None = None,
        compares: list[Compare] | None = None,
    ) -> tuple[TokenRecord, str]:
        """A new token for existing ``policies``; returns it and its secret."""
        if not policies:
            raise InvalidArgumentError([FieldViolation("policies", "name at least one policy")])
        if len(description) > 256:
            raise InvalidArgumentError([FieldViolation("description", "at most 256 characters")])
        for name in policies:
            if await self._store.get(_POLICIES + name) is None and not extra:
                raise InvalidArgumentError([FieldViolation("policies", f"no policy {name!r}")])
        secret = secrets.token_urlsafe(32)
        record = TokenRecord(
            accessor_id=str(uuid.uuid4()),
            description=description,
            policies=tuple(policies),
            create_time=int(time.time()),
            secret_sha256=hash_secret(secret),
        )
        ops = [
            *(extra or []),
            PutOp(_TOKENS + record.accessor_id, record.to_json()),
            PutOp(_SECRETS + record.secret_sha256, record.accessor_id.encode()),
        ]
        result = await self._store.txn(compares or [], ops)
        if not result.succeeded:
            raise FailedPreconditionError(
                "ACLs are already bootstrapped: ask the holder of the management token "
                "for a token (eco acl token create)"
            )
        return record, secret

    async def bootstrap(self) -> tuple[TokenRecord, str]:
        """The first management token, once; FailedPreconditionError after."""
        management = Policy(
            MANAGEMENT_POLICY,
            "every right (created by bootstrap)",
            tuple(Rule(r, "*", "write") for r in RESOURCES),
        )
        return await self.create_token(
            [MANAGEMENT_POLICY],
            "bootstrap token",
            extra=[
                PutOp(_BOOTSTRAP_KEY, b"1"),
                PutOp(_POLICIES + MANAGEMENT_POLICY, management.to_json()),
            ],
            compares=[Compare(_BOOTSTRAP_KEY, "exists", "==", False)],
        )

    async def list_tokens(self) -> list[TokenRecord]:
        result = await self._store.range(_TOKENS)
        return [TokenRecord.from_json(kv.value) for kv in result.kvs]

    async def delete_token(self, accessor_id: str) -> None:
        kv = await self._store.get(_TOKENS + accessor_id) if accessor_id else None
        if kv is None:
            raise NotFoundError(f"no token with accessor id {accessor_id!r}")
        record = TokenRecord.from_json(kv.value)
        await self._store.txn(
            [], [DeleteOp(_TOKENS + accessor_id), DeleteOp(_SECRETS + record.secret_sha256)]
        )
        self._cache.clear()

    # Resolving a secret.

    async def resolve(self, secret: str) -> Identity | None:
        """The identity of ``secret``, or None when no token has it."""
        digest = hash_secret(secret)
        now = time.monotonic()
        cached = self._cache.get(digest)
        if cached is not None and cached[0] > now:
            return cached[1]
        identity = await self._load(digest)
        if len(self._cache) >= _CACHE_MAX:
            self._cache.clear()
        self._cache[digest] = (now + CACHE_SECONDS, identity)
        return identity

    async def _load(self, digest: str) -> Identity | None:
        index = await self._store.get(_SECRETS + digest)
        if index is None:
            return None
        kv = await self._store.get(_TOKENS + index.value.decode())
        if kv is None:
            return None
        record = TokenRecord.from_json(kv.value)
        if not secrets.compare_digest(record.secret_sha256, digest):
            return None
        rules: list[Rule] = []
        for name in record.policies:
            policy = await self._store.get(_POLICIES + name)
            if policy is not None:
                rules.extend(Policy.from_json(policy.value).rules)
        return Identity(record.accessor_id, record.description, tuple(rules))

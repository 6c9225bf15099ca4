"""The AMQP bridge's configuration: ``bridges: [{protocol: amqp, …}]`` in the sidecar's file.

::

    bridges:
      - protocol: amqp
        name: orders                       # marks what this bridge forwarded (loops)
        url: amqp://guest:guest@127.0.0.1:5672/
        exchanges: [{name: orders, type: topic}]
        queues:
          - {name: orders-in, bindings: [{exchange: orders, routing_key: "eu.#"}]}
        inbound:                           # RabbitMQ -> bus
          - {queue: orders-in, subject: "amqp.orders.{routing_key}", prefetch: 100}
        outbound:                          # bus -> RabbitMQ
          - {subject: "orders.>", durable: amqp-orders, exchange: orders}

Frozen, validated models; :mod:`sidecar.config` reads them as part of
``SidecarConfig`` and reports each bad field with its line. The URL's
password appears in no ``repr`` and no log line (:attr:`AmqpBridgeConfig.safe_url`).
See docs/bus.md#amqp-0-9-1-rabbitmq for what each key does.
"""

from __future__ import annotations

from typing import Literal, Self
from urllib.parse import unquote, urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from bus import InvalidSubjectError
from bus.convert import LIMITS
from bus.subjects import validate_name, validate_pattern
from sidecar.bridges.amqp._convert import (
    AMQP_NAME,
    INBOUND_FIELDS,
    MAX_SHORTSTR,
    OUTBOUND_FIELDS,
    check_template,
    render,
    subject_problem,
)
from sidecar.health import Duration

__all__ = [
    "BUILTIN_EXCHANGES",
    "AmqpBindingConfig",
    "AmqpBridgeConfig",
    "AmqpExchangeConfig",
    "AmqpInboundConfig",
    "AmqpOutboundConfig",
    "AmqpQueueConfig",
]

#: Exchanges every RabbitMQ virtual host has: they may be used without being declared.
BUILTIN_EXCHANGES = frozenset({"amq.direct", "amq.fanout", "amq.topic", "amq.headers", "amq.match"})
#: Values an ``arguments`` table may hold (``x-message-ttl: 60000``, ``x-queue-type: quorum``).
_Argument = StrictBool | StrictInt | float | str


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def _check_amqp_name(value: str, *, what: str, declared: bool) -> str:
    if not AMQP_NAME.match(value):
        raise ValueError(
            f"{value!r} is not {what} name: 1-255 letters, digits, '-', '_', '.' and ':'"
        )
    if declared and value.startswith("amq."):
        raise ValueError(
            f"{value!r}: names starting with 'amq.' are RabbitMQ's own and cannot be declared"
        )
    return value


def _invalid(title: str, problems: list[tuple[tuple[str | int, ...], str]]) -> ValidationError:
    """An error naming each field (the model validators' own problems)."""
    return ValidationError.from_exception_data(
        title,
        [
            InitErrorDetails(
                type=PydanticCustomError("value_error", "{msg}", {"msg": message}),
                loc=loc,
                input=None,
            )
            for loc, message in problems
        ],
    )


def _bus_name(value: str) -> None:
    try:
        validate_name(value, field="name")
    except InvalidSubjectError as exc:
        raise ValueError(exc.message.removeprefix("name: ")) from None


def _check_routing_key(value: str) -> str:
    if len(value.encode()) > MAX_SHORTSTR:
        raise ValueError(f"longer than {MAX_SHORTSTR} bytes")
    return value


class AmqpExchangeConfig(_Model):
    """An exchange declared on every connect (idempotent; a different existing one is an
    error RabbitMQ reports). ``passive``: only check that it exists."""

    name: str
    type: Literal["direct", "fanout", "topic", "headers"] = "topic"
    durable: StrictBool = True
    auto_delete: StrictBool = False
    passive: StrictBool = False
    arguments: dict[str, _Argument] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        return _check_amqp_name(value, what="an exchange", declared=True)


class AmqpBindingConfig(_Model):
    """Binds the queue to ``exchange`` with ``routing_key`` (a binding key: ``*`` and
    ``#`` for topic exchanges) and, for headers exchanges, ``arguments``."""

    exchange: str
    routing_key: str = ""
    arguments: dict[str, _Argument] = Field(default_factory=dict)

    @field_validator("exchange")
    @classmethod
    def _check_exchange(cls, value: str) -> str:
        if value == "":
            raise ValueError("a queue cannot be bound to the default exchange (it is implicit)")
        return _check_amqp_name(value, what="an exchange", declared=False)

    _routing_key = field_validator("routing_key")(_check_routing_key)


class AmqpQueueConfig(_Model):
    """A queue declared (and bound) on every connect. Durable by default, so that its
    messages outlive a RabbitMQ restart; ``arguments`` carry ``x-dead-letter-exchange``,
    ``x-queue-type`` and the like. ``passive``: only check that it exists."""

    name: str
    durable: StrictBool = True
    auto_delete: StrictBool = False
    passive: StrictBool = False
    arguments: dict[str, _Argument] = Field(default_factory=dict)
    bindings: tuple[AmqpBindingConfig, ...] = Field(default=(), max_length=256)

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        return _check_amqp_name(value, what="a queue", declared=True)


class AmqpInboundConfig(_Model):
    """RabbitMQ to the bus: consumes ``queue`` (manual acknowledgements, at most
    ``prefetch`` unacknowledged) and publishes each message on ``subject``, a
    template with ``{routing_key}``, ``{exchange}`` and ``{queue}``."""

    queue: str
    subject: str
    prefetch: StrictInt = Field(default=100, ge=1, le=65535)
    #: how long a message the bus refused for now waits before it is requeued
    retry_delay: Duration = 1.0

    @field_validator("queue")
    @classmethod
    def _check_queue(cls, value: str) -> str:
        return _check_amqp_name(value, what="a queue", declared=False)

    @field_validator("subject")
    @classmethod
    def _check_subject(cls, value: str) -> str:
        check_template(value, INBOUND_FIELDS)
        return value

    @field_validator("retry_delay")
    @classmethod
    def _check_delay(cls, value: float) -> float:
        if not 0 < value <= 300:
            raise ValueError("must be greater than 0 and at most 5m")
        return value

    @model_validator(mode="after")
    def _check_sample(self) -> Self:
        # Placeholders other than the queue vary per message: a token stands in for them.
        sample = render(self.subject, routing_key="x", exchange="x", queue=self.queue)
        problem = subject_problem(sample)
        if problem:
            raise _invalid(
                "AmqpInboundConfig",
                [(("subject",), f"does not make a bus subject: {sample!r} {problem}")],
            )
        return self


class AmqpOutboundConfig(_Model):
    """The bus to RabbitMQ: subscribes to ``subject`` (a pattern) and publishes each
    message to ``exchange`` (``""``: the default exchange, which routes to the queue
    named by the routing key) with ``routing_key`` (a template with ``{subject}``).
    With ``durable``, a durable consumer of that name (at least once: a message is
    acknowledged on the bus once RabbitMQ confirmed it); without, a core
    subscription (at most once)."""

    subject: str
    exchange: str = ""
    routing_key: str = "{subject}"
    durable: str = ""
    stream: str = ""
    queue_group: str = ""
    deliver: Literal["all", "new", "last"] = "all"
    ack_wait: Duration = 30.0
    max_deliver: StrictInt = Field(default=5, ge=1, le=LIMITS.max_deliver)
    max_ack_pending: StrictInt = Field(default=1000, ge=1, le=LIMITS.max_ack_pending)
    #: how long a message RabbitMQ did not take (unroutable, refused) waits to come again
    nak_delay: Duration = 1.0
    #: persistent delivery mode (written to disk by durable queues)
    persistent: StrictBool = True

    @field_validator("subject")
    @classmethod
    def _check_subject(cls, value: str) -> str:
        try:
            validate_pattern(value, field="subject")
        except InvalidSubjectError as exc:
            raise ValueError(exc.message.removeprefix("subject: ")) from None
        return value

    @field_validator("exchange")
    @classmethod
    def _check_exchange(cls, value: str) -> str:
        return value and _check_amqp_name(value, what="an exchange", declared=False)

    @field_validator("routing_key")
    @classmethod
    def _check_key(cls, value: str) -> str:
        check_template(value, OUTBOUND_FIELDS)
        _check_routing_key(value.replace("{subject}", ""))
        return value

    @field_validator("durable", "stream", "queue_group")
    @classmethod
    def _check_bus_name(cls, value: str) -> str:
        if value:
            _bus_name(value)
        return value

    @field_validator("ack_wait", "nak_delay")
    @classmethod
    def _check_duration(cls, value: float) -> float:
        if not 0 < value <= 24 * 3600:
            raise ValueError("must be greater than 0 and at most 24h")
        return value

    @model_validator(mode="after")
    def _check_durable(self) -> Self:
        if self.stream and not self.durable:
            raise _invalid(
                "AmqpOutboundConfig",
                [(("stream",), "only a durable consumer names a stream; set durable too")],
            )
        return self


class AmqpBridgeConfig(_Model):
    """A bridge between the bus and an AMQP 0-9-1 broker (RabbitMQ)."""

    protocol: Literal["amqp"]
    #: marks the messages this bridge forwarded, so that it does not forward them back
    name: str = "amqp"
    url: str = Field(repr=False)
    exchanges: tuple[AmqpExchangeConfig, ...] = Field(default=(), max_length=256)
    queues: tuple[AmqpQueueConfig, ...] = Field(default=(), max_length=256)
    inbound: tuple[AmqpInboundConfig, ...] = Field(default=(), max_length=64)
    outbound: tuple[AmqpOutboundConfig, ...] = Field(default=(), max_length=64)
    #: AMQP heartbeat; 0 turns it off
    heartbeat: Duration = 30.0
    connect_timeout: Duration = 10.0
    #: how long RabbitMQ may take to confirm a publish before it is retried
    confirm_timeout: Duration = 30.0

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        _bus_name(value)
        return value

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        # Messages never quote the URL: it may hold a password.
        try:
            parts = urlsplit(value.strip())
            port = parts.port
        except ValueError:
            raise ValueError("not a URL like amqp://user:password@host:5672/vhost") from None
        if parts.scheme not in ("amqp", "amqps"):
            raise ValueError(
                f"the scheme must be amqp:// or amqps://, not {parts.scheme or 'none'!r}"
            )
        if not parts.hostname:
            raise ValueError("names no host (amqp://user:password@host:5672/vhost)")
        if port == 0:
            raise ValueError("the port must be 1-65535")
        if parts.path.count("/") > 1:
            raise ValueError("a virtual host's own '/' is written %2F (amqp://host/%2F)")
        return value.strip()

    @property
    def vhost(self) -> str:
        """The virtual host the URL names (``/`` when none)."""
        return unquote(urlsplit(self.url).path[1:]) or "/"

    @field_validator("heartbeat")
    @classmethod
    def _check_heartbeat(cls, value: float) -> float:
        if not 0 <= value <= 3600:
            raise ValueError("must be 0 (off) to 1h")
        return value

    @field_validator("connect_timeout", "confirm_timeout")
    @classmethod
    def _check_timeout(cls, value: float) -> float:
        if not 0 < value <= 600:
            raise ValueError("must be greater than 0 and at most 10m")
        return value

    @property
    def safe_url(self) -> str:
        """The URL without its password, for logs and status."""
        parts = urlsplit(self.url)
        if parts.password is None:
            return self.url
        netloc = parts.netloc.rpartition("@")[2]
        user = parts.username or ""
        return parts._replace(netloc=f"{user}:***@{netloc}").geturl()

    @model_validator(mode="after")
    def _check_references(self) -> Self:
        problems: list[tuple[tuple[str | int, ...], str]] = []
        exchanges = {e.name for e in self.exchanges}
        queues = {q.name for q in self.queues}
        if len(exchanges) < len(self.exchanges):
            problems.append((("exchanges",), "each name may be declared once"))
        if len(queues) < len(self.queues):
            problems.append((("queues",), "each name may be declared once"))
        known = exchanges | BUILTIN_EXCHANGES

        def missing(name: str) -> str:
            return (
                f"{name!r} is not declared under exchanges "
                "(declare it, with passive: true if it exists already)"
            )

        for i, queue in enumerate(self.queues):
            for j, binding in enumerate(queue.bindings):
                if binding.exchange not in known:
                    loc = ("queues", i, "bindings", j, "exchange")
                    problems.append((loc, missing(binding.exchange)))
        for i, rule in enumerate(self.inbound):
            if rule.queue not in queues:
                problems.append(
                    (
                        ("inbound", i, "queue"),
                        f"{rule.queue!r} is not declared under queues "
                        "(declare it, with passive: true if it exists already)",
                    )
                )
        for i, out in enumerate(self.outbound):
            if out.exchange and out.exchange not in known:
                problems.append((("outbound", i, "exchange"), missing(out.exchange)))
        durables: dict[str, int] = {}
        for i, out in enumerate(self.outbound):
            if out.durable in durables:
                problems.append(
                    (
                        ("outbound", i, "durable"),
                        f"{out.durable!r} is also the consumer of outbound"
                        f"[{durables[out.durable]}]; give each its own",
                    )
                )
            elif out.durable:
                durables[out.durable] = i
        if not self.inbound and not self.outbound:
            problems.append((("inbound",), "needs inbound or outbound rules (or both)"))
        if problems:
            raise _invalid("AmqpBridgeConfig", problems)
        return self

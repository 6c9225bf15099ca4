"""What every check has in common: its kind, a name, an initial status, and probe timing."""

from __future__ import annotations

import abc
import enum
from collections.abc import Mapping
from typing import Annotated, Any, ClassVar, Self

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictInt,
    ValidationInfo,
    field_validator,
    model_validator,
)

from sdk import HealthStatus
from sidecar.health._duration import Duration, format_duration, parse_duration

__all__ = [
    "DEFAULT_INTERVAL",
    "DEFAULT_JITTER",
    "MAX_DEFAULT_TIMEOUT",
    "MAX_JITTER",
    "MIN_INTERVAL",
    "NAME_MAX",
    "CheckConfig",
    "CheckKind",
    "ProbeCheckConfig",
    "clip_name",
    "split_host_port",
]

#: Seconds between two probes when a check does not say.
DEFAULT_INTERVAL = 10.0
#: A probe's timeout, when not given, is the interval capped at this many seconds.
MAX_DEFAULT_TIMEOUT = 5.0
#: Default random spread of each wait, as a fraction of the interval (±10%).
DEFAULT_JITTER = 0.1
#: The largest jitter accepted, as a fraction of the interval.
MAX_JITTER = 0.5
#: The smallest interval accepted: anything shorter is a configuration mistake.
MIN_INTERVAL = 0.01

#: The longest check name: the control plane's limit (LIMITS.check_name_length in
#: controlplane/validation.py; the sidecar may not import the control plane).
NAME_MAX = 128


class CheckKind(enum.StrEnum):
    """The kind of a check, which is also the key holding its target."""

    HTTP = "http"
    TCP = "tcp"
    GRPC = "grpc"
    EXEC = "exec"
    TTL = "ttl"


def split_host_port(value: str) -> tuple[str, int]:
    """Splits ``host:port`` (IPv6 as ``[::1]:port``) of a check target; port 1 to 65535."""
    host, sep, port = value.strip().rpartition(":")
    if not sep or not host:
        raise ValueError(f"{value!r} is not HOST:PORT")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"{value!r}: write an IPv6 address in brackets, like [::1]:8080")
    if not host:
        raise ValueError(f"{value!r} has an empty host")
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"{value!r}: the port must be a number from 1 to 65535")
    return host, int(port)


def _status(value: Any) -> Any:
    return HealthStatus.parse(value) if isinstance(value, str) else value


_Status = Annotated[HealthStatus, BeforeValidator(_status)]


class CheckConfig(BaseModel):
    """What every kind of check has: a name and the status it starts in.

    ``name`` is 1-128 printable characters, unique among one instance's
    checks. Without one, the check is named after its kind and target with
    nothing that may be a credential: ``http http://host:8080/health`` (no
    user, password, query or fragment), ``grpc host:9000/orders``, ``tcp
    host:5432``, ``exec check-disk`` (the program, not its arguments), ``ttl``
    (see :attr:`default_name`).
    ``initial_status`` is what the check reports before its first result:
    CRITICAL by default, so an instance receives traffic only once it has
    proven healthy. It is accepted in any case (``passing``).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: ClassVar[CheckKind]

    name: str = ""
    initial_status: _Status = HealthStatus.CRITICAL

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        if not value:
            return value  # named after the target, below
        value = value.strip()
        if not value:
            raise ValueError("a check name cannot be blank")
        if len(value) > NAME_MAX:
            raise ValueError(f"a check name is at most {NAME_MAX} characters, got {len(value)}")
        if not value.isprintable():
            raise ValueError(
                "a check name must be printable: no tabs, line breaks or control characters"
            )
        return value

    @model_validator(mode="after")
    def _default_name(self) -> Self:
        if not self.name:
            # The model is frozen; this is its own construction.
            object.__setattr__(self, "name", self.default_name)
        return self

    @property
    def default_name(self) -> str:
        """The name the check gets without one: its kind and :attr:`target`, cut to
        :data:`NAME_MAX` characters, with anything unprintable replaced."""
        return clip_name(f"{self.kind.value} {self.target}")

    @property
    @abc.abstractmethod
    def target(self) -> str:
        """What the check looks at, for names, logs and outputs: never a credential."""

    def numbered(self, n: int) -> Self:
        """A copy named ``<default name> #n``: how the sidecar tells apart several
        checks of one instance that would get the same default name."""
        return self.model_copy(update={"name": clip_name(self.default_name, f" #{n}")})


def clip_name(text: str, suffix: str = "") -> str:
    """``text`` + ``suffix`` as a valid check name: unprintable characters become '?', and
    the text is cut (ending in '…') so that the whole is at most :data:`NAME_MAX` long."""
    text = "".join(c if c.isprintable() else "?" for c in text.strip()) or "check"
    room = NAME_MAX - len(suffix)
    if len(text) > room:
        text = text[: room - 1] + "…"
    return text + suffix


class ProbeCheckConfig(CheckConfig):
    """A check the sidecar runs itself, every ``interval``.

    - ``interval``: time between two probes (default 10s; at least 10ms);
    - ``timeout``: how long one probe may take (default: the interval, at
      most 5s); it must be > 0 and not longer than the interval, so at most
      one probe of a check is ever in flight;
    - ``jitter``: random spread of every wait, as a fraction of the interval
      (a number, or ``"10%"``) or as a duration (``"100ms"``); at most half the
      interval; default 0.1 (each wait is the interval ±10%);
    - ``failures_before_critical`` / ``successes_before_passing``: how many
      consecutive failing / passing probes it takes to change the reported
      status (default 1 each).
    """

    interval: Duration = DEFAULT_INTERVAL
    timeout: Duration = MAX_DEFAULT_TIMEOUT  # replaced by min(interval, 5s) when not given
    jitter: float = DEFAULT_JITTER
    failures_before_critical: StrictInt = Field(default=1, ge=1, le=10_000)
    successes_before_passing: StrictInt = Field(default=1, ge=1, le=10_000)

    @model_validator(mode="before")
    @classmethod
    def _default_timeout(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and data.get("timeout") is None:
            try:
                interval = parse_duration(data.get("interval", DEFAULT_INTERVAL))
            except (TypeError, ValueError):
                return data  # the interval's own error is reported instead
            if interval > 0:
                data = {**data, "timeout": min(interval, MAX_DEFAULT_TIMEOUT)}
        return data

    @field_validator("interval")
    @classmethod
    def _check_interval(cls, value: float) -> float:
        if value <= 0:
            raise ValueError("must be greater than 0")
        if value < MIN_INTERVAL:
            raise ValueError(f"must be at least {format_duration(MIN_INTERVAL)}")
        return value

    @field_validator("timeout")
    @classmethod
    def _check_timeout(cls, value: float, info: ValidationInfo) -> float:
        if value <= 0:
            raise ValueError("must be greater than 0")
        interval = info.data.get("interval")
        if interval is not None and value > interval:
            raise ValueError(
                f"{format_duration(value)} is longer than the interval "
                f"({format_duration(interval)}); a probe must end before the next one is due"
            )
        return value

    @field_validator("jitter", mode="before")
    @classmethod
    def _parse_jitter(cls, value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, bool):
            raise ValueError("must be a fraction of the interval (0.1), a percentage or a duration")
        if isinstance(value, int | float):
            if not 0 <= value <= MAX_JITTER:
                raise ValueError(
                    f"a number is a fraction of the interval, from 0 to {MAX_JITTER}; "
                    "write a duration such as '200ms' for an absolute spread"
                )
            return float(value)
        if not isinstance(value, str):
            raise ValueError("must be a fraction of the interval (0.1), a percentage or a duration")
        text = value.strip()
        if text.endswith("%"):
            try:
                fraction = float(text[:-1]) / 100.0
            except ValueError:
                raise ValueError(f"{value!r} is not a percentage") from None
            if not 0 <= fraction <= MAX_JITTER:
                raise ValueError(f"must be from 0% to {MAX_JITTER:.0%} of the interval")
            return fraction
        seconds = parse_duration(text)
        interval = info.data.get("interval")
        if interval is None:
            return DEFAULT_JITTER  # the interval's own error is reported instead
        if seconds < 0 or seconds > interval * MAX_JITTER:
            raise ValueError(
                f"{value!r} must be from 0 to half the interval ({format_duration(interval)})"
            )
        return seconds / interval

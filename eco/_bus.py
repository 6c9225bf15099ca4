"""``eco bus …``: publish, subscribe, request, and manage durable streams.

Each command opens one :class:`sdk.BusClient` on the control plane given by
``--server`` (or a sidecar's local API, which serves the same bus), runs one
coroutine and closes it. Errors are the SDK's, turned into one line and an
exit code by the ``eco`` group (1 for the server, 2 for rejected input);
"no responders" and "no reply in time" are reported here, in bus words.
"""

from __future__ import annotations

import asyncio
import re
import sys
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import click

from eco._output import emit, json_line, render_table
from eco._settings import Settings, data_options, pass_settings
from sdk import BusClient, BusMessage, DeadlineExceededError, NoRespondersError, StreamInfo

__all__ = ["bus", "parse_bytes", "parse_duration"]

T = TypeVar("T")

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}
_BYTES = re.compile(r"^\s*(\d+)\s*([kmgt]i?b?|b)?\s*$", re.IGNORECASE)


def parse_duration(text: str) -> float:
    """Seconds in ``text``: a number (seconds) or one with ms, s, m, h or d."""
    match = _DURATION.match(text)
    if match is None:
        raise ValueError(f"{text!r} is not a duration: use e.g. 500ms, 30s, 5m, 2h, 7d")
    return float(match.group(1)) * _DURATION_UNITS[match.group(2)]


def parse_bytes(text: str) -> int:
    """Bytes in ``text``: a number, or one with KB, MB, GB, TB (powers of 1000) or
    KiB, MiB, GiB, TiB (powers of 1024)."""
    match = _BYTES.match(text)
    if match is None:
        raise ValueError(f"{text!r} is not a size: use e.g. 1048576, 500MB or 1GiB")
    unit = (match.group(2) or "b").lower().rstrip("b")
    if not unit:
        return int(match.group(1))
    power = "kmgt".index(unit[0]) + 1
    base = 1024 if unit.endswith("i") else 1000
    return int(match.group(1)) * int(base**power)


class _Duration(click.ParamType[float, Any]):
    name = "DURATION"

    def convert(
        self, value: object, param: click.Parameter | None, ctx: click.Context | None
    ) -> float:
        if isinstance(value, float | int):
            return float(value)
        try:
            return parse_duration(str(value))
        except ValueError as err:
            self.fail(str(err), param, ctx)


class _Size(click.ParamType[int, Any]):
    name = "SIZE"

    def convert(
        self, value: object, param: click.Parameter | None, ctx: click.Context | None
    ) -> int:
        if isinstance(value, int):
            return value
        try:
            return parse_bytes(str(value))
        except ValueError as err:
            self.fail(str(err), param, ctx)


DURATION = _Duration()
SIZE = _Size()


def _parse_headers(
    ctx: click.Context, param: click.Parameter, values: tuple[str, ...]
) -> dict[str, str]:
    headers: dict[str, str] = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", ctx=ctx, param=param)
        headers[key] = value
    return headers


def _payload(data: str) -> bytes:
    """DATA as given, or standard input for ``-``."""
    return sys.stdin.buffer.read() if data == "-" else data.encode("utf-8")


def _run(settings: Settings, work: Callable[[BusClient], Awaitable[T]]) -> T:
    """Runs ``work`` with a bus client on the configured control plane."""

    async def main() -> T:
        async with BusClient(
            settings.server,
            timeout=settings.timeout,
            ca_file=settings.ca_file or "",
            token=settings.token,
        ) as client:
            return await work(client)

    return asyncio.run(main())


_header_option = click.option(
    "--header",
    "headers",
    multiple=True,
    metavar="KEY=VALUE",
    callback=_parse_headers,
    help="A message header; repeat for more.",
)


@click.group()
def bus() -> None:
    """Publish, subscribe and make requests over the message bus; manage durable streams.

    Subjects are dot-separated tokens (orders.eu.created); a subscription
    may use * for one token and a final > for one or more (quote them in
    the shell). Messages are at most once, unless a durable stream captures
    their subject: then they are stored and durable consumers get each at
    least once.

    \b
    Examples:
      eco bus subscribe 'orders.>'                  # prints one JSON object per message
      eco bus publish orders.eu.created '{"id": 7}' --header source=web
      eco bus stream add ORDERS --subjects 'orders.>' --max-age 7d
      eco bus subscribe 'orders.>' --durable billing --count 10
      eco bus request prices.quote '{"sku": "A1"}' --timeout 2s
      eco bus streams
    """


@bus.command("publish")
@click.argument("subject")
@click.argument("data")
@_header_option
@click.option(
    "--id",
    "message_id",
    default="",
    metavar="MSGID",
    help="Message id: a stream stores a message once per id within its duplicate window.",
)
@data_options
@pass_settings
def publish(
    settings: Settings, subject: str, data: str, headers: dict[str, str], message_id: str
) -> None:
    """Publish DATA on SUBJECT ('-' reads DATA from standard input).

    Subscribers connected now get it; when a durable stream captures
    SUBJECT it is stored first, and its stream and sequence are printed.

    \b
    Examples:
      eco bus publish orders.eu.created '{"id": 7}'
      eco bus publish orders.eu.created '{"id": 7}' --id order-7 --header source=web
      gzip -c report.csv | eco bus publish reports.daily -
    """
    payload = _payload(data)
    result = _run(settings, lambda c: c.publish(subject, payload, headers=headers, id=message_id))

    def text() -> str:
        if not result.stored:
            return f"published to {subject} (no stream captures it: live subscribers only)"
        if result.duplicate:
            return (
                f"duplicate of {result.stream} #{result.sequence} (id {message_id!r}): not stored"
            )
        return f"published to {subject}: stream {result.stream}, sequence {result.sequence}"

    emit(result.to_dict(), settings.output, text)


@bus.command("subscribe")
@click.argument("subject")
@click.option("--queue", default="", metavar="GROUP", help="Share messages with this queue group.")
@click.option(
    "--durable",
    default="",
    metavar="NAME",
    help="Consume as the durable consumer NAME: at least once, resumes where it left off.",
)
@click.option(
    "--stream",
    default="",
    metavar="STREAM",
    help="Durable: the stream (default: the one capturing SUBJECT).",
)
@click.option(
    "--deliver",
    type=click.Choice(["all", "new", "last"], case_sensitive=False),
    help="Durable, new consumer: start at the first message (all, the default), "
    "the last one, or only new ones.",
)
@click.option(
    "--start-sequence",
    type=click.IntRange(min=1),
    help="Durable, new consumer: start at this stream sequence.",
)
@click.option(
    "--ack-wait",
    type=DURATION,
    help="Durable: redeliver a message not acknowledged within this long (default 30s).",
)
@click.option(
    "--count",
    type=click.IntRange(min=1),
    help="Exit after this many messages (default: run until Ctrl-C).",
)
@data_options
@pass_settings
def subscribe(
    settings: Settings,
    subject: str,
    queue: str,
    durable: str,
    stream: str,
    deliver: str | None,
    start_sequence: int | None,
    ack_wait: float | None,
    count: int | None,
) -> None:
    """Print messages on SUBJECT (a pattern may use * and a final >) as they come.

    One JSON object per line: "subject", "data" (the payload as text, or
    base64 with "encoding": "base64" when it is not UTF-8), "headers", and
    for a durable consumer "stream", "sequence", "redelivered" and
    "delivery_count". A durable consumer's messages are acknowledged once
    printed. The output is JSON lines whatever -o says.

    \b
    Examples:
      eco bus subscribe 'orders.*.created'
      eco bus subscribe jobs.resize --queue workers
      eco bus subscribe 'orders.>' --durable billing --count 100 | jq -r .data
    """
    if not durable and (stream or deliver or start_sequence or ack_wait is not None):
        raise click.UsageError(
            "--stream, --deliver, --start-sequence and --ack-wait need --durable"
        )

    async def work(client: BusClient) -> None:
        received = 0
        sub = client.subscribe(
            subject,
            queue=queue,
            durable=durable,
            stream=stream,
            deliver=deliver.lower() if deliver else None,
            start_sequence=start_sequence or 0,
            ack_wait=ack_wait,
        )
        async with sub:
            async for message in sub:
                click.echo(json_line(_message_dict(message, durable=bool(durable))))
                if message.durable:
                    await message.ack()
                received += 1
                if count is not None and received >= count:
                    return

    _run(settings, work)


def _message_dict(message: BusMessage, *, durable: bool) -> dict[str, object]:
    out = message.to_dict()
    if durable:
        out.setdefault("stream", message.stream)
        out.setdefault("sequence", message.sequence)
        out.setdefault("redelivered", message.redelivered)
        out.setdefault("delivery_count", message.delivery_count)
    return out


@bus.command("request")
@click.argument("subject")
@click.argument("data")
@_header_option
@click.option(
    "--timeout",
    "wait",
    type=DURATION,
    help="How long to wait for the reply, e.g. 500ms or 2s (default: the global --timeout).",
)
@data_options
@pass_settings
def request(
    settings: Settings, subject: str, data: str, headers: dict[str, str], wait: float | None
) -> None:
    """Send DATA to SUBJECT as a request and print the first reply.

    The reply's payload is printed as is; with -o json or yaml, the whole
    reply message. Exits 1 at once when nothing subscribes to SUBJECT, or
    when no reply comes in time.

    \b
    Examples:
      eco bus request prices.quote '{"sku": "A1"}'
      eco bus request prices.quote '{"sku": "A1"}' --timeout 500ms -o json
    """
    timeout = settings.timeout if wait is None else wait
    if not 0 < timeout <= 300:
        raise click.BadParameter("must be more than 0 and at most 300s", param_hint="--timeout")
    payload = _payload(data)
    try:
        reply = _run(
            settings, lambda c: c.request(subject, payload, headers=headers, timeout=timeout)
        )
    except NoRespondersError:
        raise click.ClickException(f"no responders: nothing subscribes to {subject}") from None
    except DeadlineExceededError:
        raise click.ClickException(f"no reply on {subject} within {timeout:g}s") from None
    if settings.output.value == "table":
        raw = reply.data if reply.data.endswith(b"\n") else reply.data + b"\n"
        click.echo(raw, nl=False)
        return
    emit(reply.to_dict(), settings.output, lambda: "")


@bus.command("streams")
@data_options
@pass_settings
def streams(settings: Settings) -> None:
    """List durable streams with their message counts and consumers.

    \b
    Examples:
      eco bus streams
      eco bus streams -o json | jq '.streams[] | {name, messages}'
    """
    infos = _run(settings, lambda c: c.streams())

    def table() -> str:
        if not infos:
            return "no durable streams (add one with 'eco bus stream add')"
        return render_table(
            ("NAME", "SUBJECTS", "MESSAGES", "BYTES", "SEQUENCES", "CONSUMERS", "LIMITS"),
            [
                (
                    i.name,
                    list(i.config.subjects),
                    i.messages,
                    i.bytes,
                    f"{i.first_sequence}-{i.last_sequence}" if i.messages else "-",
                    [f"{c.name}({c.pending} pending)" for c in i.consumers],
                    _limits(i),
                )
                for i in infos
            ],
        )

    emit({"streams": [i.to_dict() for i in infos]}, settings.output, table)


def _limits(info: StreamInfo) -> str:
    c = info.config
    parts = []
    if c.max_age:
        parts.append(f"age {_seconds(c.max_age)}")
    if c.max_msgs:
        parts.append(f"{c.max_msgs} msgs")
    if c.max_bytes:
        parts.append(f"{c.max_bytes} bytes")
    return ", ".join(parts)


def _seconds(value: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if value >= size and value % size == 0:
            return f"{value / size:g}{unit}"
    return f"{value:g}s"


@bus.group("stream")
def stream() -> None:
    """Add, list and delete durable streams.

    A durable stream stores every message published on the subjects it
    captures, so that durable consumers get each at least once.

    \b
    Examples:
      eco bus stream add ORDERS --subjects 'orders.>' --max-age 7d --max-msgs 1000000
      eco bus stream list
      eco bus stream delete ORDERS
    """


def _split_subjects(
    ctx: click.Context, param: click.Parameter, values: tuple[str, ...]
) -> list[str]:
    subjects = [s.strip() for value in values for s in value.split(",") if s.strip()]
    if not subjects:
        raise click.BadParameter("name at least one subject or pattern", ctx=ctx, param=param)
    return subjects


@stream.command("add")
@click.argument("name")
@click.option(
    "--subjects",
    "subjects",
    required=True,
    multiple=True,
    metavar="PATTERN[,PATTERN…]",
    callback=_split_subjects,
    help="Subjects or patterns the stream captures; repeat or separate with commas.",
)
@click.option(
    "--max-age", type=DURATION, default=0.0, help="Drop messages older than this (e.g. 7d)."
)
@click.option(
    "--max-msgs", type=click.IntRange(min=0), default=0, help="Keep at most this many messages."
)
@click.option("--max-bytes", type=SIZE, default=0, help="Keep at most this many bytes (e.g. 1GiB).")
@click.option(
    "--duplicate-window",
    type=DURATION,
    default=0.0,
    help="De-duplicate by message id within this window (default 2m).",
)
@click.option(
    "--dead-letter",
    "dead_letter",
    default="",
    metavar="SUBJECT",
    help="Where messages go after too many deliveries (default eco.dlq.NAME).",
)
@data_options
@pass_settings
def add_stream(
    settings: Settings,
    name: str,
    subjects: list[str],
    max_age: float,
    max_msgs: int,
    max_bytes: int,
    duplicate_window: float,
    dead_letter: str,
) -> None:
    """Create the durable stream NAME capturing --subjects (or confirm an identical one).

    Names are 1-64 letters, digits, '-' and '_'. No two streams may capture
    the same subject. Limits of 0 mean none; the oldest messages go first.

    \b
    Examples:
      eco bus stream add ORDERS --subjects 'orders.>'
      eco bus stream add EVENTS --subjects 'billing.*,shipping.*' --max-age 24h --max-bytes 1GiB
    """
    info = _run(
        settings,
        lambda c: c.add_stream(
            name,
            subjects,
            max_age=max_age,
            max_msgs=max_msgs,
            max_bytes=max_bytes,
            duplicate_window=duplicate_window,
            dead_letter_subject=dead_letter,
        ),
    )
    emit(
        info.to_dict(),
        settings.output,
        lambda: (
            f"stream {info.name} captures {', '.join(info.config.subjects)}"
            f" ({info.messages} message(s); dead letters to {info.config.dead_letter_subject})"
        ),
    )


stream.add_command(streams, "list")


@stream.command("delete")
@click.argument("name")
@data_options
@pass_settings
def delete_stream(settings: Settings, name: str) -> None:
    """Delete the durable stream NAME with its messages and consumers.

    \b
    Example:
      eco bus stream delete ORDERS
    """
    _run(settings, lambda c: c.delete_stream(name))
    emit({"name": name, "deleted": True}, settings.output, lambda: f"deleted stream {name}")

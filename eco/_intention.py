"""``eco intention``: which service may call which (docs/security.md, "Intentions").

Calls the control plane's IntentionService through the SDK's transport, like
``eco acl``; errors are printed by ``eco``'s one error handler. Names are
shown qualified (``default/web``, ``team-a/*``, ``*``) whatever form they
were written in, so a list says which namespace each side is in.
"""

from __future__ import annotations

import datetime
from typing import Any

import click
from ecosystem.v1 import intention_pb2

import sdk
from eco._output import emit, render_table
from eco._settings import Settings, call, data_options, pass_settings

__all__ = ["intention"]

_ALLOW = intention_pb2.INTENTION_ACTION_ALLOW


def _shown(name: str) -> str:
    """``name`` qualified: ``default/web`` for ``web``, ``*`` for ``*/*``."""
    try:
        return sdk.IntentionName.parse(name).qualified
    except ValueError:
        return name  # the control plane refuses it and says why


def _dict(item: intention_pb2.Intention) -> dict[str, Any]:
    return {
        "source": _shown(item.source),
        "destination": _shown(item.destination),
        "action": "allow" if item.action == _ALLOW else "deny",
        "description": item.description,
        "create_time": datetime.datetime.fromtimestamp(item.create_time, datetime.UTC).isoformat(
            timespec="seconds"
        ),
    }


@click.group()
def intention() -> None:
    """Intentions: which service may call which through the sidecars.

    \b
    SRC and DST are each
      SERVICE            that service in namespace default
      NAMESPACE/SERVICE  that service in that namespace
      NAMESPACE/*        every service of the namespace
      * (or */*)         every service of every namespace
    The most specific destination decides first, then the most specific
    source (one service > NAMESPACE/* > *); with no intention the default
    is allow, or deny when the control plane runs with --acl deny. Lists
    show names qualified: default/web, not web.
    \b
    Examples:
      eco intention create '*' orders --deny
      eco intention create team-a/web orders --allow --description "checkout"
      eco intention create 'team-b/*' team-b/orders --allow
      eco intention check team-a/web orders && echo allowed
      eco intention delete team-a/web orders
    """


@intention.command("create")
@click.argument("source", metavar="SRC")
@click.argument("destination", metavar="DST")
@click.option("--allow", "action", flag_value="allow", help="SRC may call DST.")
@click.option("--deny", "action", flag_value="deny", help="SRC may not call DST.")
@click.option("--description", default="", help="Why (shown by list).")
@data_options
@pass_settings
def create(
    settings: Settings, source: str, destination: str, action: str | None, description: str
) -> None:
    """Create the intention SRC -> DST (replacing the one there is for that pair).

    Sidecars apply it within a second, to new connections and to those
    already open.
    """
    if action is None:
        raise click.UsageError("say --allow or --deny")
    item = intention_pb2.Intention(
        source=source,
        destination=destination,
        action=_ALLOW if action == "allow" else intention_pb2.INTENTION_ACTION_DENY,
        description=description,
    )
    response = call(
        settings, "CreateIntention", intention_pb2.CreateIntentionRequest(intention=item)
    )
    created = _dict(response.intention)
    emit(
        created,
        settings.output,
        lambda: f"created intention {created['source']} -> {created['destination']}: {action}",
    )


@intention.command("list")
@data_options
@pass_settings
def list_(settings: Settings) -> None:
    """List every intention, most specific first, and the default."""
    response = call(settings, "ListIntentions", intention_pb2.ListIntentionsRequest())
    items = [_dict(i) for i in response.intentions]
    default = "allow" if response.default_allow else "deny"

    def table() -> str:
        lines = []
        if items:
            lines.append(
                render_table(
                    ("SOURCE", "DESTINATION", "ACTION", "DESCRIPTION", "CREATED"),
                    [
                        (
                            i["source"],
                            i["destination"],
                            i["action"],
                            i["description"],
                            i["create_time"],
                        )
                        for i in items
                    ],
                )
            )
        else:
            lines.append("no intentions")
        lines.append(f"default (no intention matches): {default}")
        return "\n".join(lines)

    emit({"intentions": items, "default": default}, settings.output, table)


@intention.command("delete")
@click.argument("source", metavar="SRC")
@click.argument("destination", metavar="DST")
@data_options
@pass_settings
def delete(settings: Settings, source: str, destination: str) -> None:
    """Delete the intention SRC -> DST (exit 1, "not found", when there is none)."""
    request = intention_pb2.DeleteIntentionRequest(source=source, destination=destination)
    call(settings, "DeleteIntention", request)
    deleted = {"source": _shown(source), "destination": _shown(destination)}
    emit(
        {"deleted": deleted},
        settings.output,
        lambda: f"deleted intention {deleted['source']} -> {deleted['destination']}",
    )


@intention.command("check")
@click.argument("source", metavar="SRC")
@click.argument("destination", metavar="DST")
@data_options
@pass_settings
def check(settings: Settings, source: str, destination: str) -> None:
    """Whether SRC may call DST now: exit 0 allowed, 1 denied.

    Prints which intention decided, or that the default did.
    """
    request = intention_pb2.CheckIntentionRequest(source=source, destination=destination)
    response = call(settings, "CheckIntention", request)
    data: dict[str, Any] = {
        "allowed": response.allowed,
        "reason": response.reason,
        "matched": _dict(response.matched) if response.HasField("matched") else None,
    }
    verdict = "allowed" if response.allowed else "denied"
    pair = f"{_shown(source)} -> {_shown(destination)}"
    emit(data, settings.output, lambda: f"{pair}: {verdict} ({response.reason})")
    if not response.allowed:
        raise click.exceptions.Exit(1)

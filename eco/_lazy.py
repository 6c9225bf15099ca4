"""A click group whose subcommands are imported when they are run.

``eco`` has commands for every part of the platform; importing them all
(gRPC, protobuf, the SDK, the sync engine) cost every invocation ~0.4 s,
and most commands need a fraction of it: ``eco sync run`` between two
object stores needs neither gRPC nor the SDK. A :class:`LazyGroup` names
each subcommand's module and attribute; ``--help`` on the group imports
them all (it lists their short help), running one imports that one.

A module that needs what a plain ``pip install ecosystem`` lacks (the
``server`` extra: pydantic, aiohttp…) does not break ``eco --help``: its
command is listed and, when run, says what to install (exit 1).
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

import click

__all__ = ["LazyGroup"]


class LazyGroup(click.Group):
    """``lazy``: subcommand name → ``"package.module:attribute"``."""

    def __init__(self, *args: Any, lazy: Mapping[str, str] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy = dict(lazy or {})

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.lazy and cmd_name not in self.commands:
            module, _, attribute = self.lazy[cmd_name].partition(":")
            try:
                command = getattr(importlib.import_module(module), attribute)
            except ModuleNotFoundError as err:
                command = _needs_server(cmd_name, err)
            if not isinstance(command, click.Command):
                raise TypeError(f"{self.lazy[cmd_name]} is not a click command")
            self.add_command(command, cmd_name)
        return super().get_command(ctx, cmd_name)


def _needs_server(name: str, err: ModuleNotFoundError) -> click.Command:
    """A stand-in for ``eco NAME`` whose module cannot be imported here."""
    from eco._extras import SERVER_MODULES, require_server

    missing = (err.name or "").split(".")[0]
    if not any(module.split(".")[0] == missing for module in SERVER_MODULES):
        raise err  # not an optional dependency: a real bug, shown as one

    @click.command(
        name,
        context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
        add_help_option=False,
        help=f"(needs the server extra: {missing} is not installed)",
    )
    def stand_in() -> None:
        require_server(name, what="is one of the operator tools")

    return stand_in

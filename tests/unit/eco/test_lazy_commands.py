"""``eco`` imports a command's module only when that command runs (the
process-level check, ``eco sync run`` without gRPC, is in
tests/integration/sync/test_cli_imports.py)."""

from __future__ import annotations

import click
from click.testing import CliRunner

import sdk
from eco import _settings
from eco.cli import _COMMANDS, cli


def test_the_global_options_names_are_the_sdks() -> None:
    assert _settings.DEFAULT_SERVER == sdk.DEFAULT_SERVER
    assert _settings.SERVER_ENV == sdk.SERVER_ENV
    assert _settings.CA_FILE_ENV == sdk.CA_FILE_ENV
    assert _settings.TOKEN_ENV == sdk.TOKEN_ENV


def test_every_command_named_loads_under_its_name() -> None:
    ctx = click.Context(cli)
    for name in _COMMANDS:
        command = cli.get_command(ctx, name)
        assert isinstance(command, click.Command) and command.name == name, name
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0
    assert all(f"  {name} " in result.output for name in _COMMANDS)

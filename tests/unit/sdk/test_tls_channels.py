"""Which channels a client makes: TLS with a CA file (given, or ECO_CA_FILE), else plaintext."""

from __future__ import annotations

from pathlib import Path

import grpc.aio
import pytest

import sdk
from sdk._transport import client_channels


def test_no_ca_file_means_plaintext(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(sdk.CA_FILE_ENV, raising=False)
    assert client_channels(None, None) is None


def test_the_environment_names_the_ca_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(sdk.CA_FILE_ENV, "/etc/eco/ca.pem")
    assert repr(client_channels(None, None)) == "tls_channel_factory('/etc/eco/ca.pem')"
    # An empty ca_file is plaintext on purpose; the environment is not read then.
    assert client_channels("", None) is None
    # A caller that does not want the environment (the agent session) does not get it.
    assert client_channels(None, None, environment=False) is None


def test_a_given_ca_file_wins_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(sdk.CA_FILE_ENV, "/etc/eco/ca.pem")
    assert repr(client_channels(Path("mine.pem"), None)) == "tls_channel_factory('mine.pem')"


def test_ca_file_and_channel_factory_do_not_go_together() -> None:
    with pytest.raises(ValueError, match="not both"):
        client_channels("ca.pem", grpc.aio.insecure_channel)
    with pytest.raises(ValueError, match="not both"):
        sdk.AsyncClient(
            "127.0.0.1:7400", ca_file="ca.pem", channel_factory=grpc.aio.insecure_channel
        )


def test_an_unreadable_ca_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"CA file .*missing\.pem: No such file"):
        sdk.tls_channel_factory(tmp_path / "missing.pem")("127.0.0.1:7400")
    not_pem = tmp_path / "key.pem"
    not_pem.write_text("-----BEGIN PRIVATE KEY-----\n")
    with pytest.raises(ValueError, match="no PEM certificate in it"):
        sdk.tls_channel_factory(not_pem)("127.0.0.1:7400")

"""Secure by default off loopback: which listen addresses need TLS or ``insecure``."""

from __future__ import annotations

import pydantic
import pytest

from controlplane import ControlPlaneConfig
from controlplane.config import is_loopback


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.5.6.7", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("LOCALHOST", True),
        ("0.0.0.0", False),
        ("::", False),
        ("", False),
        ("10.0.0.5", False),
        ("cp.example.com", False),
    ],
)
def test_which_hosts_are_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


@pytest.mark.parametrize(
    "fields",
    [
        {},
        {"listen": "localhost:7400", "admin_listen": "[::1]:7401"},
        {"listen": "127.0.0.1:0", "admin_listen": None},
        {"listen": "0.0.0.0:7400", "insecure": True},
        {"listen": "0.0.0.0:7400", "tls_cert": "c.pem", "tls_key": "k.pem"},
        {"listen": "10.0.0.5:7400", "tls_ca": "ca.pem", "tls_ca_key": "ca-key.pem"},
        {"tls_cert": "c.pem", "tls_key": "k.pem", "tls_ca": "ca.pem"},
        {"tls_ca": "ca.pem", "tls_ca_key": "ca-key.pem", "tls_names": ("cp.example.com",)},
    ],
)
def test_accepted(fields: dict[str, object]) -> None:
    ControlPlaneConfig.model_validate(fields)


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ({"listen": "0.0.0.0:7400"}, "0.0.0.0:7400 is reachable from other hosts"),
        ({"admin_listen": "10.0.0.5:7401"}, "10.0.0.5:7401 is reachable from other hosts"),
        ({"listen": "[::]:7400"}, "--insecure to accept the risk"),
        ({"tls_cert": "c.pem"}, "--tls-cert and --tls-key go together"),
        ({"tls_ca_key": "ca-key.pem"}, "--tls-ca-key needs --tls-ca"),
        ({"tls_ca": "ca.pem"}, "--tls-ca needs --tls-ca-key"),
        (
            {"tls_cert": "c.pem", "tls_key": "k.pem", "tls_ca": "a", "tls_ca_key": "b"},
            "not both",
        ),
        ({"tls_cert": "c.pem", "tls_key": "k.pem", "tls_names": ("x",)}, "--tls-name needs"),
        ({"tls_cert": "c.pem", "tls_key": "k.pem", "tls_cert_ttl": 60}, "--tls-cert-ttl needs"),
    ],
)
def test_refused(fields: dict[str, object], problem: str) -> None:
    with pytest.raises(pydantic.ValidationError, match=problem):
        ControlPlaneConfig.model_validate(fields)


def test_the_refusal_names_every_way_out() -> None:
    with pytest.raises(pydantic.ValidationError) as raised:
        ControlPlaneConfig(listen="0.0.0.0:7400")
    message = str(raised.value)
    for way in ("--tls-cert/--tls-key", "--tls-ca/--tls-ca-key", "--insecure"):
        assert way in message

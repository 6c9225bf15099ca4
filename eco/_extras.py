"""What the server commands need beyond a plain ``pip install ecosystem``.

The distribution's base install is the SDK and the client side of ``eco``
(registry, node and bus commands). ``eco controlplane``, ``eco sidecar`` and
``eco dev`` run servers and ``eco ca`` makes certificates; what they need
comes with the ``server`` extra; without it they stop at once with one line
saying what to install, rather than with a traceback from deep inside an
import.
"""

from __future__ import annotations

import importlib.util
import sys

import click

__all__ = ["SERVER_INSTALL", "SERVER_MODULES", "missing_server_modules", "require_server"]

SERVER_INSTALL = "pip install 'ecosystem[server]'"

#: The ``server`` extra of pyproject.toml, as the modules it provides: import
#: name → distribution (a unit test keeps the two in step).
SERVER_MODULES: dict[str, str] = {
    "grpc_health": "grpcio-health-checking",
    "grpc_reflection": "grpcio-reflection",
    "grpc_status": "grpcio-status",
    "pydantic": "pydantic",
    "aiohttp": "aiohttp",
    "prometheus_client": "prometheus-client",
    "httptools": "httptools",
    "nats": "nats-py",
    "aio_pika": "aio-pika",
    "cryptography": "cryptography",
    "spiffe": "spiffe",
    "redis": "redis",
    "jwt": "pyjwt",
    "h2": "h2",
    "aiobotocore": "aiobotocore",
    "obstore": "obstore",
    "azure.storage.blob": "azure-storage-blob",
    "google.cloud.storage": "google-cloud-storage",
    "asyncssh": "asyncssh",
    "cronsim": "cronsim",
    "jsonschema": "jsonschema",
    "envoy.service.discovery.v3": "xds-protos",
}
if sys.platform != "win32":
    SERVER_MODULES["uvloop"] = "uvloop"


def missing_server_modules() -> list[str]:
    """The distributions of the ``server`` extra that cannot be imported here."""
    return [dist for module, dist in SERVER_MODULES.items() if not _importable(module)]


def _importable(module: str) -> bool:
    # find_spec("azure.storage.blob") imports "azure" first, and raises when
    # even that is missing rather than answering None.
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def require_server(command: str, *, what: str = "runs a server") -> None:
    """Exits (status 1) with what to install when ``eco COMMAND`` cannot run here.

    ``what`` says why the command needs the extra (``eco ca`` makes certificates).
    """
    missing = missing_server_modules()
    if missing:
        raise click.ClickException(
            f"'eco {command}' {what} and needs the server dependencies, which are "
            f"not installed (missing: {', '.join(missing)}). Install them with: {SERVER_INSTALL}"
        )

"""TLS for the sidecar's own listeners off loopback (local API, admin, HTTP bridges).

They present the certificate the configuration names (``tls.cert_file``,
``tls.key_file``): PEM files, read at start. The admin port and the bridges
accept TLS 1.2 and later; the local API (gRPC) negotiates TLS 1.3 whenever
the client can. Listeners on loopback stay plaintext.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass

import grpc

from sidecar.config import ListenerTlsConfig
from sidecar.errors import StartupError

__all__ = ["ListenerTls"]


@dataclass(frozen=True)
class ListenerTls:
    """A certificate chain and its key, checked to fit together at start."""

    cert_pem: bytes
    key_pem: bytes
    context: ssl.SSLContext

    @classmethod
    def load(cls, config: ListenerTlsConfig) -> ListenerTls:
        """Reads and checks the files; StartupError saying which one is wrong."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            cert_pem = config.cert_file.read_bytes()
            key_pem = config.key_file.read_bytes()
            context.load_cert_chain(config.cert_file, config.key_file)
        except OSError as exc:
            raise StartupError(f"tls: cannot read {exc.filename}: {exc.strerror}") from None
        except ssl.SSLError as exc:
            raise StartupError(
                f"tls: {config.cert_file} and {config.key_file} are not a PEM certificate "
                f"chain and its private key ({exc.reason or exc})"
            ) from None
        return cls(cert_pem, key_pem, context)

    def grpc_credentials(self) -> grpc.ServerCredentials:
        return grpc.ssl_server_credentials([(self.key_pem, self.cert_pem)])

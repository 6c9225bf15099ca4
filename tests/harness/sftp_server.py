"""An SFTP server for the sync tests, run as a subprocess by tests/harness/storage.py.

asyncssh's own server (the same library the connector uses as a client, and
already installed) on 127.0.0.1 (port 0 unless ``--port``), with a chroot at ``--root``:
public-key authentication against ``--authorized-keys`` for any user name,
and ``--password`` when given. Paths under a directory named ``eco-denied…``
are refused as permission denied. It writes the port it got to ``--port-file``
(whole, by rename) once it listens, and runs until SIGTERM or its parent dies.

Run it as a script: ``python tests/harness/sftp_server.py --root … --host-key …
--authorized-keys … --port-file …``.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import os
import signal
import warnings

# asyncssh still imports the DSA classes cryptography deprecates; the log is for errors.
warnings.filterwarnings("ignore", category=DeprecationWarning)
warnings.filterwarnings("ignore", message=".*DSA.*")

import asyncssh  # noqa: E402


class _Server(asyncssh.SSHServer):
    def __init__(self, password: str | None) -> None:
        self._password = password

    def begin_auth(self, username: str) -> bool:
        return True  # authentication is required for every user

    def password_auth_supported(self) -> bool:
        return self._password is not None

    def validate_password(self, username: str, password: str) -> bool:
        return self._password is not None and password == self._password


class _SftpServer(asyncssh.SFTPServer):
    """asyncssh's server, but a path with a component starting with
    ``eco-denied`` is refused with EACCES (permission denied), as a directory
    the server's user may not enter would be (the test server may run as
    root, whom file modes do not stop)."""

    def map_path(self, path: bytes) -> bytes:
        local = super().map_path(path)
        if any(part.startswith(b"eco-denied") for part in local.split(b"/")):
            raise PermissionError(errno.EACCES, "Permission denied", local.decode(errors="replace"))
        return local


async def _serve(args: argparse.Namespace) -> None:
    root = args.root  # made absolute by main()

    def sftp_factory(chan: asyncssh.SSHServerChannel[bytes]) -> asyncssh.SFTPServer:
        return _SftpServer(chan, chroot=root.encode())

    server = await asyncssh.listen(
        "127.0.0.1",
        args.port,
        server_factory=lambda: _Server(args.password),
        server_host_keys=[args.host_key],
        authorized_client_keys=args.authorized_keys,
        sftp_factory=sftp_factory,
        allow_scp=False,
    )
    port = server.sockets[0].getsockname()[1]
    _write_port(args.port_file, port)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    await stop.wait()
    server.close()
    await server.wait_closed()


def _write_port(port_file: str, port: int) -> None:
    tmp = port_file + ".tmp"
    with open(tmp, "w") as f:
        f.write(str(port))
    os.replace(tmp, port_file)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--root", required=True)
    parser.add_argument("--host-key", required=True)
    parser.add_argument("--authorized-keys", required=True)
    parser.add_argument("--port-file", required=True)
    parser.add_argument("--password")
    parser.add_argument("--port", type=int, default=0, help="0: any free port")
    args = parser.parse_args()
    args.root = os.path.realpath(args.root)
    asyncio.run(_serve(args))


if __name__ == "__main__":
    main()

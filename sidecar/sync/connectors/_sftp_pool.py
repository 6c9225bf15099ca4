"""The SFTP connector's sessions: a few SSH connections, a few SFTP channels on
each, handed out least-busy first.

One SFTP channel already carries many requests at once, but its flow-control
window and the server's one process per channel (OpenSSH's sftp-server)
bound what it moves; several channels, and for a far server several TCP
connections, let the engine's concurrent transfers run side by side. Sessions
are shared, not exclusive: ``session()`` counts who uses each and picks the
least used. A connection that fails (closed by the server, reset, timed out)
is dropped with its channels, and the next ``session()`` makes it again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import warnings
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

with warnings.catch_warnings():
    # asyncssh imports the DSA classes cryptography deprecates; a user of
    # `eco sync` has nothing to do about that warning.
    warnings.filterwarnings("ignore", message=".*DSA.*")
    import asyncssh

from sidecar.sync.connectors._base import StoreAuthError
from sidecar.sync.connectors._paths import positive_int_setting

__all__ = ["SftpPool", "SftpSettings"]

log = logging.getLogger(__name__)

_DROP_ON = (
    asyncssh.DisconnectError,
    asyncssh.ChannelOpenError,
    asyncssh.SFTPConnectionLost,
    asyncssh.SFTPNoConnection,
    OSError,
    TimeoutError,
)


@dataclass(frozen=True, slots=True)
class SftpSettings:
    """Where and how to connect; None leaves a value to asyncssh's defaults
    (``~/.ssh/config``, the user's keys and agent, ``~/.ssh/known_hosts``)."""

    url: str
    host: str
    port: int | None = None
    user: str | None = None
    key_file: str | None = None
    passphrase: str | None = None
    known_hosts: str | None = None  # a path; "none" turns host key checking off
    password: str | None = None
    connections: int = 1
    channels: int = 4
    timeout: float = 30.0

    @classmethod
    def from_settings(
        cls, settings: Mapping[str, str], *, user: str | None, host: str, port: int | None
    ) -> SftpSettings:
        """From a profile's settings; the URL's user and port win over theirs."""
        if port is None and settings.get("port"):
            port = positive_int_setting(settings, "port", 22)
        return cls(
            url=settings.get("url", ""),
            host=host,
            port=port,
            user=user or settings.get("user") or None,
            key_file=settings.get("key_file") or None,
            passphrase=settings.get("passphrase") or None,
            known_hosts=settings.get("known_hosts") or None,
            password=settings.get("password") or None,
            connections=positive_int_setting(settings, "connections", 1),
            channels=positive_int_setting(settings, "channels", 4),
            timeout=float(positive_int_setting(settings, "timeout", 30)),
        )

    @property
    def where(self) -> str:
        user = f"{self.user}@" if self.user else ""
        port = f":{self.port}" if self.port else ""
        return f"{user}{self.host}{port}"

    @property
    def known_hosts_name(self) -> str:
        return self.known_hosts or "~/.ssh/known_hosts"


@dataclass(slots=True, eq=False)
class _Slot:
    conn: asyncssh.SSHClientConnection
    sftp: asyncssh.SFTPClient
    busy: int = 0


class SftpPool:
    """Connects on the first ``session()``; ``close()`` is idempotent and final."""

    def __init__(self, config: SftpSettings) -> None:
        self.config = config
        self._slots: list[_Slot] = []
        self._conns: list[asyncssh.SSHClientConnection] = []
        self._lock = asyncio.Lock()
        self._closed = False
        self._warned_insecure = False

    @contextlib.asynccontextmanager
    async def session(self) -> AsyncIterator[asyncssh.SFTPClient]:
        """The least busy SFTP session, connecting what is missing first."""
        if self._closed:
            raise RuntimeError(f"the SFTP connector for {self.config.where} is closed")
        self._prune()
        if len(self._conns) < self.config.connections:
            async with self._lock:
                while len(self._conns) < self.config.connections:
                    await self._connect()
        slot = min(self._slots, key=lambda s: s.busy)
        slot.busy += 1
        try:
            yield slot.sftp
        except _DROP_ON:
            await self._drop(slot.conn)
            raise
        finally:
            slot.busy -= 1

    async def close(self) -> None:
        self._closed = True
        conns, self._conns, self._slots = self._conns, [], []
        for conn in conns:
            conn.close()
        for conn in conns:
            with contextlib.suppress(Exception):
                await conn.wait_closed()

    async def drop(self) -> None:
        """Closes every connection; the next ``session()`` connects again."""
        for conn in list(self._conns):
            await self._drop(conn)

    async def _drop(self, conn: asyncssh.SSHClientConnection) -> None:
        if conn not in self._conns:
            return  # dropped already by another failed operation
        self._conns.remove(conn)
        self._slots = [s for s in self._slots if s.conn is not conn]
        log.info("sync sftp: dropping a connection to %s", self.config.where)
        conn.close()
        with contextlib.suppress(Exception):
            await conn.wait_closed()

    def _prune(self) -> None:
        """Forgets connections the server has closed (idle timeouts, restarts)."""
        closed = [c for c in self._conns if c.is_closed()]
        if closed:
            self._conns = [c for c in self._conns if c not in closed]
            self._slots = [s for s in self._slots if s.conn not in closed]

    async def _connect(self) -> None:
        conn = await asyncssh.connect(self.config.host, **self._connect_options())
        try:
            sessions = await asyncio.gather(
                *(
                    conn.start_sftp_client(path_errors="surrogateescape")
                    for _ in range(self.config.channels)
                )
            )
        except BaseException:
            conn.close()
            raise
        self._conns.append(conn)
        self._slots.extend(_Slot(conn, s) for s in sessions)
        log.debug("sync sftp: connected to %s with %d channels", self.config.where, len(sessions))

    def _connect_options(self) -> dict[str, Any]:
        c = self.config
        options: dict[str, Any] = {
            "connect_timeout": c.timeout,
            "keepalive_interval": 30,
        }
        if c.port is not None:
            options["port"] = c.port
        if c.user is not None:
            options["username"] = c.user
        if c.password is not None:
            options["password"] = c.password
        if c.key_file is not None:
            try:
                key = asyncssh.read_private_key(c.key_file, c.passphrase)
            except (OSError, asyncssh.KeyImportError) as exc:
                raise StoreAuthError(
                    f"cannot read the SSH key {c.key_file}: {exc}", url=c.url
                ) from exc
            options["client_keys"] = [key]
        if c.known_hosts is not None:
            if c.known_hosts.lower() == "none":
                if not self._warned_insecure:
                    log.warning(
                        "sync sftp: host key checking is off for %s (known_hosts: none)",
                        c.where,
                    )
                    self._warned_insecure = True
                options["known_hosts"] = None
            else:
                try:
                    options["known_hosts"] = asyncssh.read_known_hosts(c.known_hosts)
                except (OSError, ValueError) as exc:
                    raise StoreAuthError(
                        f"cannot read known_hosts {c.known_hosts}: {exc}", url=c.url
                    ) from exc
        return options

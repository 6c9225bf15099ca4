"""What only the file and SFTP connectors do (the conformance suite in
test_connectors.py covers what every store does): how they treat what is not
a regular file, a destination that does not exist yet, SSH authentication and
host keys, a server that goes away and comes back, and the channel pool."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import warnings
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from sidecar.sync.connectors import (
    Connector,
    Entry,
    StoreAuthError,
    StoreNotFoundError,
    StoreUnavailableError,
    open_connector,
)
from tests.harness.ports import free_port
from tests.harness.storage import SftpServer, StoreTarget

MTIME = 1_700_000_000.0


async def put(c: Connector, path: str, data: bytes) -> Entry:
    async def source(offset: int) -> AsyncIterator[bytes]:
        yield data[offset:]

    return await c.write(path, source, len(data), mtime=MTIME)


async def paths(c: Connector) -> set[str]:
    return {e.path async for e in c.list()}


def new_key(path: Path) -> str:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*DSA.*")
        import asyncssh

    asyncssh.generate_private_key("ssh-ed25519").write_private_key(str(path))
    return str(path)


# -- the registry ---------------------------------------------------------------


def test_a_store_sdk_is_imported_only_for_its_scheme() -> None:
    code = (
        "import sys\n"
        "from sidecar.sync.connectors import open_connector\n"
        "open_connector('file:///tmp')\n"
        "heavy = [m for m in ('asyncssh', 'aiobotocore', 'google.cloud.storage', "
        "'azure.storage.blob') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# -- file -------------------------------------------------------------------------


async def test_file_lists_regular_files_and_directories_only(file_target: StoreTarget) -> None:
    root = Path(file_target.url.removeprefix("file://"))
    (root / "real.txt").write_text("x")
    (root / "link.txt").symlink_to(root / "real.txt")
    (root / "dangling").symlink_to(root / "nowhere")
    os.mkfifo(root / "pipe")
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(root / "sock"))
        async with open_connector(file_target.url) as c:
            assert await paths(c) == {"real.txt"}
            assert await c.stat("link.txt") is None


async def test_file_a_write_never_creates_a_missing_root(tmp_path: Path) -> None:
    root = tmp_path / "not-yet"
    async with open_connector(root.as_uri()) as c:
        with pytest.raises(StoreNotFoundError):
            await put(c, "a/b.txt", b"x")
        assert not root.exists()
        with pytest.raises(StoreNotFoundError):
            await c.stat("a/b.txt")
        # The engine can make a destination that does not exist yet.
        await c.make_dir("")
        await put(c, "a/b.txt", b"x")
        assert await paths(c) == {"a/b.txt"}


async def test_file_a_stale_partial_file_is_replaced(file_target: StoreTarget) -> None:
    root = Path(file_target.url.removeprefix("file://"))
    (root / ".eco-partial.f.txt").write_bytes(b"left by a killed run" * 100)
    async with open_connector(file_target.url) as c:
        assert await paths(c) == set()
        await put(c, "f.txt", b"fresh")
        assert (root / "f.txt").read_bytes() == b"fresh"
        assert sorted(os.listdir(root)) == ["f.txt"]


# -- SFTP -------------------------------------------------------------------------


@pytest.fixture
def own_sftp_server() -> Iterator[SftpServer]:
    """A server of this test's own, to crash and restart."""
    server = SftpServer().start()
    try:
        yield server
    finally:
        server.stop()


async def test_sftp_password_authentication(sftp_server: SftpServer) -> None:
    target = sftp_server.target()
    settings = {"password": SftpServer.PASSWORD, "known_hosts": str(sftp_server.known_hosts)}
    # No key file: only the user's own ~/.ssh keys are offered, which this server
    # does not know; the password is what gets us in.
    async with open_connector(target.url, {**settings, "key_file": ""}) as c:
        await put(c, "p.txt", b"by password")
        assert await paths(c) == {"p.txt"}


async def test_sftp_a_refused_key_is_an_auth_error(sftp_server: SftpServer, tmp_path: Path) -> None:
    target = sftp_server.target()
    settings = {**target.settings, "key_file": new_key(tmp_path / "stranger")}
    async with open_connector(target.url, settings) as c:
        with pytest.raises(StoreAuthError, match="authentication refused"):
            await paths(c)


async def test_sftp_an_unknown_host_key_is_an_auth_error(
    sftp_server: SftpServer, tmp_path: Path
) -> None:
    target = sftp_server.target()
    # The server's address, with another key than the server's: a changed host
    # key, as after a reinstall or with a machine in the middle.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*DSA.*")
        import asyncssh
    impostor = asyncssh.generate_private_key("ssh-ed25519").export_public_key("openssh")
    other = tmp_path / "known_hosts"
    other.write_text(f"[127.0.0.1]:{sftp_server.port} {impostor.decode().strip()}\n")
    async with open_connector(target.url, {**target.settings, "known_hosts": str(other)}) as c:
        with pytest.raises(StoreAuthError, match="known_hosts"):
            await paths(c)
    async with open_connector(target.url, {**target.settings, "known_hosts": "none"}) as c:
        assert await paths(c) == set()  # checking turned off (insecure, and says so)


async def test_sftp_a_missing_key_file_is_an_auth_error(sftp_server: SftpServer) -> None:
    target = sftp_server.target()
    async with open_connector(target.url, {**target.settings, "key_file": "/no/such/key"}) as c:
        with pytest.raises(StoreAuthError, match="/no/such/key"):
            await paths(c)


async def test_sftp_settings_from_the_environment(
    sftp_server: SftpServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = sftp_server.target()
    for key, value in target.env.items():
        monkeypatch.setenv(key, value)
    async with open_connector(target.url) as c:
        await put(c, "env.txt", b"x")
        assert await paths(c) == {"env.txt"}


async def test_sftp_a_path_under_the_login_directory(sftp_server: SftpServer) -> None:
    target = sftp_server.target()
    # The test server's login directory is its root: /~/tNNNN is /tNNNN.
    home_url = target.url.replace(f":{sftp_server.port}/", f":{sftp_server.port}/~/")
    async with open_connector(target.url, target.settings) as c:
        await put(c, "h.txt", b"x")
    async with open_connector(home_url, target.settings) as c:
        assert await paths(c) == {"h.txt"}


async def test_sftp_nothing_listening_is_unavailable(sftp_server: SftpServer) -> None:
    target = sftp_server.target()
    url = target.url.replace(f":{sftp_server.port}/", f":{free_port()}/")
    async with open_connector(url, target.settings) as c:
        with pytest.raises(StoreUnavailableError):
            await paths(c)


async def test_sftp_reconnects_after_the_server_comes_back(
    own_sftp_server: SftpServer,
) -> None:
    target = own_sftp_server.target()
    async with open_connector(target.url, target.settings) as c:
        await put(c, "before.txt", b"x")
        own_sftp_server.halt()
        with pytest.raises(StoreUnavailableError):
            await put(c, "during.txt", b"x")
        own_sftp_server.resume()
        await put(c, "after.txt", b"x")
        assert await paths(c) == {"before.txt", "after.txt"}


async def test_sftp_concurrent_transfers_over_the_pool(sftp_server: SftpServer) -> None:
    target = sftp_server.target()
    settings = {**target.settings, "connections": "2", "channels": "3"}
    blobs = {f"c/{i:02d}.bin": os.urandom(256 * 1024 + i) for i in range(24)}
    async with open_connector(target.url, settings) as c:
        await asyncio.gather(*(put(c, path, data) for path, data in blobs.items()))
        assert await paths(c) == set(blobs)

        async def read(path: str) -> bytes:
            return b"".join([chunk async for chunk in c.read(path)])

        contents = await asyncio.gather(*(read(path) for path in blobs))
        assert dict(zip(blobs, contents, strict=True)) == blobs


# -- both -------------------------------------------------------------------------


@pytest.mark.parametrize("store", ["file_target", "sftp_target"])
async def test_a_listing_of_thousands(store: str, request: pytest.FixtureRequest) -> None:
    """2,500 entries in three directories, listed once each (the conformance
    suite lists fewer, on every store)."""
    target: StoreTarget = request.getfixturevalue(store)
    count = 2500
    async with open_connector(target.url, target.settings) as c:
        limit = asyncio.Semaphore(32)

        async def one(i: int) -> None:
            async with limit:
                await put(c, f"many/{i % 3}/f{i:05d}", b"%d" % i)

        await asyncio.gather(*(one(i) for i in range(count)))
        seen: list[str] = [entry.path async for entry in c.list()]
        assert len(seen) == count
        assert set(seen) == {f"many/{i % 3}/f{i:05d}" for i in range(count)}


@pytest.mark.parametrize("store", ["file_target", "sftp_target"])
async def test_names_of_255_bytes(store: str, request: pytest.FixtureRequest) -> None:
    """The longest component a filesystem allows: the partial file it is written
    under cannot take the prefix, and is named by its hash instead."""
    target: StoreTarget = request.getfixturevalue(store)
    names = ["n" * 255, "ü" * 127 + "x", "dir-" + "d" * 251 + "/" + "f" * 255]
    async with open_connector(target.url, {**target.settings, "part_size": "1024"}) as c:
        for name in names:
            entry = await put(c, name, name.encode() * 10)
            assert entry.size == len(name.encode()) * 10
        assert await paths(c) == set(names)
        for name in names:
            assert b"".join([b async for b in c.read(name)]) == name.encode() * 10
            await c.delete(name)
        assert await paths(c) == set()


@contextlib.contextmanager
def unwritable(directory: Path) -> Iterator[None]:
    """``directory`` refuses new entries even to root: mode 0500 for a user,
    the immutable attribute (chattr +i) for root, whom modes do not stop."""
    if os.geteuid() != 0:
        directory.chmod(0o500)
        try:
            yield
        finally:
            directory.chmod(0o700)
        return
    done = subprocess.run(["chattr", "+i", str(directory)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.fail(
            f"cannot make {directory} immutable as root (chattr +i: {done.stderr.strip()}); "
            "run the suite as an unprivileged user or with CAP_LINUX_IMMUTABLE",
            pytrace=False,
        )
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(directory)], check=True)


async def test_file_permission_denied_is_an_auth_error(file_target: StoreTarget) -> None:
    root = Path(file_target.url.removeprefix("file://"))
    async with open_connector(file_target.url) as c:
        await c.make_dir("locked")
        with unwritable(root / "locked"):
            with pytest.raises(StoreAuthError, match="ermission denied"):
                await put(c, "locked/file.txt", b"x")
            assert await paths(c) == {"locked"}


async def test_sftp_permission_denied_is_an_auth_error(sftp_target: StoreTarget) -> None:
    # The test server refuses every path under an "eco-denied…" directory with
    # EACCES, as OpenSSH's sftp-server answers EACCES and EPERM.
    async with open_connector(sftp_target.url, sftp_target.settings) as c:
        await put(c, "open.txt", b"x")
        with pytest.raises(StoreAuthError, match="ermission denied"):
            await put(c, "eco-denied/file.txt", b"x")
        with pytest.raises(StoreAuthError, match="ermission denied"):
            await c.stat("eco-denied/file.txt")


def local_root(request: pytest.FixtureRequest, target: StoreTarget) -> Path:
    """Where a file or SFTP target's root is on this machine."""
    if target.name == "file":
        return Path(target.url.removeprefix("file://"))
    server: SftpServer = request.getfixturevalue("sftp_server")
    return server.root / target.url.rsplit("/", 1)[1]


@pytest.mark.parametrize("store", ["file_target", "sftp_target"])
async def test_deleting_a_path_drops_its_interrupted_write(
    store: str, request: pytest.FixtureRequest
) -> None:
    """A partial file waits for its write to resume; deleting the path gives
    that write up: the partial file goes, and the directories it kept."""
    target: StoreTarget = request.getfixturevalue(store)
    root = local_root(request, target)

    async def broken(offset: int) -> AsyncIterator[bytes]:
        yield b"x" * 4096
        raise ConnectionResetError("the source went away")

    async def checkpoint(token: object) -> None:
        return None  # the engine would keep it; this test gives the write up instead

    async with open_connector(target.url, {**target.settings, "part_size": "1024"}) as c:
        with pytest.raises(ConnectionResetError):
            await c.write("a/b/big.bin", broken, 10_000, mtime=MTIME, checkpoint=checkpoint)
        assert [p.name for p in (root / "a" / "b").iterdir()] == [".eco-partial.big.bin"]
        assert await paths(c) == set()
        await c.delete("a/b/big.bin")
        assert list(root.iterdir()) == []


@pytest.mark.parametrize("store", ["file_target", "sftp_target"])
async def test_a_listing_reads_each_directory_when_it_gets_there(
    store: str, request: pytest.FixtureRequest
) -> None:
    """Streamed, not collected first: a file added to a directory the listing
    has not reached yet is in it."""
    target: StoreTarget = request.getfixturevalue(store)
    root = local_root(request, target)
    async with open_connector(target.url, {**target.settings, "list_page_size": "1"}) as c:
        await put(c, "x/1.txt", b"1")
        await put(c, "y/1.txt", b"1")
        listing = c.list()
        first = await anext(listing)
        later = "y" if first.path.startswith("x/") else "x"
        (root / later / "2.txt").write_text("added while listing")
        rest = [entry.path async for entry in listing]
        assert {first.path, *rest} == {"x/1.txt", "y/1.txt", f"{later}/2.txt"}

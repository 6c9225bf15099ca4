"""The etcd backend beyond the conformance suite: reaching etcd, the key namespace,
compaction and leases shared with other clients, resuming after an etcd restart,
authentication and TLS. Each test gets its own etcd process. (Its URLs:
tests/unit/store/test_etcd.py.)"""

from __future__ import annotations

import asyncio
import logging
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from controlplane.store import (
    Compacted,
    Compare,
    EventType,
    LeaseNotFound,
    PutOp,
    StoreClosed,
    StoreError,
)
from controlplane.store.etcd import EtcdConfig, EtcdStore
from tests.harness.etcd import EtcdServer, EtcdTLS
from tests.unit.store.conftest import next_batch, next_events_batch, watching
from tests.util import assert_eventually

# -- reaching etcd ---------------------------------------------------------------------


async def test_unreachable_etcd_fails_start_quickly_and_clearly() -> None:
    store = EtcdStore(EtcdConfig(("127.0.0.1:1", "127.0.0.1:2"), connect_timeout=1.0))
    began = time.monotonic()
    with pytest.raises(StoreError, match="no etcd member answered within 1s") as info:
        await store.start()
    assert time.monotonic() - began < 5
    assert "127.0.0.1:1" in str(info.value) and "127.0.0.1:2" in str(info.value)
    with pytest.raises(RuntimeError):
        await store.start()  # failed for good, like a closed store
    await store.close()


async def test_a_silent_address_does_not_hang_start() -> None:
    # 192.0.2.0/24 is reserved for documentation: connections there go nowhere.
    store = EtcdStore(EtcdConfig(("192.0.2.1:2379",), connect_timeout=1.0))
    began = time.monotonic()
    with pytest.raises(StoreError):
        await store.start()
    assert time.monotonic() - began < 5
    await store.close()


# -- with a real etcd ------------------------------------------------------------------


@pytest.fixture
def etcd() -> Iterator[EtcdServer]:
    server = EtcdServer().start()
    yield server
    server.stop()


@pytest.fixture
async def stores(etcd: EtcdServer) -> AsyncIterator[list[EtcdStore]]:
    """Two stores on the same etcd under /ecosystem (two replicas), and one on the
    whole key space."""
    opened = [
        EtcdStore(f"etcd://{etcd.endpoint}/ecosystem"),
        EtcdStore(f"etcd://{etcd.endpoint}/ecosystem"),
        EtcdStore(f"etcd://{etcd.endpoint}"),
    ]
    for store in opened:
        await store.start()
    yield opened
    for store in opened:
        await store.close()


async def test_a_dead_member_in_the_list_is_skipped(etcd: EtcdServer) -> None:
    url = f"etcd://127.0.0.1:1,{etcd.endpoint}/eco?connect_timeout=3"
    async with EtcdStore(url) as store:
        assert await store.put("/a", b"1") == 2
        kv = await store.get("/a")
        assert kv is not None and kv.value == b"1"


async def test_keys_outside_the_prefix_are_invisible(stores: list[EtcdStore]) -> None:
    eco, _, root = stores
    await root.put("/other/a", b"")
    await root.put("/ecosystem2/a", b"")  # a sibling that shares the prefix's letters
    await root.put("/ecosystem", b"")  # the prefix itself, as a key
    async with watching(eco, "", progress_interval=60) as watch:
        await root.put("/ecosystem3/b", b"")
        rev = await eco.put("/mine", b"v")
        batch = await next_batch(watch)
    assert batch.revision == rev and [e.kv.key for e in batch.events] == ["/mine"]
    assert [kv.key for kv in (await eco.range("")).kvs] == ["/mine"]
    assert await eco.get("/other/a") is None
    assert [kv.key for kv in (await root.range("/ecosystem/")).kvs] == ["/ecosystem/mine"]
    assert await eco.delete("", prefix=True) == 1
    assert len((await root.range("")).kvs) == 4
    with pytest.raises(ValueError, match="start with '/'"):
        await eco.put("relative", b"")
    with pytest.raises(ValueError, match="start with '/'"):
        await eco.range("relative")


async def test_replicas_share_revisions_writes_and_watches(stores: list[EtcdStore]) -> None:
    a, b, _ = stores
    async with watching(b, "/svc/", progress_interval=0.1) as watch:
        rev = await a.put("/svc/x", b"1")
        batch = await next_events_batch(watch)
        assert batch.revision == rev
        assert b.revision >= rev  # learnt from the watch
        result = await b.txn(
            [Compare("/svc/x", "mod_revision", "==", rev)], [PutOp("/svc/x", b"2")]
        )
        assert result.succeeded
        assert (await next_events_batch(watch)).revision == result.revision
    kv = await a.get("/svc/x")
    assert kv is not None and kv.value == b"2" and kv.version == 2


async def test_compaction_by_another_client_is_reported_exactly(
    stores: list[EtcdStore],
) -> None:
    a, b, _ = stores
    for i in range(6):
        await a.put(f"/c/{i}", b"")
    await b.compact(5)  # a does not know
    assert a.compact_revision == 1
    with pytest.raises(Compacted) as info:
        await a.range("/c/", revision=3)
    assert info.value.compact_revision == 5
    assert a.compact_revision == 5
    with pytest.raises(Compacted) as info:
        await next_batch(a.watch("/c/", start_revision=2))
    assert info.value.compact_revision == 5
    at = await a.range("/c/", revision=5)
    assert len(at.kvs) == 4


async def test_value_compares_on_missing_keys_follow_the_protocol(
    stores: list[EtcdStore],
) -> None:
    # etcd fails every value compare on a missing key; the protocol compares b"".
    store, _, _ = stores
    await store.put("/present", b"m")
    cases = [
        (Compare("/absent", "value", "==", b""), True),
        (Compare("/absent", "value", "!=", b"x"), True),
        (Compare("/absent", "value", "<", b"x"), True),
        (Compare("/absent", "value", ">", b""), False),
        (Compare("/absent", "value", "==", b"x"), False),
        (Compare("/present", "value", "<", b"n"), True),
        (Compare("/present", "value", "==", b""), False),
    ]
    for compare, expected in cases:
        before = store.revision
        result = await store.txn([compare], [PutOp("/then", b"")], [PutOp("/else", b"")])
        assert result.succeeded is expected, compare
        assert result.revision == before + 1
        kv = await store.get("/then" if expected else "/else")
        assert kv is not None and kv.mod_revision == result.revision


async def test_leases_are_shared_and_expire_in_etcd(stores: list[EtcdStore]) -> None:
    a, b, _ = stores
    lease = await a.grant(1)
    assert (await b.lease_ttl(lease))[0] == 1
    await b.put("/l/k", b"", lease=lease)
    assert await a.get("/l/k") is not None  # a has now seen b's revision
    async with watching(a, "/l/") as watch:
        for _ in range(6):  # 1.2 s: kept alive from the other replica
            await asyncio.sleep(0.2)
            assert await b.keepalive(lease) == 1
        assert await a.get("/l/k") is not None
        batch = await next_events_batch(watch, timeout=5)
    assert [(e.type, e.kv.key) for e in batch.events] == [(EventType.DELETE, "/l/k")]
    with pytest.raises(LeaseNotFound):
        await a.keepalive(lease)


async def test_fractional_ttls_round_up_to_whole_seconds(stores: list[EtcdStore]) -> None:
    store, _, _ = stores
    lease = await store.grant(1.2)
    assert (await store.lease_ttl(lease))[0] == 2


async def test_watch_resumes_after_an_etcd_restart(etcd: EtcdServer) -> None:
    async with EtcdStore(f"etcd://{etcd.endpoint}/eco") as store:
        async with watching(store, "/r/", progress_interval=60) as watch:
            first = await store.put("/r/1", b"")
            assert (await next_batch(watch)).revision == first
            await asyncio.to_thread(etcd.restart)

            async def put_again() -> int:
                return await store.put("/r/2", b"")

            async def written() -> int:
                try:
                    return await put_again()
                except StoreError as exc:
                    raise AssertionError(str(exc)) from exc

            second = await assert_eventually(written, timeout=10)
            batch = await next_batch(watch, timeout=10)
        assert batch.revision == second == first + 1
        assert [e.kv.key for e in batch.events] == ["/r/2"]


async def test_close_ends_a_watch_that_is_reconnecting(
    etcd: EtcdServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="controlplane.store")
    store = EtcdStore(f"etcd://{etcd.endpoint}/eco")
    await store.start()
    watch = store.watch("/r/")
    await store.put("/r/1", b"")
    await next_batch(watch)
    etcd.stop()
    pending = asyncio.ensure_future(anext(watch))

    def retrying() -> None:
        assert "etcd watch reconnecting" in caplog.text

    await assert_eventually(retrying)
    await store.close()
    with pytest.raises(StoreClosed):
        await asyncio.wait_for(pending, 5)
    assert store.watch_count == 0


# -- authentication ----------------------------------------------------------------------


@pytest.fixture
def etcd_with_auth(etcd: EtcdServer) -> EtcdServer:
    """Users: root (root), eco (eco-pw) with read/write on /ecosystem/ only."""
    etcd.etcdctl("user", "add", "root:root")
    etcd.etcdctl("role", "add", "eco")
    etcd.etcdctl("role", "grant-permission", "eco", "readwrite", "/ecosystem/", "--prefix=true")
    etcd.etcdctl("user", "add", "eco:eco-pw")
    etcd.etcdctl("user", "grant-role", "eco", "eco")
    etcd.etcdctl("auth", "enable")
    return etcd


async def test_user_and_password(etcd_with_auth: EtcdServer) -> None:
    endpoint = etcd_with_auth.endpoint
    async with EtcdStore(f"etcd://eco:eco-pw@{endpoint}/ecosystem") as store:
        rev = await store.put("/a", b"1")
        async with watching(store, "/") as watch:
            await store.put("/b", b"2")
            assert (await next_batch(watch)).revision == rev + 1
        lease = await store.grant(5)
        assert await store.keepalive(lease) == 5
    assert "/ecosystem/a" in etcd_with_auth.etcdctl(
        "get", "--prefix", "/ecosystem/", "--keys-only", user="root:root"
    )


async def test_a_wrong_password_fails_start(etcd_with_auth: EtcdServer) -> None:
    store = EtcdStore(f"etcd://eco:nope@{etcd_with_auth.endpoint}/ecosystem")
    with pytest.raises(StoreError, match=r"user 'eco'.*(invalid|failed)"):
        await store.start()


async def test_without_credentials_start_fails_clearly(etcd_with_auth: EtcdServer) -> None:
    store = EtcdStore(f"etcd://{etcd_with_auth.endpoint}/ecosystem")
    with pytest.raises(StoreError, match=r"user name is empty|permission denied"):
        await store.start()


async def test_a_prefix_outside_the_grant_is_refused(etcd_with_auth: EtcdServer) -> None:
    store = EtcdStore(f"etcd://eco:eco-pw@{etcd_with_auth.endpoint}/elsewhere")
    with pytest.raises(StoreError, match="permission denied"):
        await store.start()


# -- TLS -----------------------------------------------------------------------------------


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=30)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA, a server certificate for 127.0.0.1 and a client certificate."""
    assert shutil.which("openssl"), (
        "openssl is needed to make test certificates: apt-get install -y openssl"
    )
    d = tmp_path_factory.mktemp("certs")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
             "-subj", "/CN=eco-test-ca", cwd=d)  # fmt: skip
    for name, ext in [
        ("server", "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n"),
        ("client", "extendedKeyUsage=clientAuth\n"),
    ]:
        (d / f"{name}.ext").write_text(ext)
        _openssl("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr",
                 "-subj", f"/CN={name}", cwd=d)  # fmt: skip
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                 "-CAcreateserial", "-out", f"{name}.pem", "-days", "2",
                 "-extfile", f"{name}.ext", cwd=d)  # fmt: skip
    return d


async def test_tls_with_a_client_certificate(certs: Path) -> None:
    tls = EtcdTLS(
        ca=certs / "ca.pem",
        cert=certs / "server.pem",
        key=certs / "server.key",
        client_ca=certs / "ca.pem",
        client=(certs / "client.pem", certs / "client.key"),
    )
    server = EtcdServer(tls=tls).start()
    try:
        files = f"ca={certs}/ca.pem&cert={certs}/client.pem&key={certs}/client.key"
        async with EtcdStore(f"etcd://{server.endpoint}/eco?{files}") as store:
            rev = await store.put("/a", b"")
            async with watching(store, "/") as watch:
                await store.put("/b", b"")
                assert (await next_batch(watch)).revision == rev + 1
        # Without the client certificate, the server refuses us.
        store = EtcdStore(f"etcd://{server.endpoint}/eco?ca={certs}/ca.pem&connect_timeout=1")
        with pytest.raises(StoreError):
            await store.start()
        # Plain text to a TLS port, and a CA that did not sign the server, fail too.
        for url in (
            f"etcd://{server.endpoint}/eco?connect_timeout=1",
            f"etcd://{server.endpoint}/eco?tls=true&connect_timeout=1",
        ):
            with pytest.raises(StoreError):
                await EtcdStore(url).start()
    finally:
        server.stop()

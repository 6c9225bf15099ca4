"""The etcd backend without an etcd: its URLs, and what it checks before it connects.
(With a real etcd: tests/integration/store.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from controlplane.store import StoreError, open_store
from controlplane.store.etcd import EtcdStore, parse_etcd_url

# -- URLs ------------------------------------------------------------------------------


def test_url_defaults_and_forms() -> None:
    config = parse_etcd_url("etcd://127.0.0.1")
    assert config.endpoints == ("127.0.0.1:2379",)
    assert (config.prefix, config.user, config.tls, config.timeout) == ("", "", False, 5.0)
    config = parse_etcd_url(
        "etcd://eco:p%40ss%3Aword@h1:2379,h2,[::1]:22379/ecosystem/?timeout=2.5&connect_timeout=1"
    )
    assert config.endpoints == ("h1:2379", "h2:2379", "[::1]:22379")
    assert config.prefix == "/ecosystem"
    assert (config.user, config.password) == ("eco", "p@ss:word")
    assert (config.timeout, config.connect_timeout) == (2.5, 1.0)
    config = parse_etcd_url("etcd://h/a/b?ca=/ca.pem&cert=/c.pem&key=/k.pem")
    assert config.prefix == "/a/b"
    assert config.tls and (config.ca_file, config.cert_file, config.key_file) == (
        "/ca.pem",
        "/c.pem",
        "/k.pem",
    )
    assert parse_etcd_url("etcd://h?tls=true").tls
    assert parse_etcd_url("etcd://h/").prefix == ""


def test_the_password_stays_out_of_repr_and_url() -> None:
    config = parse_etcd_url("etcd://eco:s3cret@h/p")
    assert "s3cret" not in repr(config)
    assert "s3cret" not in config.url()
    assert "s3cret" not in repr(EtcdStore(config))
    assert config.url() == "etcd://eco:***@h:2379/p"


@pytest.mark.parametrize(
    ("url", "needle"),
    [
        ("etcd://", "empty host"),
        ("etcd:///prefix", "empty host"),
        ("etcd://h1,,h2", "empty host"),
        ("etcd://h:0", "port"),
        ("etcd://h:99999", "port"),
        ("etcd://h:abc", "port"),
        ("etcd://::1:2379", "brackets"),
        ("etcd://[::1", "IPv6"),
        ("etcd://:pw@h", "user"),
        ("etcd://u:@h", "password"),
        ("etcd://h/a//b", "empty path segment"),
        ("etcd://h?bogus=1", "unknown option 'bogus'"),
        ("etcd://h?ca=a&ca=b", "twice"),
        ("etcd://h?ca=", "needs a value"),
        ("etcd://h?cert=c.pem", "cert and key"),
        ("etcd://h?tls=maybe", "tls must be"),
        ("etcd://h?tls=false&ca=a", "contradicts"),
        ("etcd://h?timeout=-1", "positive"),
        ("etcd://h?timeout=soon", "number of seconds"),
        ("etcd://h#frag", "fragment"),
    ],
)
def test_bad_urls_are_rejected_with_the_reason(url: str, needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        open_store(url)


async def test_open_store_builds_an_unstarted_store_without_io() -> None:
    store = open_store("etcd://127.0.0.1:1/eco")  # nothing listens there
    assert isinstance(store, EtcdStore)
    with pytest.raises(RuntimeError, match="not started"):
        await store.get("/a")
    await store.close()


def test_open_store_keeps_the_password_out_of_errors() -> None:
    with pytest.raises(ValueError) as info:
        open_store("etcd://eco:s3cret@h:0/p")
    assert "s3cret" not in str(info.value)


async def test_a_missing_tls_file_is_named(tmp_path: Path) -> None:
    store = EtcdStore(f"etcd://127.0.0.1:1/eco?ca={tmp_path}/nope.pem")
    with pytest.raises(StoreError, match=r"nope\.pem"):
        await store.start()

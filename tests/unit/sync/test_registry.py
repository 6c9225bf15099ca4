"""open_connector: which URL goes to which connector, what a bad URL says, and
that a store's SDK is imported only when its scheme is asked for."""

from __future__ import annotations

import pytest

import sidecar.sync.connectors as connectors
from sidecar.sync.connectors import SCHEMES, open_connector
from sidecar.sync.connectors._paths import partial_name, positive_int_setting, split_path
from sidecar.sync.connectors.file import FileConnector, parse_file_url
from sidecar.sync.connectors.sftp import SftpConnector, parse_sftp_url


def test_public_names_are_pinned() -> None:
    assert sorted(connectors.__all__) == sorted(
        [
            "CRC32C",
            "MD5",
            "SCHEMES",
            "SHA256",
            "Connector",
            "Entry",
            "IntegrityError",
            "ResumeToken",
            "Source",
            "SourceOpener",
            "StoreAuthError",
            "StoreNotFoundError",
            "StoreThrottledError",
            "StoreUnavailableError",
            "SyncStoreError",
            "open_connector",
        ]
    )


def test_schemes_name_their_modules() -> None:
    assert dict(SCHEMES) == {
        "file": ("file", "FileConnector"),
        "sftp": ("sftp", "SftpConnector"),
        "s3": ("s3", "S3Connector"),
        "gs": ("gcs", "GcsConnector"),
        "az": ("azure", "AzureConnector"),
    }


def test_file_and_sftp_urls_open_their_connectors() -> None:
    c = open_connector("file:///srv/data")
    assert isinstance(c, FileConnector) and c.url == "file:///srv/data"
    s = open_connector("sftp://backup@nas.example:2222/volume1/data", {"connections": "2"})
    assert isinstance(s, SftpConnector) and s.url == "sftp://backup@nas.example:2222/volume1/data"


@pytest.mark.parametrize(
    "url",
    [
        "",
        "/tmp/x",
        "relative/path",
        "ftp://host/x",
        "file://host/x",
        "file:relative",
        "file:///tmp/x?q=1",
        "sftp:///path",
        "sftp://host",
        "sftp://host:99999/x",
        "sftp://host:0/x",
        "sftp://host:port/x",
        "s3://",
        "s3:///prefix",
        "s3://user@bucket/x",
        "gs://bucket:443/x",
        "az://container/x#frag",
    ],
)
def test_a_bad_url_names_itself_and_the_accepted_forms(url: str) -> None:
    with pytest.raises(ValueError) as err:
        open_connector(url)
    message = str(err.value)
    assert repr(url) in message
    for form in (
        "file:///absolute/path",
        "sftp://",
        "s3://bucket",
        "gs://bucket",
        "az://container",
    ):
        assert form in message


def test_file_urls() -> None:
    assert parse_file_url("file:///srv/my%20data/") == "/srv/my data"
    assert parse_file_url("file://localhost/srv") == "/srv"
    assert parse_file_url("file:///") == "/"


def test_sftp_urls() -> None:
    assert parse_sftp_url("sftp://u@h:2222/a/b/") == ("u", "h", 2222, "/a/b")
    assert parse_sftp_url("sftp://h/") == (None, "h", None, "/")
    # /~/ is the login directory (relative paths on the server).
    assert parse_sftp_url("sftp://h/~/backups") == (None, "h", None, "backups")
    assert parse_sftp_url("sftp://h/~") == (None, "h", None, ".")
    assert parse_sftp_url("sftp://us%40er@h/x%20y") == ("us@er", "h", None, "/x y")


def test_paths_are_relative_and_plain() -> None:
    assert split_path("a/b c/ü") == ["a", "b c", "ü"]
    for bad in ("", "/abs", "a//b", "a/./b", "../up", "a/", "nul\x00"):
        with pytest.raises(ValueError):
            split_path(bad)


def test_a_partial_name_fits_in_a_component() -> None:
    assert partial_name("report.pdf") == ".eco-partial.report.pdf"
    long = "ü" * 127  # 254 bytes
    name = partial_name(long)
    assert len(name.encode()) <= 255 and name.startswith(".eco-partial.")
    assert partial_name(long) == name  # the same write finds the same partial file


def test_settings_are_positive_integers() -> None:
    assert positive_int_setting({}, "part_size", 7) == 7
    assert positive_int_setting({"part_size": "1024"}, "part_size", 7) == 1024
    for bad in ("abc", "0", "-1"):
        with pytest.raises(ValueError, match="part_size"):
            positive_int_setting({"part_size": bad}, "part_size", 7)
    with pytest.raises(ValueError, match="part_size"):
        FileConnector("file:///tmp", {"part_size": "lots"})

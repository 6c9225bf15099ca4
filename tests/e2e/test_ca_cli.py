"""``eco ca init`` and ``eco ca root``: the real console script, offline."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509

pytestmark = pytest.mark.e2e

ECO = str(Path(sys.executable).with_name("eco"))


def eco(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([ECO, *args], capture_output=True, text=True, timeout=30, check=False)


def test_init_writes_a_ca_and_root_prints_it(tmp_path: Path) -> None:
    directory = tmp_path / "ca"
    made = eco("ca", "init", "--dir", str(directory), "--trust-domain", "prod.example.com")
    assert made.returncode == 0, made.stderr
    assert f"root certificate: {directory / 'ca.pem'}" in made.stdout
    assert f"private key:      {directory / 'ca-key.pem'}" in made.stdout
    assert "trust domain prod.example.com" in made.stdout
    assert stat.S_IMODE(os.stat(directory / "ca-key.pem").st_mode) == 0o600

    root = eco("ca", "root", "--dir", str(directory))
    assert root.returncode == 0, root.stderr
    assert root.stdout == (directory / "ca.pem").read_text()
    cert = x509.load_pem_x509_certificate(root.stdout.encode())
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


def test_init_refuses_to_replace_a_ca_unless_forced(tmp_path: Path) -> None:
    assert eco("ca", "init", "--dir", str(tmp_path)).returncode == 0
    first = (tmp_path / "ca.pem").read_text()

    again = eco("ca", "init", "--dir", str(tmp_path))
    assert again.returncode == 1
    assert again.stderr.splitlines() == [
        f"eco: a CA already exists at {tmp_path / 'ca.pem'}; refusing to overwrite it "
        "(every certificate it signed would stop being trusted) (add --force to replace it)"
    ]
    assert (tmp_path / "ca.pem").read_text() == first

    forced = eco("-o", "json", "ca", "init", "--dir", str(tmp_path), "--force")
    assert forced.returncode == 0, forced.stderr
    data = json.loads(forced.stdout)
    assert data["trust_domain"] == "ecosystem.local"
    assert data["certificate"] == str(tmp_path / "ca.pem")
    assert data["key"] == str(tmp_path / "ca-key.pem")
    assert (tmp_path / "ca.pem").read_text() != first


def test_bad_input_is_one_line_and_an_exit_code(tmp_path: Path) -> None:
    bad_domain = eco("ca", "init", "--dir", str(tmp_path), "--trust-domain", "Not/Valid")
    assert bad_domain.returncode == 2
    assert len(bad_domain.stderr.splitlines()) == 1
    assert "invalid trust domain 'Not/Valid'" in bad_domain.stderr
    assert not (tmp_path / "ca.pem").exists()

    missing = eco("ca", "root", "--dir", str(tmp_path / "nowhere"))
    assert missing.returncode == 1
    assert missing.stdout == ""
    assert missing.stderr.splitlines() == [
        f"eco: cannot load the CA from {tmp_path / 'nowhere' / 'ca.pem'}: no such file "
        "(create a CA with 'eco ca init')"
    ]

    assert eco("ca", "init", "--dir", str(tmp_path / "a")).returncode == 0
    assert eco("ca", "init", "--dir", str(tmp_path / "b")).returncode == 0
    (tmp_path / "a" / "ca-key.pem").write_bytes((tmp_path / "b" / "ca-key.pem").read_bytes())
    mismatched = eco("ca", "root", "--dir", str(tmp_path / "a"))
    assert mismatched.returncode == 1
    assert mismatched.stderr.splitlines() == [
        f"eco: cannot load the CA from {tmp_path / 'a' / 'ca-key.pem'}: "
        "the key does not belong to the CA certificate"
    ]


def test_help_names_both_commands() -> None:
    shown = eco("ca", "--help")
    assert shown.returncode == 0
    assert "init" in shown.stdout and "root" in shown.stdout

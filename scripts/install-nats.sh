#!/usr/bin/env bash
# Installs nats-server (Debian's package, 2.9.x with JetStream), which the bus
# tests start on a free port (`make test` runs this first). Idempotent: when
# nats-server is already on PATH nothing is installed or downloaded. Debian or
# Ubuntu (apt-get) only; elsewhere it says what to install and exits 1.
set -euo pipefail
me=install-nats
. "$(dirname "$0")/_apt.sh"

if command -v nats-server >/dev/null 2>&1; then
  echo "nats-server present: $(nats-server --version 2>/dev/null || echo unknown version)"
  exit 0
fi

fail() {
  echo "$me: $*" >&2
  echo "$me: the NATS bus tests need nats-server (2.9 or newer, with JetStream) on PATH" >&2
  exit 1
}

apt_ready nats-server
apt_lists_for nats-server
apt_known nats-server || fail "no nats-server package for this distribution (Debian 12 or newer has one)"
apt_install nats-server || fail "apt-get install nats-server failed"

command -v nats-server >/dev/null 2>&1 || fail "nats-server is still not on PATH after installing"
echo "nats-server installed: $(nats-server --version 2>/dev/null || echo unknown version)"

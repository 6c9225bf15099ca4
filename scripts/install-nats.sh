#!/usr/bin/env bash
# Installs nats-server (Debian's package, 2.9.x with JetStream), which the bus
# tests start on a free port (`make test` runs this first). Idempotent: when
# nats-server is already on PATH nothing is installed or downloaded. Debian or
# Ubuntu (apt-get) only; elsewhere it says what to install and exits 1.
set -euo pipefail

export PATH="$PATH:/usr/sbin:/sbin"
export DEBIAN_FRONTEND=noninteractive

if command -v nats-server >/dev/null 2>&1; then
  echo "nats-server present: $(nats-server --version 2>/dev/null || echo unknown version)"
  exit 0
fi

fail() {
  echo "install-nats: $*" >&2
  echo "install-nats: the NATS bus tests need nats-server (2.9 or newer, with JetStream) on PATH" >&2
  exit 1
}

command -v apt-get >/dev/null 2>&1 \
  || fail "no apt-get here; install nats-server with this system's package manager"

sudo=()
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null 2>&1 || fail "not root and no sudo: run this script as root"
  sudo=(sudo)
fi

if ! apt-cache show nats-server >/dev/null 2>&1; then
  echo "install-nats: nats-server not in the package lists; running apt-get update"
  "${sudo[@]}" apt-get update -qq || fail "apt-get update failed"
  apt-cache show nats-server >/dev/null 2>&1 \
    || fail "no nats-server package for this distribution (Debian 12 or newer has one)"
fi

echo "install-nats: apt-get install nats-server"
"${sudo[@]}" apt-get install -y -qq --no-install-recommends nats-server \
  || fail "apt-get install nats-server failed"

command -v nats-server >/dev/null 2>&1 || fail "nats-server is still not on PATH after installing"
echo "nats-server installed: $(nats-server --version 2>/dev/null || echo unknown version)"

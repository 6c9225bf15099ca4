#!/usr/bin/env bash
# Installs RabbitMQ (Debian's rabbitmq-server package, 3.10.x, with its Erlang),
# which the AMQP bridge tests start as the current user on free ports
# (`make test` runs this first). Only the package is needed: the tests never
# use the system service, so a policy that keeps services from starting while
# packages install (policy-rc.d, containers) is fine. Idempotent: when the
# server's start script is already there nothing is installed or downloaded.
# Debian or Ubuntu (apt-get) only; elsewhere it says what to install and exits 1.
set -euo pipefail

export PATH="$PATH:/usr/sbin:/sbin"
export DEBIAN_FRONTEND=noninteractive

SCRIPT=/usr/lib/rabbitmq/bin/rabbitmq-server

version() {
  dpkg-query -W -f='${Version}' rabbitmq-server 2>/dev/null || echo "unknown version"
}

if [ -x "$SCRIPT" ] && command -v epmd >/dev/null 2>&1; then
  echo "rabbitmq-server present: $(version)"
  exit 0
fi

fail() {
  echo "install-rabbitmq: $*" >&2
  echo "install-rabbitmq: the AMQP bridge tests need RabbitMQ 3.10 or newer ($SCRIPT) and epmd" >&2
  exit 1
}

command -v apt-get >/dev/null 2>&1 \
  || fail "no apt-get here; install rabbitmq-server with this system's package manager"

sudo=()
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null 2>&1 || fail "not root and no sudo: run this script as root"
  sudo=(sudo)
fi

if ! apt-cache show rabbitmq-server >/dev/null 2>&1; then
  echo "install-rabbitmq: rabbitmq-server not in the package lists; running apt-get update"
  "${sudo[@]}" apt-get update -qq || fail "apt-get update failed"
  apt-cache show rabbitmq-server >/dev/null 2>&1 \
    || fail "no rabbitmq-server package for this distribution (Debian 12 has 3.10)"
fi

echo "install-rabbitmq: apt-get install rabbitmq-server"
# A postinst that cannot start the service (denied by policy-rc.d, no init) must not
# fail the install: the tests start their own node.
if ! "${sudo[@]}" apt-get install -y -qq --no-install-recommends rabbitmq-server; then
  [ -x "$SCRIPT" ] || fail "apt-get install rabbitmq-server failed"
  echo "install-rabbitmq: the package is unpacked but its service did not start; that is fine here"
fi

[ -x "$SCRIPT" ] || fail "$SCRIPT is still missing after installing"
command -v epmd >/dev/null 2>&1 || fail "epmd (from erlang-base) is not on PATH after installing"
echo "rabbitmq-server installed: $(version)"

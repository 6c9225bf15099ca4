#!/usr/bin/env bash
# Installs RabbitMQ (Debian's rabbitmq-server package, 3.10.x, with its Erlang),
# which the AMQP bridge tests start as the current user on free ports
# (`make test` runs this first). Only the package is needed: the tests never
# use the system service, so a policy that keeps services from starting while
# packages install (policy-rc.d, containers) is fine. Idempotent: when the
# server's start script is already there nothing is installed or downloaded.
# Debian or Ubuntu (apt-get) only; elsewhere it says what to install and exits 1.
set -euo pipefail
me=install-rabbitmq
. "$(dirname "$0")/_apt.sh"

SCRIPT=/usr/lib/rabbitmq/bin/rabbitmq-server

version() {
  dpkg-query -W -f='${Version}' rabbitmq-server 2>/dev/null || echo "unknown version"
}

if [ -x "$SCRIPT" ] && command -v epmd >/dev/null 2>&1; then
  echo "rabbitmq-server present: $(version)"
  exit 0
fi

fail() {
  echo "$me: $*" >&2
  echo "$me: the AMQP bridge tests need RabbitMQ 3.10 or newer ($SCRIPT) and epmd" >&2
  exit 1
}

apt_ready rabbitmq-server
apt_lists_for rabbitmq-server
apt_known rabbitmq-server \
  || fail "no rabbitmq-server package for this distribution (Debian 12 has 3.10)"

# A postinst that cannot start the service (denied by policy-rc.d, no init) must not
# fail the install: the tests start their own node.
if ! apt_install rabbitmq-server; then
  [ -x "$SCRIPT" ] || fail "apt-get install rabbitmq-server failed"
  echo "$me: the package is unpacked but its service did not start; that is fine here"
fi

[ -x "$SCRIPT" ] || fail "$SCRIPT is still missing after installing"
command -v epmd >/dev/null 2>&1 || fail "epmd (from erlang-base) is not on PATH after installing"
echo "rabbitmq-server installed: $(version)"

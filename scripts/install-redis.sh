#!/usr/bin/env bash
# Installs redis-server (Debian's package, 7.x), which the gateway's global
# rate limit tests start as the current user on a free port, without
# persistence (`make test` runs this first). Only the binary is needed: the
# tests never use the system service, so a policy that keeps services from
# starting while packages install (policy-rc.d, containers) is fine.
# Idempotent: when redis-server is already on PATH nothing is installed or
# downloaded. Debian or Ubuntu (apt-get) only; elsewhere it says what to
# install and exits 1.
set -euo pipefail
me=install-redis
. "$(dirname "$0")/_apt.sh"

version() {
  redis-server --version 2>/dev/null | head -n 1 || echo "unknown version"
}

if command -v redis-server >/dev/null 2>&1; then
  echo "redis-server present: $(version)"
  exit 0
fi

fail() {
  echo "$me: $*" >&2
  echo "$me: the gateway's global rate limit tests need redis-server (6.2 or newer) on PATH" >&2
  exit 1
}

apt_ready redis-server
apt_lists_for redis-server
apt_known redis-server || fail "no redis-server package for this distribution (Debian 12 has 7.0)"

# A postinst that cannot start the service (denied by policy-rc.d, no init) must not
# fail the install: the tests start their own server.
if ! apt_install redis-server; then
  command -v redis-server >/dev/null 2>&1 || fail "apt-get install redis-server failed"
  echo "$me: the package is unpacked but its service did not start; that is fine here"
fi

command -v redis-server >/dev/null 2>&1 || fail "redis-server is still not on PATH after installing"
echo "redis-server installed: $(version)"

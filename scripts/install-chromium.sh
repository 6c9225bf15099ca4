#!/usr/bin/env bash
# Installs chromium (Debian's package), the browser the web console's tests
# (tests/e2e/test_console.py) drive through Playwright. Playwright's own
# browser download is not used: the tests launch the system chromium by its
# path (ECO_CHROMIUM, or the first of chromium / chromium-browser on PATH).
# `make test` runs this first. Idempotent: when chromium is already on PATH
# nothing is installed or downloaded. Debian or Ubuntu (apt-get) only;
# elsewhere it says what to install and exits 1.
set -euo pipefail
me=install-chromium
. "$(dirname "$0")/_apt.sh"

found() {
  command -v chromium 2>/dev/null || command -v chromium-browser 2>/dev/null
}

version() {
  "$(found)" --version 2>/dev/null | head -n 1 || echo "unknown version"
}

if found >/dev/null; then
  echo "chromium present: $(version)"
  exit 0
fi

fail() {
  echo "$me: $*" >&2
  echo "$me: the web console's browser tests need chromium on PATH (or ECO_CHROMIUM=/path/to/chromium)" >&2
  exit 1
}

apt_ready chromium
apt_lists_for chromium
apt_known chromium || fail "no chromium package for this distribution (Debian 12 has one)"
apt_install chromium || fail "apt-get install chromium failed"

found >/dev/null || fail "chromium is still not on PATH after installing"
echo "chromium installed: $(version)"

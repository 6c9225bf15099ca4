#!/usr/bin/env bash
# Installs what the data-plane benchmark (`python -m benchmarks --only proxy`)
# runs beside the sidecar: wrk (load), haproxy (the peer proxy) and nginx (the
# backend). Idempotent: a tool already on the machine is left alone, and
# nothing is downloaded when all three are there. Debian/Ubuntu (apt-get)
# only; elsewhere it says what to install and exits 1.
set -euo pipefail
me=install-bench-tools
. "$(dirname "$0")/_apt.sh"

missing=()
for tool in wrk haproxy nginx; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "bench tools present: wrk, haproxy, nginx"
  exit 0
fi

fail() {
  echo "$me: $*" >&2
  echo "$me: the proxy benchmark needs wrk, haproxy and nginx on PATH" \
    "(missing: ${missing[*]})" >&2
  exit 1
}

apt_ready "${missing[@]}"

# The package of each missing tool; nginx-light is the smallest nginx where it exists.
packages() {
  local tool
  for tool in "${missing[@]}"; do
    if [ "$tool" = nginx ]; then
      if apt_known nginx-light; then echo nginx-light; else echo nginx; fi
    else
      echo "$tool"
    fi
  done
}

wanted=($(packages))
apt_lists_for "${wanted[@]}"
wanted=($(packages))
apt_install "${wanted[@]}" || fail "apt-get install ${wanted[*]} failed"

for tool in "${missing[@]}"; do
  command -v "$tool" >/dev/null 2>&1 || fail "$tool is still not on PATH after installing"
done
echo "bench tools installed: ${missing[*]}"

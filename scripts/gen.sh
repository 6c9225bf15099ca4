#!/usr/bin/env bash
# Regenerates the Python code for proto/ into gen/ (or, with --check, into a
# scratch folder, failing when it differs from what is committed).
set -euo pipefail
py="$1"; mode="$2"
cd "$(dirname "$0")/.."
out=gen
if [ "$mode" = "--check" ]; then
  out=$(mktemp -d); trap 'rm -rf "$out"' EXIT
else
  find gen -name '*_pb2*.py*' -delete
fi
# Every folder under proto/ is a Python package.
for dir in $(cd proto && find . -mindepth 1 -type d | sort); do
  mkdir -p "$out/$dir"
  touch "$out/$dir/__init__.py"
done
"$py" -m grpc_tools.protoc -Iproto \
  --python_out="$out" --pyi_out="$out" --grpc_python_out="$out" \
  $(find proto -name '*.proto' | sort)
if [ "$mode" = "--check" ]; then
  if ! diff -r -x __pycache__ -x py.typed gen "$out" >/dev/null; then
    echo "gen/ is stale: it differs from what proto/ generates. Run 'make gen' and commit the result." >&2
    diff -r -x __pycache__ -x py.typed gen "$out" | head -20 >&2
    exit 1
  fi
  echo "gen/ is up to date with proto/"
fi

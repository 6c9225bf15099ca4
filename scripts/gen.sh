#!/usr/bin/env bash
# Regenerates the Python code for proto/ into gen/, and the API and SDK
# references into docs/reference/ (scripts/gen_reference.py), or, with
# --check, both into a scratch folder, failing when they differ from what is
# committed.
set -euo pipefail
py="$1"; mode="$2"
cd "$(dirname "$0")/.."
out=gen
ref=docs/reference
if [ "$mode" = "--check" ]; then
  out=$(mktemp -d); ref=$(mktemp -d); trap 'rm -rf "$out" "$ref"' EXIT
else
  find gen -name '*_pb2*.py*' -delete
  rm -rf "$ref"
fi
# Every folder under proto/ is a Python package.
for dir in $(cd proto && find . -mindepth 1 -type d | sort); do
  mkdir -p "$out/$dir"
  touch "$out/$dir/__init__.py"
done
"$py" -m grpc_tools.protoc -Iproto \
  --python_out="$out" --pyi_out="$out" --grpc_python_out="$out" \
  $(find proto -name '*.proto' | sort)
"$py" scripts/gen_reference.py "$ref"
if [ "$mode" = "--check" ]; then
  if ! diff -r docs/reference "$ref" >/dev/null; then
    echo "docs/reference/ is stale: it differs from what proto/ and the sdk package generate. Run 'make gen' and commit the result." >&2
    diff -r docs/reference "$ref" | head -20 >&2
    exit 1
  fi
  if ! diff -r -x __pycache__ -x py.typed gen "$out" >/dev/null; then
    echo "gen/ is stale: it differs from what proto/ generates. Run 'make gen' and commit the result." >&2
    diff -r -x __pycache__ -x py.typed gen "$out" | head -20 >&2
    exit 1
  fi
  echo "gen/ and docs/reference/ are up to date with proto/ and sdk"
fi

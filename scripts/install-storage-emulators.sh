#!/usr/bin/env bash
# Installs the storage emulators the sync connector tests start (`make test`
# runs this first). moto server (S3) and gcp-storage-emulator (GCS) come with
# the dev extra from PyPI (moto[server], gcp-storage-emulator), so only
# azurite (Azure Blob) is installed here: from npm into .tools/, beside buf,
# pinned. Idempotent: when .tools/node_modules/.bin/azurite-blob is there,
# nothing is downloaded.
set -euo pipefail
me=install-storage-emulators
root="$(cd "$(dirname "$0")/.." && pwd)"
tools="$root/.tools"
version=3.37.0
bin="$tools/node_modules/.bin/azurite-blob"

if [ -x "$bin" ]; then
  echo "azurite present: $("$bin" --version 2>/dev/null || echo unknown version)"
  exit 0
fi

command -v npm >/dev/null 2>&1 || {
  echo "$me: npm is required to install azurite (apt-get install -y npm)" >&2
  exit 1
}
mkdir -p "$tools"
(cd "$tools" && npm install --silent --no-audit --no-fund --prefix . "azurite@$version")
[ -x "$bin" ] || { echo "$me: $bin is missing after npm install azurite@$version" >&2; exit 1; }
echo "azurite installed: $("$bin" --version 2>/dev/null || echo unknown version)"

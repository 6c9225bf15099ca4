#!/usr/bin/env bash
# Starts __NAME__ on a host where install.sh ran (as root): enables and starts
# the units, waits for the control plane, then applies the documents of
# /etc/eco/__NAME__/apply (again on every run: unchanged documents change nothing).
set -euo pipefail

here="$(cd "$(dirname "$0")/.." && pwd)"
eco=/opt/eco/venv/bin/eco
server="${ECO_SERVER:-127.0.0.1:7400}"

if [ ! -x "$eco" ]; then
    echo "MISSING: $eco -> run scripts/install.sh first" >&2
    exit 1
fi

units=()
for unit in "$here"/systemd/*.service; do
    units+=("$(basename "$unit")")
done
systemctl enable --now "${units[@]}"

# A control plane elsewhere (ECO_SERVER) is waited for just the same.
for _ in $(seq 1 60); do
    if "$eco" --server "$server" --timeout 1 platform list >/dev/null 2>&1; then
        break
    fi
    sleep 1
done
if ! "$eco" --server "$server" --timeout 2 platform list >/dev/null; then
    echo "the control plane at $server does not answer: see journalctl -u __NAME__-controlplane" >&2
    exit 1
fi

"$eco" --server "$server" apply -f /etc/eco/__NAME__/apply
systemctl --no-pager --lines=0 status "${units[@]}"

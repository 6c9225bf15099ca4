#!/usr/bin/env bash
# What a fresh host needs before install.sh can set up __NAME__ there: each
# missing piece is named with how to get it, and the exit status is 1 when
# anything is missing (0 when the host is ready).
#
#   scripts/check.sh            # as the user who will run install.sh (root)
set -u

missing=0
say() { printf '%s\n' "$*"; }
lack() { say "MISSING: $1"; say "  -> $2"; missing=1; }
ok() { say "ok: $1"; }

# Linux with systemd: the units under systemd/ are how install.sh starts things.
if [ "$(uname -s)" != "Linux" ]; then
    lack "a Linux host (this is $(uname -s))" \
        "run the template with compose.yaml or 'eco dev --from DIR' here instead"
fi
if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    ok "systemd"
else
    lack "systemd (systemctl, running as PID 1)" \
        "use compose.yaml or the Kubernetes manifests on this host instead"
fi

# Python 3.11 or newer, with venv and pip for the virtual environment.
python="${PYTHON:-python3}"
if ! command -v "$python" >/dev/null 2>&1; then
    lack "python3 (3.11 or newer)" "install it: apt-get install -y python3 (or dnf install -y python3)"
elif ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    lack "Python 3.11 or newer ($python is $("$python" -c 'import platform; print(platform.python_version())'))" \
        "install a newer python3 and give it as PYTHON=/path/to/python3.12"
else
    ok "$("$python" --version 2>&1)"
    if "$python" -c 'import venv, ensurepip' 2>/dev/null; then
        ok "python venv and ensurepip"
    else
        lack "the Python venv module with ensurepip" "apt-get install -y python3-venv"
    fi
fi

# Root, to create the eco user, /etc/eco, /opt/eco and the units.
if [ "$(id -u)" -eq 0 ]; then
    ok "running as root"
else
    lack "root privileges" "run install.sh as root: sudo scripts/install.sh"
fi

# The ports the units listen on (see systemd/ and config/): unless they run
# here already (install.sh run again, to upgrade), nothing may hold them.
ports="__PORTS__"
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet __NAME__-controlplane.service 2>/dev/null; then
    ok "__NAME__ runs here already (its ports are not checked)"
    ports=""
fi
for port in $ports; do
    if "$python" - "$port" 2>/dev/null <<'PY'; then
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
try:
    s.bind(("127.0.0.1", int(sys.argv[1])))
except OSError:
    sys.exit(1)
PY
        ok "port $port free"
    else
        lack "port $port (in use)" "stop what listens there (ss -ltnp 'sport = :$port'), or change the port in config/ and systemd/"
    fi
done

# The package index (or a wheel given as ECO_WHEEL).
if [ -n "${ECO_WHEEL:-}" ]; then
    if [ -f "$ECO_WHEEL" ]; then ok "wheel $ECO_WHEEL"; else lack "the wheel $ECO_WHEEL" "give ECO_WHEEL=/path/to/ecosystem-*.whl"; fi
fi

if [ "$missing" -ne 0 ]; then
    say "the host is not ready: install what is MISSING above, then run this again"
    exit 1
fi
say "the host is ready: run scripts/install.sh"

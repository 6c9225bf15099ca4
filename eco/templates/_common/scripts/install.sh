#!/usr/bin/env bash
# Installs __NAME__ on this host (run as root, from anywhere):
#   - a virtual environment with ecosystem[server] in /opt/eco/venv
#     (ECO_WHEEL=/path/to/ecosystem-*.whl installs that wheel instead of __VERSION__
#     from the package index);
#   - the system user "eco";
#   - config/ and apply/ copied to /etc/eco/__NAME__/ (existing files are kept:
#     edit them there, or remove them to take the template's again);
#   - the units of systemd/ in /etc/systemd/system/.
# It starts nothing: scripts/start.sh does. scripts/check.sh runs first and
# stops the install when something is missing.
set -euo pipefail

here="$(cd "$(dirname "$0")/.." && pwd)"
python="${PYTHON:-python3}"
venv=/opt/eco/venv
etc=/etc/eco/__NAME__

"$here/scripts/check.sh"

if ! id eco >/dev/null 2>&1; then
    useradd --system --home-dir /var/lib/eco --shell /usr/sbin/nologin eco
fi

if [ ! -x "$venv/bin/python" ]; then
    "$python" -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --upgrade pip
if [ -n "${ECO_WHEEL:-}" ]; then
    "$venv/bin/python" -m pip install --quiet "${ECO_WHEEL}[server]"
else
    "$venv/bin/python" -m pip install --quiet "ecosystem[server]==__VERSION__"
fi
"$venv/bin/eco" --version

install -d -m 0755 "$etc"
for part in config apply; do
    install -d -m 0755 "$etc/$part"
    for file in "$here/$part"/*.yaml; do
        target="$etc/$part/$(basename "$file")"
        if [ -e "$target" ]; then
            echo "kept $target (already there)"
        else
            install -m 0644 "$file" "$target"
        fi
    done
done
"$venv/bin/eco" validate "$etc"

for unit in "$here"/systemd/*.service; do
    install -m 0644 "$unit" /etc/systemd/system/
done
systemctl daemon-reload
echo "installed; start it with: $here/scripts/start.sh"

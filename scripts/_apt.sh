# What the install scripts share; sourced, not run. The sourcing script sets
# `me` (its name, for messages) and defines `fail MESSAGE` (says what is
# needed, exits 1) before calling these. Debian or Ubuntu (apt-get) only.

export PATH="$PATH:/usr/sbin:/sbin"
export DEBIAN_FRONTEND=noninteractive

sudo=()

# apt_ready PACKAGE...: apt-get is here and may be run (as root, or with sudo).
apt_ready() {
  command -v apt-get >/dev/null 2>&1 \
    || fail "no apt-get here; install $* with this system's package manager"
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 || fail "not root and no sudo: run this script as root"
    sudo=(sudo)
  fi
}

# apt_known PACKAGE: the package lists have it.
apt_known() { apt-cache show "$1" >/dev/null 2>&1; }

# apt_lists_for PACKAGE...: refreshes the package lists once when one is missing from them.
apt_lists_for() {
  local package
  for package in "$@"; do
    if ! apt_known "$package"; then
      echo "$me: $package not in the package lists; running apt-get update"
      "${sudo[@]}" apt-get update -qq || fail "apt-get update failed"
      return
    fi
  done
}

# apt_install PACKAGE...: installs them without recommended extras.
apt_install() {
  echo "$me: apt-get install $*"
  "${sudo[@]}" apt-get install -y -qq --no-install-recommends "$@"
}

#!/usr/bin/env bash
# Installs the Debian packages named as arguments (apt-get update first), as root or through
# sudo; the callers (setup.sh, bench/run.sh) pass only what is missing, so nothing runs when
# everything is there. Usage: scripts/apt-install.sh PACKAGE...
set -euo pipefail

die() { printf 'apt-install: error: %s\n' "$*" >&2; exit 1; }

if [[ "${1:-}" == "--help" || "${1:-}" == "-h" ]]; then
    sed -n '2,4p' "$0" | sed 's/^# //'
    exit 0
fi
(($# > 0)) || exit 0
command -v apt-get >/dev/null 2>&1 || die "missing $* and no apt-get here: install them by hand"
sudo_cmd=()
if [[ "$(id -u)" -ne 0 ]]; then
    command -v sudo >/dev/null 2>&1 || die "missing $*: run as root or install sudo"
    sudo_cmd=(sudo)
fi
printf 'installing Debian packages: %s\n' "$*" >&2
"${sudo_cmd[@]}" apt-get update -qq
"${sudo_cmd[@]}" env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -qq --no-install-recommends "$@"

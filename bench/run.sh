#!/usr/bin/env bash
# `make bench` (QUICK=1 for the short run): installs what the benchmark needs, builds, measures.
#   - Debian packages wrk, nginx, haproxy, gnuplot-nox, valgrind: installed only when a command
#     is missing (apt-get update only then).
#   - the release build of every binary and of the bare Pingora proxy the sidecar is measured
#     against (sidecar/examples/bare_proxy.rs); before it, the sidecar and the bare proxy built
#     with `--features sidecar/alloc-count` (their allocations counted at the Rust allocator),
#     copied to bench/.tools/alloc-count/ for the allocation pass.
#   - oha, the open-loop load generator, into bench/.tools/ (cargo install, once); when it
#     cannot be built the harness falls back to wrk's closed-loop latency and says so.
#   - bench/.tools/malloc_count.so, the LD_PRELOAD allocation counter (gcc, when the source
#     is newer).
# Then runs bench/harness.py, which writes bench/results/<date>-<sha>.{md,json} and a chart.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

TOOLS="$ROOT/bench/.tools"
CARGO="${CARGO:-cargo}"
PYTHON="${PYTHON:-python3}"
QUICK="${QUICK:-}"

log() { printf 'bench: %s\n' "$*" >&2; }
die() { printf 'bench: error: %s\n' "$*" >&2; exit 1; }

# --- Debian packages ---------------------------------------------------------------------
missing=()
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
command -v nginx >/dev/null 2>&1 || [[ -x /usr/sbin/nginx ]] || missing+=(nginx)
command -v haproxy >/dev/null 2>&1 || [[ -x /usr/sbin/haproxy ]] || missing+=(haproxy)
command -v gnuplot >/dev/null 2>&1 || missing+=(gnuplot-nox)
command -v taskset >/dev/null 2>&1 || missing+=(util-linux)
command -v gcc >/dev/null 2>&1 || missing+=(gcc libc6-dev)
command -v callgrind_control >/dev/null 2>&1 || missing+=(valgrind)

if ((${#missing[@]} > 0)); then
    "$ROOT/scripts/apt-install.sh" "${missing[@]}"
fi
# nginx and haproxy live in /usr/sbin, which a non-root PATH may lack.
export PATH="$PATH:/usr/sbin:/sbin"

# --- the binaries under test -----------------------------------------------------------------
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
# One selection for both builds: the same dependency features as the workspace build, so only
# the sidecar crate is compiled twice (cargo keeps both variants, a rerun only relinks).
build=(--release --workspace --bins --example bare_proxy)
mkdir -p "$TOOLS/alloc-count"
log "building the sidecar and the bare proxy with the allocation counter (alloc-count)"
"$CARGO" build "${build[@]}" --features sidecar/alloc-count
cp "$TARGET/release/sidecar" "$TARGET/release/examples/bare_proxy" "$TOOLS/alloc-count/"
# Last, so target/release holds the plain binaries every other pass times.
log "building the release binaries"
"$CARGO" build "${build[@]}"

# --- oha: open-loop load generator with latency correction ------------------------------------
if [[ ! -x "$TOOLS/bin/oha" ]]; then
    log "installing oha into bench/.tools (once; a few minutes)"
    if ! "$CARGO" install oha --locked --root "$TOOLS" >"$TOOLS/oha-install.log" 2>&1; then
        log "warning: oha did not build (see bench/.tools/oha-install.log);" \
            "latency will be wrk's closed-loop figures, and the report says so"
    fi
fi

# --- the allocation counter --------------------------------------------------------------------
SHIM="$TOOLS/malloc_count.so"
if [[ ! -f "$SHIM" || "$ROOT/bench/malloc_count.c" -nt "$SHIM" ]]; then
    log "compiling bench/malloc_count.c"
    gcc -O2 -Wall -Wextra -fPIC -shared -o "$SHIM" "$ROOT/bench/malloc_count.c" -ldl
fi

# --- measure -------------------------------------------------------------------------------------
args=(--bin-dir "$TARGET/release" --tools "$TOOLS" --alloc-bin-dir "$TOOLS/alloc-count")
if [[ -n "$QUICK" && "$QUICK" != "0" ]]; then
    args+=(--quick)
fi
log "load average before the run: $(cut -d' ' -f1-3 /proc/loadavg)"
exec "$PYTHON" "$ROOT/bench/harness.py" "${args[@]}"

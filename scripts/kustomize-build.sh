#!/usr/bin/env bash
# Renders a Kustomize directory to stdout with the first renderer that has Kustomize v5:
# a standalone `kustomize`, else `kubectl kustomize`, else the kubectl that `make setup`
# installs into .tools/bin when the machine has neither. The Makefile, the minikube script and
# the tests all render through here, so they render the same way.
# Usage: scripts/kustomize-build.sh DIR        (e.g. k8s/overlays/dev)
#        scripts/kustomize-build.sh --which    (print the renderer it would use)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

die() { printf 'kustomize-build: error: %s\n' "$*" >&2; exit 1; }
usage() { sed -n '2,7p' "$0" | sed 's/^# \{0,1\}//'; }

# kubectl's `version --client` names its built-in Kustomize; components need v3.7+, we ask v5.
kubectl_has_kustomize_v5() {
    "$1" version --client 2>/dev/null | grep -q '^Kustomize Version: v5\.'
}

# Sets cmd to the renderer's command line.
pick_renderer() {
    if command -v kustomize >/dev/null 2>&1; then
        cmd=(kustomize build)
    elif command -v kubectl >/dev/null 2>&1 && kubectl_has_kustomize_v5 kubectl; then
        cmd=(kubectl kustomize)
    elif [[ -x "$ROOT/.tools/bin/kubectl" ]]; then
        cmd=("$ROOT/.tools/bin/kubectl" kustomize)
    else
        die "no Kustomize renderer: install kustomize (v5) or kubectl (1.27+), or run make setup \
(scripts/setup.sh installs kubectl into .tools/bin when neither is on PATH)"
    fi
}

cmd=()
case "${1:-}" in
    -h | --help) usage; exit 0 ;;
    --which) pick_renderer; printf '%s\n' "${cmd[*]}"; exit 0 ;;
    "") usage >&2; exit 2 ;;
esac
(($# == 1)) || die "expected one directory, got $#: $*"
[[ -f "$1/kustomization.yaml" ]] || die "$1 has no kustomization.yaml"

pick_renderer
exec "${cmd[@]}" "$1"

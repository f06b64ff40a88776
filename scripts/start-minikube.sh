#!/usr/bin/env bash
# Starts a local Kubernetes cluster with minikube (docker driver) and deploys meshlab to it:
# enables the ingress, metrics-server and dashboard addons, builds the image inside the
# cluster, applies k8s/overlays/ENV, waits for the rollout and prints how to reach it.
# Usage: scripts/start-minikube.sh [--profile NAME] [--env ENV] [--kubernetes-version V]
#   --profile NAME          minikube profile, also the kubectl context (default: meshlab)
#   --env ENV               overlay to deploy: dev, staging or prod (default: ENV of .env, or dev)
#   --kubernetes-version V  cluster version (default: the Makefile's K8S_VERSION, which
#                           `make validate` checks against; native sidecars need 1.29+)
# Needs: minikube, docker (a running engine), kubectl; kustomize is used when present.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

die() { printf 'start-minikube: error: %s\n' "$*" >&2; exit 1; }
log() { printf 'start-minikube: %s\n' "$*" >&2; }
usage() { sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; }

profile="meshlab"
env_name="$(sed -n 's/^ENV=//p' "$ROOT/.env" 2>/dev/null | head -n1)"
env_name="${env_name:-dev}"
k8s_version="v$(sed -n 's/^K8S_VERSION := //p' "$ROOT/Makefile")"

while (($# > 0)); do
    case "$1" in
        -h | --help) usage; exit 0 ;;
        --profile) [[ $# -ge 2 ]] || die "--profile needs a NAME"; profile="$2"; shift 2 ;;
        --env) [[ $# -ge 2 ]] || die "--env needs an ENV"; env_name="$2"; shift 2 ;;
        --kubernetes-version)
            [[ $# -ge 2 ]] || die "--kubernetes-version needs a version"
            k8s_version="$2"; shift 2 ;;
        *) usage >&2; die "unknown argument: $1" ;;
    esac
done

overlay="$ROOT/k8s/overlays/$env_name"
[[ -f "$overlay/kustomization.yaml" ]] \
    || die "no overlay for --env $env_name: expected one of $(cd "$ROOT/k8s/overlays" && echo */ | tr -d /)"

# --- prerequisites: every missing one is named, then we stop -------------------------------
missing=0
need() {
    if ! command -v "$1" >/dev/null 2>&1; then
        printf 'start-minikube: missing prerequisite: %s not found on PATH; %s\n' "$1" "$2" >&2
        missing=1
    fi
}
need minikube "install minikube (its \"Get Started\" page has a package per OS)"
need docker "install Docker Engine (minikube's docker driver runs the cluster in a container)"
need kubectl "install kubectl 1.29+ (or run: minikube kubectl -- ...)"
((missing == 0)) || exit 1
docker info >/dev/null 2>&1 \
    || die "docker is installed but its engine does not answer (is the daemon running, and may you use it?)"
"$ROOT/scripts/kustomize-build.sh" --which >/dev/null

# --- cluster ----------------------------------------------------------------------------------
log "starting minikube profile $profile (docker driver, Kubernetes $k8s_version)"
minikube start --profile "$profile" --driver docker --kubernetes-version "$k8s_version"
for addon in ingress metrics-server dashboard; do
    log "enabling addon $addon"
    minikube addons enable "$addon" --profile "$profile"
done

# --- image: the tag the overlay asks for, built by the cluster's own container runtime ------
manifests="$("$ROOT/scripts/kustomize-build.sh" "$overlay")"
image="$(printf '%s\n' "$manifests" | sed -n 's/^ *image: *//p' | sort -u)"
[[ -n "$image" && "$image" != *$'\n'* ]] || die "expected one image in $overlay, got: ${image:-none}"
log "building $image inside the cluster"
minikube image build --profile "$profile" --tag "$image" "$ROOT"

# --- deploy and wait ----------------------------------------------------------------------------
namespace="mesh-$env_name"
log "applying k8s/overlays/$env_name to namespace $namespace"
printf '%s\n' "$manifests" | kubectl --context "$profile" apply -f -
for deployment in $(kubectl --context "$profile" -n "$namespace" get deployments -o name); do
    kubectl --context "$profile" -n "$namespace" rollout status "$deployment" --timeout 300s
done

ip="$(minikube ip --profile "$profile")"
cat <<MSG

meshlab ($env_name) runs in minikube profile $profile, namespace $namespace.

  mesh.local:  add "$ip mesh.local" to /etc/hosts, then
               curl http://mesh.local/hello
               (on macOS or Windows with the docker driver: run \`minikube tunnel --profile $profile\`
               and map mesh.local to 127.0.0.1 instead)
  dashboard:   minikube dashboard --profile $profile
  breakers:    kubectl --context $profile -n $namespace port-forward deploy/a 15000:15000
               curl -s http://127.0.0.1:15000/breakers
  stop:        scripts/stop-minikube.sh --profile $profile   (--delete removes the cluster)
MSG

#!/usr/bin/env bash
# Stops the minikube cluster that scripts/start-minikube.sh started (its state is kept, and
# the next start is quick), or deletes it with --delete.
# Usage: scripts/stop-minikube.sh [--profile NAME] [--delete]
#   --profile NAME  minikube profile (default: meshlab)
#   --delete        delete the cluster and its state instead of stopping it
# Needs: minikube.
set -euo pipefail

die() { printf 'stop-minikube: error: %s\n' "$*" >&2; exit 1; }
usage() { sed -n '2,7p' "$0" | sed 's/^# \{0,1\}//'; }

profile="meshlab"
delete=0
while (($# > 0)); do
    case "$1" in
        -h | --help) usage; exit 0 ;;
        --profile) [[ $# -ge 2 ]] || die "--profile needs a NAME"; profile="$2"; shift 2 ;;
        --delete) delete=1; shift ;;
        *) usage >&2; die "unknown argument: $1" ;;
    esac
done

command -v minikube >/dev/null 2>&1 \
    || die "missing prerequisite: minikube not found on PATH; install minikube (its \"Get Started\" page has a package per OS)"

if ((delete)); then
    minikube delete --profile "$profile"
else
    minikube stop --profile "$profile"
fi

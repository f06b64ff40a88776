#!/usr/bin/env bash
# cloud-init user data of the meshlab VM (a Terraform template: main.tf fills in the two
# quoted values below; the rest avoids brace expansions, which Terraform would take as its
# own). Installs K3s, writes the rendered prod overlay and applies it, retrying until the
# API server answers. Log: /var/log/meshlab-init.log.
set -euo pipefail

# Terraform's templatefile fills in these two; bash must not expand them.
# shellcheck disable=SC2016
MANIFESTS_B64='${manifests_b64}'
# shellcheck disable=SC2016
IMAGE='${image}'

exec >>/var/log/meshlab-init.log 2>&1
echo "meshlab-init: start $(date -u +%FT%TZ)"

# K3s, with its own kubectl; Traefik serves the Ingress on port 80.
if ! command -v k3s >/dev/null 2>&1; then
    curl -sfL https://get.k3s.io | INSTALL_K3S_EXEC="server --write-kubeconfig-mode 0644" sh -
fi

MANIFESTS=/var/lib/meshlab/prod.yaml
mkdir -p /var/lib/meshlab
printf '%s' "$MANIFESTS_B64" | base64 -d | gunzip >"$MANIFESTS"
if [ -n "$IMAGE" ]; then
    # The overlay names the image meshlab:TAG; the VM pulls the pushed copy instead.
    sed -i "s|^\( *image: \)meshlab:.*|\1$IMAGE|" "$MANIFESTS"
fi
# The overlay's Ingress asks for the nginx class; K3s ships Traefik.
sed -i 's|ingressClassName: nginx|ingressClassName: traefik|' "$MANIFESTS"

for attempt in $(seq 1 60); do
    if k3s kubectl apply -f "$MANIFESTS"; then
        echo "meshlab-init: applied on attempt $attempt"
        exit 0
    fi
    sleep 5
done
echo "meshlab-init: the API server never accepted the manifests" >&2
exit 1

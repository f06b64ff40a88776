# One image with every meshlab binary: sidecar, control-plane, mesh-service, meshlab.
# The container's command picks one (the k8s/ manifests set `command:`), e.g.
#   docker run --rm meshlab:dev control-plane --help
# Build: `make image` (tag IMAGE from .env), or `minikube image build` (scripts/start-minikube.sh).

# --- build: the release binaries -------------------------------------------------------------
FROM rust:1.95-slim-bookworm AS build
# Pingora's zlib-ng build needs cmake; zstd-sys and zlib-ng need a C compiler.
RUN apt-get update \
    && apt-get install -y --no-install-recommends cmake make gcc g++ \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked \
        --bin sidecar --bin control-plane --bin mesh-service --bin meshlab \
    && mkdir -p /out \
    && cp target/release/sidecar target/release/control-plane \
          target/release/mesh-service target/release/meshlab /out/

# --- runtime: glibc and libgcc only, no shell tools beyond Debian's base, non-root ----------
FROM debian:bookworm-slim
RUN groupadd --gid 10001 mesh \
    && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin mesh
COPY --from=build /out/ /usr/local/bin/
# Numeric, so Kubernetes' runAsNonRoot can check it; the manifests run as the same uid.
USER 10001:10001
EXPOSE 15001 15006 15000 8080 8500
CMD ["sidecar", "--help"]

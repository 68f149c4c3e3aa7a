# syntax=docker/dockerfile:1
#
# The tollgate image: the one `tollgate` binary (`serve`, `operator`, …)
# on a distroless runtime without a shell or package manager, as the
# non-root user 65532.
#
#   docker build -t ghcr.io/tollgate-dev/tollgate:0.1.0 .
#
# charts/tollgate runs it as image.repository:image.tag (default: this
# repository and the chart's appVersion), with `serve` or `operator` as
# arguments. Not built in CI here (no container engine); deploy/kind/up.sh
# builds it for a local cluster.

ARG RUST_VERSION=1.95

# Build: the Rust toolchain on Debian 12, the same glibc as the runtime.
FROM docker.io/library/rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin tollgate \
 && install -D -m 0755 target/release/tollgate /out/tollgate

# Run: glibc, libgcc and CA certificates (JWKS and rediss:// over TLS), no
# shell. The nonroot user is 65532:65532, the chart's
# securityContext.runAsUser.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/tollgate /tollgate
USER 65532:65532
# ext_authz gRPC, admin HTTP (/healthz, /readyz, /metrics).
EXPOSE 50051 9090
ENTRYPOINT ["/tollgate"]
CMD ["--help"]

# syntax=docker/dockerfile:1
# One image for every service, the migrations and the load generator:
#   docker build -t ghcr.io/boardroom/boardroom:0.1.0 .
#   docker run --rm ghcr.io/boardroom/boardroom:0.1.0 serve --service session --config ...
# Kubernetes runs `serve --service <name>` per Deployment and `migrate up` as a Job (k8s/).

# --- build ---------------------------------------------------------------------------------
FROM rust:1.95-bookworm AS build
WORKDIR /src
# Registry, git checkouts and target/ live in BuildKit cache mounts, so a rebuild after a
# source change recompiles only the workspace crates. protoc is vendored (protoc-bin-vendored)
# and SQLite is bundled, so the Debian image needs no extra packages.
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked --bin boardroom \
 && install -D -m 0755 target/release/boardroom /out/boardroom

# --- runtime -------------------------------------------------------------------------------
# glibc, libgcc, CA certificates (outgoing HTTPS to LLM providers) and a `nonroot` user
# (65532); no shell, no package manager.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/boardroom /usr/local/bin/boardroom
USER 65532:65532
WORKDIR /home/nonroot
# gRPC 50051-50054, admin HTTP 9091-9094 (one pair per service).
EXPOSE 50051 50052 50053 50054 9091 9092 9093 9094
ENTRYPOINT ["/usr/local/bin/boardroom"]
CMD ["serve"]

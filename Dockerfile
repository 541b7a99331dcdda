# syntax=docker/dockerfile:1
# Multi-stage build of the project's images. Targets:
#   server    the reference orchestration server (orchestrator-server)
#   operator  the orchestrator-operator controller (default, last stage)
# Build: docker build --target operator -t orchestrator-operator:dev .
#        docker build --target server -t orchestrator-server:1.0.0 .

FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p orchestrator-operator -p orchestrator-server --bins \
    && install -D -m 0755 target/release/orchestrator-operator /out/orchestrator-operator \
    && install -D -m 0755 target/release/orchestrator-server /out/orchestrator-server

FROM gcr.io/distroless/cc-debian12:nonroot AS server
COPY --from=build /out/orchestrator-server /usr/local/bin/orchestrator-server
USER 65532:65532
EXPOSE 8080 9090
ENTRYPOINT ["/usr/local/bin/orchestrator-server"]
CMD ["serve"]

FROM gcr.io/distroless/cc-debian12:nonroot AS operator
COPY --from=build /out/orchestrator-operator /usr/local/bin/orchestrator-operator
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/orchestrator-operator"]

# syntax=docker/dockerfile:1
#
# The image the chart runs: godwit-coordinator, godwit-worker and the godwit
# CLI, with the PostgreSQL client tools the coordinator restores schemas with
# (pg_dump and pg_restore 17 dump and restore servers 12 to 17).
#
#   docker build -t ghcr.io/example/godwit:0.1.0 .

FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
# Only the three binaries, as Cargo.lock pins them.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin godwit --bin godwit-coordinator --bin godwit-worker \
 && mkdir -p /out \
 && cp target/release/godwit target/release/godwit-coordinator target/release/godwit-worker /out/

FROM debian:bookworm-slim AS runtime
# PostgreSQL's own apt repository carries the newest client tools.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      ca-certificates postgresql-common \
 && /usr/share/postgresql-common/pgdg/apt.postgresql.org.sh -y \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends postgresql-client-17 \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/ /usr/local/bin/
# The chart's pods run as this user, on a read-only root filesystem.
RUN groupadd --gid 10001 godwit && useradd --uid 10001 --gid 10001 --no-create-home godwit
USER 10001:10001
ENTRYPOINT ["godwit-coordinator"]

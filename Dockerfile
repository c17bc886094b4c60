# syntax=docker/dockerfile:1
#
# tenantstream image: `docker build -t tenantstream .`
# The runtime stage runs `tenantstream run` by default; pass another subcommand to override
# (`docker run --rm tenantstream check`, `... migrate`, `... produce --count 1000`).

############################ builder ############################
FROM rust:1-bookworm AS builder

# librdkafka is compiled from source by rdkafka-sys (its mklove ./configure + make): it needs a C
# toolchain and make. zlib is the only optional library enabled (TLS, SASL, zstd and curl are
# off); with pkg-config and zlib1g-dev present, libz-sys links the system libz dynamically.
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential pkg-config zlib1g-dev \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /build

# 1. Dependencies only, built against placeholder sources, so that this (slow) layer is reused
#    until Cargo.toml or Cargo.lock changes. Every target Cargo.toml declares explicitly (the
#    [[bench]]es `pipeline` and `replay`) must exist for the manifest to parse, hence their
#    placeholders too.
COPY Cargo.toml Cargo.lock ./
RUN mkdir src benches \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs \
    && for bench in pipeline replay; do echo 'fn main() {}' > "benches/$bench.rs"; done \
    && cargo build --release --locked \
    && rm -rf src benches

# 2. The crate itself. The migrations are embedded in the binary by `sqlx::migrate!`, so they are
#    needed at build time; benches/ only so that the manifest parses. `touch` makes sure cargo
#    rebuilds the crate over the placeholder (the copied files may carry older timestamps than
#    the placeholder build).
COPY src ./src
COPY migrations ./migrations
COPY benches ./benches
RUN touch src/main.rs src/lib.rs \
    && cargo build --release --locked \
    && install -m 0755 target/release/tenantstream /usr/local/bin/tenantstream

############################ runtime ############################
FROM debian:bookworm-slim AS runtime

# zlib1g is the one shared library the binary links besides libc/libm/libgcc_s. ca-certificates is
# not used by the current build (no TLS features are enabled) but keeps the image ready for one.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates zlib1g \
    && rm -rf /var/lib/apt/lists/*

RUN groupadd --system --gid 10001 tenantstream \
    && useradd --system --uid 10001 --gid tenantstream --home-dir /app --no-create-home \
        --shell /usr/sbin/nologin tenantstream

COPY --from=builder /usr/local/bin/tenantstream /usr/local/bin/tenantstream
# Reader schemas (*.avsc) and registry.json, read at startup (not embedded in the binary).
COPY schemas /app/schemas

WORKDIR /app

# Container defaults; everything else (brokers, database, redis, ...) comes from the environment
# or flags (see `tenantstream --help`). The HTTP port (/metrics, /healthz, /readyz) must listen
# on all interfaces to be reachable from outside the container.
ENV TENANTSTREAM_SCHEMAS_DIR=/app/schemas \
    TENANTSTREAM_HTTP_LISTEN=0.0.0.0:9898

USER 10001:10001

EXPOSE 9898

ENTRYPOINT ["tenantstream"]
CMD ["run"]

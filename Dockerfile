# syntax=docker/dockerfile:1
# Build: docker build -t jobwatch .
# Run:   docker run -p 8080:8080 -v jobwatch-data:/data -e JOBWATCH__API__TOKEN=... jobwatch

FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
# Dependencies first, so code changes do not rebuild them.
COPY Cargo.toml Cargo.lock ./
RUN mkdir src && echo 'fn main() {}' > src/main.rs && echo '' > src/lib.rs \
    && cargo build --release --locked || true
COPY . .
RUN touch src/main.rs src/lib.rs && cargo build --release --locked --bin jobwatch \
    && strip target/release/jobwatch

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /data --shell /usr/sbin/nologin jobwatch \
    && mkdir -p /data && chown jobwatch /data
COPY --from=build /src/target/release/jobwatch /usr/local/bin/jobwatch
USER jobwatch
WORKDIR /data
VOLUME ["/data"]
# Listen on all interfaces inside the container; a token is then required
# (set JOBWATCH__API__TOKEN) unless JOBWATCH__API__ALLOW_UNAUTHENTICATED_PUBLIC=true.
ENV JOBWATCH__API__LISTEN=0.0.0.0:8080 \
    JOBWATCH__STORE__URL=sqlite:///data/jobwatch.db \
    JOBWATCH__LOG__FORMAT=json
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["jobwatch", "healthcheck", "--server", "http://127.0.0.1:8080"]
ENTRYPOINT ["jobwatch"]
CMD ["serve"]

# clinvk in a container: clinvkd serving the claude, codex and gemini CLIs over HTTP.
#
# NOTE: this file has not been built: the machines clinvk is developed on cannot reach Docker Hub.
# It is kept deliberately simple (two stages, Debian packages, npm) so that it is easy to check.
#
#   docker build -t clinvk .
#   docker run --rm -p 127.0.0.1:8080:8080 -v clinvk-home:/home/clinvk \
#       -e ANTHROPIC_API_KEY -e OPENAI_API_KEY -e GEMINI_API_KEY --stop-timeout 40 clinvk
#
# --stop-timeout: clinvkd drains for server.shutdown_grace_secs (30 s) on SIGTERM; Docker's
# default 10 s would SIGKILL it mid-drain.

# --- build -----------------------------------------------------------------------------------
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
# Release profile: LTO, one codegen unit, stripped binaries (Cargo.toml).
RUN cargo build --release --locked --bins \
 && install -m 0755 target/release/clinvkd target/release/clinvk target/release/clinvkctl /usr/local/bin/

# --- run -------------------------------------------------------------------------------------
FROM debian:bookworm-slim
# The CLIs are node programs (npm); tini reaps whatever the CLIs orphan (clinvkd is not PID 1).
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      ca-certificates nodejs npm git tini \
 && rm -rf /var/lib/apt/lists/*
# The versions clinvk is tested against (tests/cli-versions.env).
ARG CLAUDE_CODE_VERSION=2.1.328
ARG CODEX_VERSION=0.169.0
ARG GEMINI_CLI_VERSION=0.61.0
RUN npm install -g --no-audit --no-fund \
      "@anthropic-ai/claude-code@${CLAUDE_CODE_VERSION}" \
      "@openai/codex@${CODEX_VERSION}" \
      "@google/gemini-cli@${GEMINI_CLI_VERSION}" \
 && npm cache clean --force
COPY --from=build /usr/local/bin/clinvkd /usr/local/bin/clinvk /usr/local/bin/clinvkctl /usr/local/bin/
RUN useradd --create-home --home-dir /home/clinvk --shell /usr/sbin/nologin clinvk
USER clinvk
WORKDIR /home/clinvk
ENV HOME=/home/clinvk \
    CLINVK_SERVER_HOST=0.0.0.0 \
    CLINVK_SERVER_PORT=8080
# State (~/.clinvk: config, sessions) and the CLIs' logins live in the home folder: mount a volume.
VOLUME ["/home/clinvk"]
EXPOSE 8080
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=30s --timeout=5s CMD ["clinvkctl", "status"]
ENTRYPOINT ["/usr/bin/tini", "--", "clinvkd"]

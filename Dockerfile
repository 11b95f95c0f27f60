# Stratus: self-hosted cloud-variable server for Scratch and TurboWarp.
#
#   docker build -t stratus .
#   docker run -d --name stratus -p 9080:9080 -v stratus-data:/data stratus
#
# BASE_IMAGE may be any image with Python 3.11+ (and its venv module) that has `python3`, `useradd`
# and `groupadd`: the official slim image by default, a locally made Debian base in CI.
ARG BASE_IMAGE=python:3.11-slim

# ---- builder: a virtual environment with the runtime dependencies, plus the app, byte-compiled.
FROM ${BASE_IMAGE} AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

COPY requirements.txt /tmp/requirements.txt
# pip and setuptools leave the venv at the end: the server never needs them at run time.
RUN python3 -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-cache-dir -r /tmp/requirements.txt \
 && /opt/venv/bin/pip uninstall --yes pip setuptools \
 && rm /tmp/requirements.txt

WORKDIR /app
COPY config.toml ./
COPY server/ server/
COPY protocols/ protocols/
COPY plugins/ plugins/
COPY ops/ ops/
RUN /opt/venv/bin/python -m compileall -q /app

# ---- final image: the same base, the venv and the app, run as an unprivileged user.
FROM ${BASE_IMAGE}

LABEL org.opencontainers.image.title="Stratus" \
      org.opencontainers.image.description="Self-hosted cloud-variable server for Scratch and TurboWarp projects"

# A fixed numeric uid/gid (USER below uses the numbers), so a bind-mounted data directory can be
# chown'ed to 10001:10001 on the host. /data is created here and owned by that user: a new named
# volume copies this ownership.
RUN groupadd --gid 10001 stratus \
 && useradd --uid 10001 --gid stratus --home-dir /nonexistent --no-create-home \
        --shell /usr/sbin/nologin stratus \
 && mkdir -p /data \
 && chown stratus:stratus /data

COPY --from=builder /opt/venv /opt/venv
COPY --from=builder /app /app

# The environment overrides config.toml (see "Run with Docker" in the README): PORT sets the port
# inside the container (the healthcheck reads it too), STRATUS_DATA_DIR the SQLite store's folder.
ENV PATH="/opt/venv/bin:${PATH}" \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    STRATUS_DATA_DIR=/data \
    PORT=9080

WORKDIR /app
USER 10001:10001
VOLUME ["/data"]
EXPOSE 9080

# SIGTERM closes every client with 1001, flushes the store and exits 0 within a few seconds, well
# inside the 10 s that `docker stop` waits. python is PID 1 and handles the signal itself.
STOPSIGNAL SIGTERM
# The check reads the same config and environment as the server (port, and https:// when
# [server] tls_cert is set) and asks it for /healthz.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-m", "server", "healthcheck", "--config", "/app/config.toml"]

# /app/config.toml holds the documented defaults; mount your own over it (read-only is fine).
CMD ["python", "-m", "server", "--config", "/app/config.toml"]

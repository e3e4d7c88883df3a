# syntax=docker/dockerfile:1
#
# schemad's image. Build your own FROM it with your migrations in place of
# the shipped demo ones:
#
#   FROM schemad:0.1.0
#   USER 0
#   RUN rm -rf /app/migrations /app/alembic.ini
#   COPY alembic.ini /app/alembic.ini
#   COPY migrations/ /app/migrations/
#   RUN python -m compileall -q /app/migrations
#   USER 10001:10001
#
# (see docs/kubernetes.md). Runs as UID 10001 on a read-only root filesystem;
# only /tmp needs to be writable.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md ./
COPY service/ service/
# A regular (non-editable) install: the final stage copies only the venv.
RUN pip install --no-cache-dir "./[async]" \
    && python -m compileall -q /opt/venv

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="schemad" \
      org.opencontainers.image.description="Keeps a database's schema at the target Alembic revision" \
      org.opencontainers.image.licenses="Apache-2.0"
# A numeric user so Kubernetes' runAsNonRoot can verify it without /etc/passwd.
RUN groupadd --system --gid 10001 schemad \
    && useradd --system --uid 10001 --gid 10001 --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin schemad
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
COPY alembic.ini /app/alembic.ini
COPY migrations/ /app/migrations/
# Bytecode is compiled here because the container cannot write it at run time
# (read-only root, PYTHONDONTWRITEBYTECODE): without it every revision file is
# compiled again on each start.
# The graph index lets a command with nothing to do (every init container and
# pod start) decide without importing Alembic or the revisions.
RUN /opt/venv/bin/python -m compileall -q /app/migrations \
    && SCHEMAD_SCRIPT_LOCATION=/app/migrations /opt/venv/bin/schemad index
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    SCHEMAD_SCRIPT_LOCATION=/app/migrations
USER 10001:10001
EXPOSE 8080
# `schemad health` GETs the daemon's /healthz (the slim image has no curl). It
# only makes sense for `schemad run`; Kubernetes ignores HEALTHCHECK and uses
# the chart's probes instead.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 CMD ["schemad", "health"]
# Exec form: schemad is PID 1 and receives SIGTERM itself (it handles it and
# lets a running revision finish within SCHEMAD_SHUTDOWN_GRACE_SECONDS).
ENTRYPOINT ["schemad"]
CMD ["run"]

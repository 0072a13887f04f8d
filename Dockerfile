# syntax=docker/dockerfile:1
# One image for every logpipe role: ROLE=ingestor|processor|emitter|console picks it.

# The base is pinned by digest (the tag stays for readers): a rebuild of the same commit gets
# the same interpreter and system libraries. To move on, pull the tag, read its digest
# (`docker buildx imagetools inspect python:3.11-slim-bookworm`) and update both FROM lines.

# --- build: install the pinned dependencies and logpipe into a virtualenv ---
FROM python:3.11-slim-bookworm@sha256:a36c24f9cbdf4fd0f52d67f0823eeac19c2028c637cecc392d97f980d4fec56b AS build

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /src
RUN python -m venv /opt/logpipe

# Dependencies first, from the lock alone, so a code change reuses this layer.
COPY requirements.lock ./
RUN /opt/logpipe/bin/pip install --no-cache-dir --no-deps -r requirements.lock

COPY pyproject.toml README.md ./
COPY logpipe/ logpipe/
RUN /opt/logpipe/bin/pip install --no-cache-dir --no-deps . \
    && /opt/logpipe/bin/python -m compileall -q /opt/logpipe/lib

# --- runtime: the virtualenv only, no pip cache, no sources, no tests, not root ---
# The same base as the build stage: the virtualenv's interpreter path must exist here too.
FROM python:3.11-slim-bookworm@sha256:a36c24f9cbdf4fd0f52d67f0823eeac19c2028c637cecc392d97f980d4fec56b AS runtime

RUN groupadd --system --gid 10001 logpipe \
    && useradd --system --uid 10001 --gid logpipe --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin logpipe

COPY --from=build /opt/logpipe /opt/logpipe

ENV PATH=/opt/logpipe/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    LOGPIPE_PORT=8080 \
    LOGPIPE_METRICS_PORT=9100

USER 10001:10001
EXPOSE 8080 9100

# No curl in the image: Python asks GET /healthz of the HTTP roles (ingestor, console) and
# GET /metrics of the others. Keep in step with local.health_check_command in terraform/ecs.tf.
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as r; h = os.environ.get('ROLE') in ('ingestor', 'console'); p = os.environ.get('LOGPIPE_PORT' if h else 'LOGPIPE_METRICS_PORT') or ('8080' if h else '9100'); r.urlopen(f'http://127.0.0.1:{p}/' + ('healthz' if h else 'metrics'), timeout=4)"]

ENTRYPOINT ["logpipe"]

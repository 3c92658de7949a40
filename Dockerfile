# Users API image: gunicorn (settings in gunicorn.conf.py) serving usersapi:create_app() on
# port 8000, tini as PID 1.
# Build with BuildKit (the pip cache mount needs it):
#   DOCKER_BUILDKIT=1 docker build -t docker.io/USER/usersapi:1.0.0 .
FROM python:3.13-slim

# No .pyc files written at run time (the code is read-only for the app user anyway),
# logs leave Python unbuffered, pip stays quiet about its own version.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# tini reaps zombies and forwards SIGTERM to gunicorn, which then drains its workers.
# apt-get clean drops the .deb files and apt's binary caches, then the package lists go.
RUN apt-get update \
 && apt-get install -y --no-install-recommends tini \
 && apt-get clean \
 && rm -rf /var/lib/apt/lists/*

# A fixed, unprivileged uid: the stack gives Docker secrets to this uid (mode 0400).
RUN groupadd --system --gid 10001 usersapi \
 && useradd --system --uid 10001 --gid usersapi --no-create-home \
      --home-dir /nonexistent --shell /usr/sbin/nologin usersapi

WORKDIR /app

# Dependencies first, in their own layer: editing the code reuses it. The pip cache
# lives in a BuildKit cache mount, so it speeds up rebuilds but never enters the image.
COPY requirements.txt .
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install --root-user-action=ignore -r requirements.txt

COPY gunicorn.conf.py usersapi*.py ./

# gunicorn.conf.py reads WEB_CONCURRENCY (workers) and GUNICORN_THREADS from the
# environment, so a deployment tunes them without a new image. The workers' metrics files
# go to tmpfs (/dev/shm, writable by every user); gunicorn empties the directory at start.
ENV PROMETHEUS_MULTIPROC_DIR=/dev/shm/usersapi-metrics

# Numeric uid:gid: an orchestrator can tell it is not root without resolving names in the image.
USER 10001:10001

EXPOSE 8000

# /health answers while the process is up, even with MongoDB down; readiness (/ready) is a
# different question and not a reason to restart the container. Python's urllib: no curl.
HEALTHCHECK --interval=10s --timeout=3s --start-period=15s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=2)"]

ENTRYPOINT ["tini", "--"]
CMD ["gunicorn", "--config", "gunicorn.conf.py"]

# Metadata last: a new version or commit only rewrites the image config, no layer. The API
# reports the image's version in /openapi.json (without one, the code's own).
ARG VERSION=""
ARG REVISION=unknown
ENV USERSAPI_VERSION=${VERSION}
LABEL org.opencontainers.image.title="usersapi" \
      org.opencontainers.image.description="Users CRUD API (Flask + MongoDB) served by gunicorn" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.base.name="docker.io/library/python:3.13-slim"

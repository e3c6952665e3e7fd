# image-origin: one gunicorn node. Build: docker build -t image-origin .
# Run:   docker run -p 8080:8080 -e IMAGE_ORIGIN_API_KEYS=... -e IMAGE_ORIGIN_SIGNING_KEYS=... \
#          -e IMAGE_ORIGIN_DATABASE_URL=postgresql://... -e IMAGE_ORIGIN_STORAGE_URL=s3://... \
#          -e IMAGE_ORIGIN_REDIS_URL=redis://... image-origin
# Jobs:  the same image with `image-origin worker`; migrations: `image-origin migrate`.

# --- build: wheels for the app and its dependencies (no compiler needed: all ship wheels) -----
FROM python:3.11-slim-bookworm AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY app ./app
RUN pip wheel --wheel-dir /wheels .

# --- runtime: only what runs -------------------------------------------------------------
FROM python:3.11-slim-bookworm
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    IMAGE_ORIGIN_BIND=0.0.0.0:8080 \
    IMAGE_ORIGIN_DATA_DIR=/var/lib/image-origin \
    PROMETHEUS_MULTIPROC_DIR=/tmp/image-origin-metrics
# libmagic: type sniffing by magic bytes (python-magic loads it at run time).
RUN apt-get update \
    && apt-get install -y --no-install-recommends libmagic1 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --user-group --home-dir /srv/image-origin \
       --shell /usr/sbin/nologin image-origin \
    && install -d -o image-origin -g image-origin /var/lib/image-origin
COPY --from=build /wheels /wheels
RUN pip install --no-index --find-links=/wheels image-origin && rm -rf /wheels
WORKDIR /srv/image-origin
COPY config/gunicorn.conf.py ./config/gunicorn.conf.py
USER image-origin
EXPOSE 8080
# Local data (SQLite, local blobs, staging): mount a volume here, or point the settings at
# PostgreSQL and S3 and keep only staging on it.
VOLUME ["/var/lib/image-origin"]
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, sys, urllib.request; port = os.environ['IMAGE_ORIGIN_BIND'].rsplit(':', 1)[1]; sys.exit(urllib.request.urlopen(f'http://127.0.0.1:{port}/healthz', timeout=2).status != 200)"]
# gunicorn handles SIGTERM as a graceful shutdown (graceful_timeout in the config).
STOPSIGNAL SIGTERM
CMD ["gunicorn", "--config", "config/gunicorn.conf.py", "app.wsgi:app"]

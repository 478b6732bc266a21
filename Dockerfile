# RTCProctor server image: `docker compose up -d` builds it (see README, Deployment).
FROM node:20-bookworm-slim AS pages
WORKDIR /app/static
COPY static/package.json static/package-lock.json ./
RUN npm ci --no-audit --no-fund --loglevel=error

FROM python:3.11-slim-bookworm
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    RTCPROCTOR_HOST=0.0.0.0 \
    RTCPROCTOR_PORT=8080 \
    RTCPROCTOR_DATA_DIR=/data \
    RTCPROCTOR_STATIC_DIR=/app/static
RUN useradd --system --uid 10001 --home-dir /app rtcproctor \
    && mkdir -p /data && chown rtcproctor /data
WORKDIR /app
COPY pyproject.toml README.md ./
COPY rtcproctor ./rtcproctor
RUN pip install --no-cache-dir .
COPY static ./static
COPY --from=pages /app/static/node_modules ./static/node_modules
USER rtcproctor
VOLUME /data
EXPOSE 8080
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=4).status != 200)"]
CMD ["rtcproctor", "serve"]

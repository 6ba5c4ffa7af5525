# The API image: `heartvec serve` (FastAPI under uvicorn). It only validates, stores and enqueues;
# the reconstruction runs in the worker image, so torch here is the CPU build (~200 MB instead of
# the ~3 GB CUDA wheels PyPI would pull), installed before the project so pip keeps it.
# Build from the repository root:  docker build -f docker/api.Dockerfile -t heartvec-api .
#   --build-arg TORCH_PIP_OPTIONS="..."   where pip finds that torch (default: PyTorch's CPU index)
#
# The web page (three.js bundled by esbuild), built in a Node stage; only the bundle is kept.
FROM node:24-bookworm-slim AS web
WORKDIR /build/web
COPY services/api/web/package.json services/api/web/package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY services/api/web/build.mjs ./
COPY services/api/web/src ./src
RUN npm run build

FROM python:3.11-slim-bookworm

ENV PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MPLCONFIGDIR=/tmp/matplotlib \
    VIRTUAL_ENV=/opt/heartvec/venv \
    PATH=/opt/heartvec/venv/bin:$PATH

# fcpw's native module (imported with the reconstruction code the API validates with) links libX11.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends libx11-6 \
    && rm -rf /var/lib/apt/lists/*

ARG TORCH_PIP_OPTIONS="--index-url https://download.pytorch.org/whl/cpu"
# hadolint ignore=DL3013,SC2086
RUN --mount=type=cache,target=/root/.cache/pip \
    python -m venv "$VIRTUAL_ENV" \
    && pip install $TORCH_PIP_OPTIONS torch==2.13.0

WORKDIR /opt/heartvec
COPY pyproject.toml README.md ./
COPY shared ./shared
COPY services ./services
COPY --from=web /build/heartvec_api/static ./services/api/heartvec_api/static
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install './[service]' \
    && useradd --create-home --uid 1000 heartvec \
    && mkdir -p /data \
    && chown heartvec:heartvec /data

USER 1000:1000
WORKDIR /home/heartvec
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]
ENTRYPOINT ["heartvec"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]

# The worker image: `heartvec worker` (Celery, one process per GPU) runs the reconstructions.
# Build from the repository root:  docker build -f docker/worker.Dockerfile -t heartvec-worker .
#
# Base: the official PyTorch runtime image with the same torch as pyproject.toml (2.13.0). Its
# Python is externally managed (PEP 668), so heartvec goes into a virtual environment that also
# sees the base's site-packages: pip keeps the image's torch (2.13.0+cu126 satisfies
# torch==2.13.0) and the CUDA layers are shared with the trainer image. CUDA 12.6 rather than
# 13.x: it runs on every driver from the R525 branch up, whereas CUDA 13 needs R580 or newer.
FROM pytorch/pytorch:2.13.0-cuda12.6-cudnn9-runtime

ENV PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MPLCONFIGDIR=/tmp/matplotlib \
    VIRTUAL_ENV=/opt/heartvec/venv \
    PATH=/opt/heartvec/venv/bin:$PATH

# fcpw's native module (exact distances) links libX11, which runtime images lack.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends libx11-6 \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/heartvec
COPY pyproject.toml README.md ./
COPY shared ./shared
COPY services ./services
# Ubuntu >= 24.04 bases ship a user `ubuntu` with uid 1000; the uid goes to heartvec instead, so
# files in volumes shared with the api image (also uid 1000) have one owner. The venv has no pip
# of its own: the base's pip installs into it.
RUN --mount=type=cache,target=/root/.cache/pip \
    python3 -m venv --system-site-packages --without-pip "$VIRTUAL_ENV" \
    && python -m pip install './[service]' \
    && python -c "import torch, heartvec.distance; print('torch', torch.__version__)" \
    && if id -u 1000 >/dev/null 2>&1; then userdel --remove "$(id -nu 1000)"; fi \
    && useradd --create-home --uid 1000 heartvec \
    && mkdir -p /data \
    && chown heartvec:heartvec /data

USER 1000:1000
WORKDIR /home/heartvec
# `heartvec worker` names the Celery node heartvec@<hostname>; the hostname is in $HOSTNAME.
HEALTHCHECK --interval=60s --timeout=30s --start-period=60s --retries=3 \
    CMD ["sh", "-c", "celery -A heartvec_worker.app:celery_app inspect ping --timeout 10 -d \"heartvec@$HOSTNAME\""]
ENTRYPOINT ["heartvec"]
CMD ["worker"]

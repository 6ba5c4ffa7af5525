# The trainer image: `heartvec prepare` / `split` / `train` / `evaluate` / `export-checkpoint`,
# multi-GPU under `torchrun`. It is also the cluster's Apptainer image (apptainer/trainer.def
# builds the SIF from it). Build from the repository root:
#   docker build -f docker/trainer.Dockerfile -t heartvec-trainer .
#
# Base and virtual environment as in docker/worker.Dockerfile (same torch, CUDA 12.6, layers
# shared): heartvec in a venv that sees the base's torch, since the base's Python is externally
# managed (PEP 668).
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
# Ubuntu >= 24.04 bases ship a user `ubuntu` with uid 1000; the uid goes to heartvec instead.
RUN --mount=type=cache,target=/root/.cache/pip \
    python3 -m venv --system-site-packages --without-pip "$VIRTUAL_ENV" \
    && python -m pip install . \
    && python -c "import torch, heartvec.distance; print('torch', torch.__version__)" \
    && if id -u 1000 >/dev/null 2>&1; then userdel --remove "$(id -nu 1000)"; fi \
    && useradd --create-home --uid 1000 heartvec \
    && mkdir -p /data /prepared /runs \
    && chown heartvec:heartvec /data /prepared /runs

USER 1000:1000
WORKDIR /home/heartvec
ENTRYPOINT ["heartvec"]
CMD ["--help"]

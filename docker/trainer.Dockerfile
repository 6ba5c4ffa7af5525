# The trainer image: `heartvec prepare` / `split` / `train` / `evaluate` / `export-checkpoint`.
# Build from the repository root:  docker build -f docker/trainer.Dockerfile -t heartvec-trainer .
#
# Base: the same official PyTorch runtime image as docker/worker.Dockerfile (torch 2.13.0, the
# version pyproject.toml pins, so pip keeps it; CUDA 12.6 runs on drivers from R525 up, CUDA 13
# would need R580). Multi-GPU training runs under `torchrun` inside it.
FROM pytorch/pytorch:2.13.0-cuda12.6-cudnn9-runtime

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MPLCONFIGDIR=/tmp/matplotlib

WORKDIR /opt/heartvec
COPY pyproject.toml README.md ./
COPY shared ./shared
COPY services ./services
# Ubuntu >= 24.04 bases ship a user `ubuntu` with uid 1000; the uid goes to heartvec instead.
RUN pip install --no-compile . \
    && if id -u 1000 >/dev/null 2>&1; then userdel --remove "$(id -nu 1000)"; fi \
    && useradd --create-home --uid 1000 heartvec \
    && mkdir -p /data /prepared \
    && chown heartvec:heartvec /data /prepared

USER 1000:1000
WORKDIR /home/heartvec
ENTRYPOINT ["heartvec"]
CMD ["--help"]

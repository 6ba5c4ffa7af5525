# The trainer image: `heartvec prepare` / `split` today (and train/evaluate as they land).
# Build from the repository root:  docker build -f docker/trainer.Dockerfile -t heartvec-trainer .
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MPLCONFIGDIR=/tmp/matplotlib

WORKDIR /opt/heartvec
COPY pyproject.toml README.md ./
COPY shared ./shared
COPY services ./services
RUN pip install --no-compile . \
    && useradd --create-home --uid 1000 heartvec \
    && mkdir -p /data /prepared \
    && chown heartvec:heartvec /data /prepared

USER 1000:1000
WORKDIR /home/heartvec
ENTRYPOINT ["heartvec"]
CMD ["--help"]

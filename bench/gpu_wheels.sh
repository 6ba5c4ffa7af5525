#!/usr/bin/env bash
# The wheels bench/gpu_check.sh installs on a lent GPU machine, into .whl/ (ignored by git; the
# device tool's `carry` takes it along). That machine's python3 (3.12) already has torch, numpy,
# scipy, scikit-image, matplotlib, tensorboard, PyYAML, tqdm, httpx and the rest of the scientific
# stack, and reaches no registry; these are heartvec's runtime and service dependencies it lacks
# (its package list: the device tool's KINDS.md), at the versions pyproject.toml resolves to;
# not psycopg: the check's service is the embedded one (SQLite).
#   bash bench/gpu_wheels.sh       (about 40 MB, fcpw 26 MB of it)
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS=(
    alembic==1.20.1 amqp==5.4.2 annotated-types==0.8.0 billiard==4.3.2 celery==5.7.0
    click-didyoumean==0.3.1 click-plugins==1.1.1.2 click-repl==0.4.1 fastapi==0.165.0
    fcpw==1.2.0 httptools==0.9.0 importlib-resources==7.1.0 isal==1.7.2 kombu==5.7.0 mako==1.4.3
    nibabel==5.4.2 opentelemetry-api==1.45.2 prompt-toolkit==3.0.53 pydantic==2.14.3 pydantic-core==2.50.4 pydantic-settings==2.16.3
    python-dotenv==1.2.4 python-multipart==0.0.34 redis==8.2.0 sqlalchemy==2.1.9
    starlette==1.10.0 typing-inspection==0.4.5 tzlocal==5.4.5 uvicorn==0.54.0 vine==5.1.0
    watchfiles==1.3.0 wcwidth==0.9.4 websockets==17.4
)
mkdir -p .whl
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >>.git/info/exclude
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux1_x86_64 -d .whl "${WHEELS[@]}"
du -sh .whl

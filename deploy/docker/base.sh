#!/usr/bin/env bash
# Make a local Debian 12 base image for the Dockerfiles, where no image registry can be
# reached: `debootstrap --variant=minbase` with Python, set up as Debian's own slim images are,
# and written as a tarball to import with `podman import` or `docker import`:
#
#   sudo bash deploy/docker/base.sh whisperd-base.tar
#   podman import whisperd-base.tar localhost/whisperd-base:bookworm
#   podman build --build-arg PYTHON_IMAGE=localhost/whisperd-base:bookworm ...
#
# The base trusts what this machine trusts, so that apt and pip inside a build reach the same
# mirrors through the same proxies: the machine's CA bundle (CA_BUNDLE) replaces the base's,
# and /etc/pip.conf points pip at it (pip otherwise uses its own copy of Mozilla's list).
#
# Environment:
#   MIRROR         Debian mirror (default http://deb.debian.org/debian); the base's apt uses it
#   PIP_INDEX_URL  written to the base's /etc/pip.conf when set (a local package index)
#   CA_BUNDLE      the trust store to copy (default /etc/ssl/certs/ca-certificates.crt)
#
# Needs root, debootstrap and Debian's archive keyring (apt-get install debootstrap).
#
# usage: bash deploy/docker/base.sh OUTPUT.tar
set -euo pipefail

suite=bookworm
packages=python3,python3-venv,python-is-python3,ca-certificates
mirror="${MIRROR:-http://deb.debian.org/debian}"
ca_bundle="${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}"

fail() {
    echo "deploy/docker/base.sh: $*" >&2
    exit 1
}

[[ $# -eq 1 ]] || fail "usage: bash deploy/docker/base.sh OUTPUT.tar"
output="$1"
[[ $(id -u) -eq 0 ]] || fail "debootstrap needs root"
command -v debootstrap >/dev/null || fail "debootstrap not found: apt-get install debootstrap"
[[ -f "${ca_bundle}" ]] || fail "no CA bundle at ${ca_bundle}: set CA_BUNDLE"

rootfs="$(mktemp -d "${TMPDIR:-/var/tmp}/whisperd-base.XXXXXX")"
cleanup() {
    # debootstrap mounts /proc and friends in the target; an interrupted run can leave them.
    grep -F " ${rootfs}/" /proc/mounts | cut -d' ' -f2 | sort -r | xargs -r umount -l || true
    rm -rf --one-file-system "${rootfs}"
}
trap cleanup EXIT
trap "exit 143" TERM INT

echo "== debootstrap ${suite} (${packages}) from ${mirror}"
debootstrap --variant=minbase --include="${packages}" "${suite}" "${rootfs}" "${mirror}" \
    >"${rootfs}.log" 2>&1 || {
    tail -n 30 "${rootfs}.log" >&2
    rm -f "${rootfs}.log"
    fail "debootstrap failed (its log is above)"
}
rm -f "${rootfs}.log"

# What Debian's official slim images set: no service starts while packages install, apt keeps
# no caches, and documentation is not installed (copyright files excepted).
cat >"${rootfs}/usr/sbin/policy-rc.d" <<'EOF'
#!/bin/sh
exit 101
EOF
chmod 755 "${rootfs}/usr/sbin/policy-rc.d"
cat >"${rootfs}/etc/apt/apt.conf.d/docker-clean" <<'EOF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
EOF
echo 'Acquire::Languages "none";' >"${rootfs}/etc/apt/apt.conf.d/docker-no-languages"
echo 'Acquire::GzipIndexes "true";' >"${rootfs}/etc/apt/apt.conf.d/docker-gzip-indexes"
echo 'Apt::AutoRemove::SuggestsImportant "false";' \
    >"${rootfs}/etc/apt/apt.conf.d/docker-autoremove-suggests"
cat >"${rootfs}/etc/dpkg/dpkg.cfg.d/docker-slim" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/info/*
path-exclude /usr/share/man/*
path-exclude /usr/share/locale/*
EOF
find "${rootfs}/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
find "${rootfs}/usr/share/doc" -mindepth 1 -type d -empty -delete
rm -rf "${rootfs}"/usr/share/{info,man,locale}/* \
    "${rootfs}"/var/lib/apt/lists/* "${rootfs}"/var/cache/apt/*.bin \
    "${rootfs}"/var/cache/apt/archives/*.deb "${rootfs}"/var/log/*.log \
    "${rootfs}"/var/cache/debconf/*-old
: >"${rootfs}/etc/resolv.conf"
: >"${rootfs}/etc/hostname"

# This machine's trust store, also where a later update-ca-certificates rebuilds it from.
cp "${ca_bundle}" "${rootfs}/etc/ssl/certs/ca-certificates.crt"
if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
    cp /usr/local/share/ca-certificates/*.crt "${rootfs}/usr/local/share/ca-certificates/"
fi
{
    echo "[global]"
    echo "cert = /etc/ssl/certs/ca-certificates.crt"
    if [[ -n "${PIP_INDEX_URL:-}" ]]; then
        echo "index-url = ${PIP_INDEX_URL}"
    fi
} >"${rootfs}/etc/pip.conf"

tar --numeric-owner -C "${rootfs}" -cf "${output}.part" .
mv "${output}.part" "${output}"
echo "deploy/docker/base.sh: wrote ${output} ($(du -h "${output}" | cut -f1))"

#!/usr/bin/env bash
# Make the Dockerfile's base image locally from Debian packages, for build hosts without a registry.
#
#   deploy/image/make-base.sh [IMAGE]        (default: docker.io/library/debian:bookworm-slim)
#
# Does nothing when IMAGE is already in local storage (pulled or made before). Otherwise runs
# `mmdebstrap --variant=minbase` of the suite the tag names (bookworm) and imports it under exactly
# that name, so `podman build --pull=never` resolves FROM to it. The host's apt sources are reused
# when the host runs the same suite (its mirror or proxy, read here, never written in the repo).
# The host's extra CA certificates (/usr/local/share/ca-certificates: e.g. a TLS-intercepting proxy)
# are added to the base's trust store, and pip in the base is pointed at that store (pip otherwise
# trusts only its bundled certifi): TLS stays verified, against the CAs this host trusts.
set -euo pipefail

image=${1:-docker.io/library/debian:bookworm-slim}
if podman image exists "$image"; then
  echo "base image $image is present"
  exit 0
fi
tag=${image##*:}
suite=${tag%%-*}
case "$image" in
  */debian:*) ;;
  *) echo "make-base.sh makes Debian bases only; pull $image from a registry instead" >&2; exit 2 ;;
esac
command -v mmdebstrap >/dev/null || { echo "mmdebstrap is missing: make container-tools installs it" >&2; exit 2; }

# shellcheck disable=SC1091
host_suite=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
sources=()
if [[ "$host_suite" == "$suite" ]]; then
  for file in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
    [[ -s "$file" ]] && sources+=("$file")
  done
fi
if [[ ${#sources[@]} -eq 0 ]]; then
  sources=("deb http://deb.debian.org/debian $suite main"
           "deb http://deb.debian.org/debian $suite-updates main"
           "deb http://deb.debian.org/debian-security $suite-security main")
fi

# A host whose apt reads a dated snapshot mirror turns Valid-Until off; the base then must too.
aptopts=()
if apt-config dump 2>/dev/null | grep -q '^Acquire::Check-Valid-Until "false";'; then
  aptopts+=(--aptopt='Acquire::Check-Valid-Until "false"')
fi

hooks=()
shopt -s nullglob
extra_certs=(/usr/local/share/ca-certificates/*.crt)
if [[ ${#extra_certs[@]} -gt 0 ]]; then
  hooks+=(--customize-hook="copy-in ${extra_certs[*]} /usr/local/share/ca-certificates/"
          --customize-hook='chroot "$1" update-ca-certificates'
          --customize-hook='printf "[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n" > "$1/etc/pip.conf"')
fi

echo "making $image: mmdebstrap --variant=minbase $suite (${#extra_certs[@]} extra CA certificates)"
# Like the official -slim images: no man pages, docs or translations.
mmdebstrap --variant=minbase --include=ca-certificates \
  --dpkgopt='path-exclude=/usr/share/man/*' \
  --dpkgopt='path-exclude=/usr/share/doc/*' \
  --dpkgopt='path-include=/usr/share/doc/*/copyright' \
  --dpkgopt='path-exclude=/usr/share/locale/*' \
  --dpkgopt='path-exclude=/usr/share/info/*' \
  "${aptopts[@]}" "${hooks[@]}" \
  "$suite" - "${sources[@]}" \
  | podman import --change 'CMD ["bash"]' - "$image"
podman image exists "$image"
echo "made $image"

#!/usr/bin/env bash
# Air-gapped base image bootstrap (R-IMG-4).
#
# Sites that cannot reach a container registry can still reach a Debian package mirror.
# This builds a Debian minbase root filesystem with debootstrap from that mirror and
# imports it into the local engine under the tag the core image's BASE_IMAGE expects
# (debian:bookworm-slim by default), trimmed the way Docker's official slim images are.
#
# Usage: images/base/bootstrap.sh [--mirror URL] [--suite NAME] [--tag REF] [--force]
# Environment defaults: DOCKYARD_DEBIAN_MIRROR, DOCKYARD_DEBIAN_SUITE, DOCKYARD_BASE_TAG.
set -euo pipefail

mirror="${DOCKYARD_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
suite="${DOCKYARD_DEBIAN_SUITE:-bookworm}"
tag="${DOCKYARD_BASE_TAG:-debian:bookworm-slim}"
force=0

die() {
  echo "ERROR: $*" >&2
  exit 1
}

usage() {
  sed -n '2,/^set -euo/p' "$0" | sed -e '/^set -euo/d' -e 's/^# \{0,1\}//'
}

while [ $# -gt 0 ]; do
  case "$1" in
    --mirror) [ $# -ge 2 ] || die "--mirror needs a URL"; mirror="$2"; shift 2 ;;
    --suite) [ $# -ge 2 ] || die "--suite needs a Debian suite name"; suite="$2"; shift 2 ;;
    --tag) [ $# -ge 2 ] || die "--tag needs an image reference"; tag="$2"; shift 2 ;;
    --force) force=1; shift ;;
    -h | --help) usage; exit 0 ;;
    *) die "unknown argument '$1' (allowed: --mirror URL, --suite NAME, --tag REF, --force)" ;;
  esac
done

case "$mirror" in
  http://* | https://* | file://*) ;;
  *) die "mirror '$mirror' is not a URL (allowed: http://, https:// or file:// URL of a Debian mirror)" ;;
esac
[[ "$suite" =~ ^[a-z][a-z0-9-]*$ ]] || die "suite '$suite' is not a Debian suite name (e.g. bookworm)"
[[ "$tag" =~ ^[a-z0-9][a-z0-9._/:-]*$ ]] || die "tag '$tag' is not a valid image reference (e.g. debian:bookworm-slim)"

command -v docker >/dev/null 2>&1 || die "the docker client is not installed (Debian: apt-get install docker.io)"
docker version --format '{{.Server.Version}}' >/dev/null 2>&1 ||
  die "no Docker daemon answers at ${DOCKER_HOST:-unix:///var/run/docker.sock}; start dockerd first"

if [ "$force" -eq 0 ] && docker image inspect "$tag" >/dev/null 2>&1; then
  echo "base image $tag already present; skipping (use --force to rebuild)"
  exit 0
fi

command -v debootstrap >/dev/null 2>&1 || die "debootstrap is not installed (Debian: apt-get install debootstrap)"
[ "$(id -u)" -eq 0 ] || die "debootstrap needs root (run as root or with sudo)"

rootfs="$(mktemp -d "${TMPDIR:-/tmp}/dockyard-rootfs.XXXXXX")"
trap 'rm -rf "$rootfs"' EXIT

echo "bootstrapping Debian $suite (minbase) from $mirror"
debootstrap --variant=minbase "$suite" "$rootfs" "$mirror" >"$rootfs.log" 2>&1 || {
  tail -n 20 "$rootfs.log" >&2
  rm -f "$rootfs.log"
  die "debootstrap of $suite from $mirror failed (see the lines above)"
}
rm -f "$rootfs.log"

# What Docker's official slim images do: keep docs, man pages and apt caches out of every
# later layer too, so images built FROM this base stay small.
cat >"$rootfs/etc/dpkg/dpkg.cfg.d/docker-slim" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
EOF
cat >"$rootfs/etc/apt/apt.conf.d/docker-clean" <<'EOF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
EOF
echo 'APT::Install-Recommends "false";' >"$rootfs/etc/apt/apt.conf.d/docker-no-recommends"
# The exclusions above only govern later installs; apply them to what debootstrap laid down.
find "$rootfs/usr/share/doc" -mindepth 1 ! -name copyright ! -type d -delete
find "$rootfs/usr/share/doc" -mindepth 1 -type d -empty -delete
find "$rootfs/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name locale.alias -exec rm -rf {} +
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/* \
  "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/*

tar --numeric-owner -C "$rootfs" -c . |
  docker import \
    --change 'CMD ["bash"]' \
    --change 'ENV LANG=C.UTF-8' \
    --change "LABEL org.opencontainers.image.source=dockyard-bootstrap dockyard.base.mirror=$mirror dockyard.base.suite=$suite" \
    - "$tag" >/dev/null

# Self-check: the imported image must run and be the suite we asked for.
codename="$(docker run --rm "$tag" sh -c '. /etc/os-release && echo "$VERSION_CODENAME"')"
[ "$codename" = "$suite" ] || die "imported $tag reports suite '$codename', expected '$suite'"
echo "imported $tag ($(docker image inspect --format '{{.Size}}' "$tag") bytes) from $mirror"

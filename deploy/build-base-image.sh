#!/usr/bin/env bash
# Make the base image deploy/Dockerfile starts FROM (default debian:bookworm-slim)
# without pulling anything: debootstrap a minimal Debian bookworm and `docker import`
# it. Runs as root (debootstrap needs it). Idempotent: an image already present under
# that name is kept. The temporary root is removed on every exit path.
#   usage: deploy/build-base-image.sh [IMAGE]      env: DEBIAN_MIRROR, DEBIAN_SECURITY_MIRROR
set -euo pipefail

image=${1:-debian:bookworm-slim}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
security=${DEBIAN_SECURITY_MIRROR:-${mirror%/debian}/debian-security}

if docker image inspect "$image" >/dev/null 2>&1; then
  echo "base image $image already present"
  exit 0
fi
if ! command -v debootstrap >/dev/null; then
  echo "build-base-image: debootstrap is missing (apt-get install debootstrap)" >&2
  exit 1
fi

root=$(mktemp -d "${TMPDIR:-/tmp}/claude-hooks-base.XXXXXX")
cleanup() {
  # debootstrap mounts /proc and /sys inside the root while it works: unmount whatever
  # a failed run left there before removing it, and never cross into another filesystem.
  awk -v root="$root/" 'index($2, root) == 1 { print $2 }' /proc/self/mounts |
    sort -r | while read -r mount; do umount -l "$mount" || true; done
  rm -rf --one-file-system "$root"
}
trap cleanup EXIT

started=$(date +%s)
debootstrap --variant=minbase bookworm "$root" "$mirror"

# What the official slim image does: same suites, no docs, man pages or apt caches.
cat >"$root/etc/apt/sources.list" <<EOF
deb $mirror bookworm main
deb $mirror bookworm-updates main
deb $security bookworm-security main
EOF
cat >"$root/etc/dpkg/dpkg.cfg.d/docker-slim" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
EOF
printf 'APT::Install-Recommends "false";\n' >"$root/etc/apt/apt.conf.d/docker-no-recommends"
find "$root/usr/share/doc" -mindepth 2 ! -name copyright -delete 2>/dev/null || true
rm -rf "$root"/usr/share/man/* "$root"/usr/share/info/* "$root"/usr/share/locale/* \
  "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* \
  "$root"/var/log/*.log "$root"/tmp/*

tar --numeric-owner -C "$root" -c . |
  docker import --change 'CMD ["bash"]' --change 'ENV LANG=C.UTF-8' - "$image" >/dev/null
echo "base image $image built in $(($(date +%s) - started)) s"

#!/bin/sh
# Build the Docker test image (default claude-hooks-test:latest) from tests/docker/.
# Nothing is pulled: the image is FROM scratch around the host's static busybox
# (Debian package busybox-static). Idempotent and quick: when an image built from
# the same inputs exists (label claude-hooks.test-image-inputs), nothing is built.
set -eu

image=${1:-claude-hooks-test:latest}
busybox=${BUSYBOX:-/bin/busybox}
here=$(cd "$(dirname "$0")" && pwd)
samples="$here/../data/claude-samples"

if [ ! -x "$busybox" ]; then
    echo "build-test-image: no static busybox at $busybox (apt-get install busybox-static, or set BUSYBOX=PATH)" >&2
    exit 1
fi

context=$(mktemp -d)
trap 'rm -rf "$context"' EXIT
cp "$here/Dockerfile" "$here/fake-claude.sh" "$here/passwd" "$here/group" "$context/"
cp "$busybox" "$context/busybox"
mkdir "$context/samples"
cp "$samples"/*.jsonl "$context/samples/"
chmod 755 "$context/fake-claude.sh" "$context/busybox"
chmod 644 "$context/samples"/*.jsonl "$context/passwd" "$context/group"

inputs=$(cd "$context" && find . -type f | LC_ALL=C sort | xargs sha256sum | sha256sum | cut -c1-16)
built=$(docker image inspect --format '{{ index .Config.Labels "claude-hooks.test-image-inputs" }}' \
    "$image" 2>/dev/null || true)
if [ "$built" = "$inputs" ]; then
    exit 0
fi

# The legacy builder: present with every engine, and enough for a FROM scratch image.
# Its output (a deprecation notice on success) is shown only when the build fails.
if ! output=$(DOCKER_BUILDKIT=0 docker build --label "claude-hooks.test-image-inputs=$inputs" \
    --tag "$image" "$context" 2>&1); then
    printf '%s\n' "$output" >&2
    echo "build-test-image: building $image failed" >&2
    exit 1
fi
# The image this one replaced, now untagged, is of no further use.
docker image prune --force --filter "label=claude-hooks.test-image-inputs" >/dev/null 2>&1 || true
echo "build-test-image: built $image ($inputs)"

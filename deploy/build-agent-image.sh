#!/usr/bin/env bash
# Build the agent image (default claude-hooks-agent:latest) from deploy/Dockerfile:
# first the local Debian base (deploy/build-base-image.sh: nothing is pulled), then the
# image, with the build's network on the host (apt and npm reach their registries the
# way this machine does). A host that trusts extra CAs in /usr/local/share/ca-certificates
# (a TLS-intercepting proxy) hands them to the npm stage; they do not reach the image.
#   usage: deploy/build-agent-image.sh [TAG]
#   env: CLAUDE_CODE_VERSION to override the pin, AGENT_UID for the agent user's uid:gid
#   (default 100000; agents.user must name the same)
set -euo pipefail
cd "$(dirname "$0")"

tag=${1:-claude-hooks-agent:latest}
bash ./build-base-image.sh

args=(--network host -t "$tag" -f Dockerfile)
if [ -n "${CLAUDE_CODE_VERSION:-}" ]; then
  args+=(--build-arg "CLAUDE_CODE_VERSION=$CLAUDE_CODE_VERSION")
fi
if [ -n "${AGENT_UID:-}" ]; then
  args+=(--build-arg "AGENT_UID=$AGENT_UID")
fi
shopt -s nullglob
local_cas=(/usr/local/share/ca-certificates/*.crt)
if [ ${#local_cas[@]} -gt 0 ]; then
  args+=(--build-arg "EXTRA_CA_CERTS=$(cat "${local_cas[@]}")")
fi

started=$(date +%s)
docker build "${args[@]}" .
docker run --rm --network none "$tag" claude --version
echo "agent image $tag built in $(($(date +%s) - started)) s"

#!/bin/sh
# Build the Docker test image (default claude-hooks-test:latest): the scripted agent
# image of claude_hooks/demo/agent_image.py. Nothing is pulled; idempotent (an image
# built from the same inputs is reused).
set -eu
exec python3 -m claude_hooks.demo.agent_image "${1:-claude-hooks-test:latest}"

# claude-hooks: thin recipes over the `claude-hooks` command and the files in deploy/.
# Everything a recipe does, the CLI (or docker/systemctl) does too; see docs/OPERATIONS.md.
# `just --list` shows the recipes; `just --dry-run RECIPE` prints what one would run.

set shell := ["bash", "-euo", "pipefail", "-c"]
# Recipe arguments reach the commands as "$@": agent names and flags stay single words.
set positional-arguments := true

# The image agents use by default (agents.image in deploy/config.example.toml).
image_tag := env_var_or_default("CLAUDE_HOOKS_IMAGE", "claude-hooks-agent:latest")

# List the recipes
default:
    @just --list

# Install the CLI (pipx, else a venv), the systemd user unit, and a config if none exists
install:
    #!/usr/bin/env bash
    set -euo pipefail
    bin="$HOME/.local/bin"
    share="${XDG_DATA_HOME:-$HOME/.local/share}/claude-hooks"
    config="${XDG_CONFIG_HOME:-$HOME/.config}/claude-hooks/config.toml"
    units="${XDG_CONFIG_HOME:-$HOME/.config}/systemd/user"
    # The `journal` extra (cysystemd) logs natively to the journal, with fields; where it
    # has no wheel (glibc < 2.34) the daemon writes `<N>` lines instead, which journald reads.
    nojournal="no cysystemd for this platform: the daemon logs to the journal as <N> lines"
    if command -v pipx >/dev/null; then
        PIPX_BIN_DIR="$bin" pipx install --force .
        pipx inject claude-hooks 'cysystemd>=2.0' || echo "$nojournal"
    else
        python3 -m venv "$share/venv"
        pip=("$share/venv/bin/pip" install --quiet --disable-pip-version-check --upgrade)
        "${pip[@]}" '.[journal]' || { echo "$nojournal"; "${pip[@]}" .; }
        mkdir -p "$bin"
        ln -sfn "$share/venv/bin/claude-hooks" "$bin/claude-hooks"
    fi
    # The unit runs %h/.local/bin/claude-hooks: make sure that is what was installed.
    "$bin/claude-hooks" --version
    install -D -m 0644 README.md "$share/README.md"
    install -D -m 0644 docs/OPERATIONS.md "$share/OPERATIONS.md"
    install -D -m 0644 deploy/claude-hooks.service "$units/claude-hooks.service"
    systemctl --user daemon-reload
    systemctl --user enable claude-hooks
    if [ -e "$config" ]; then
        echo "kept the existing $config"
    else
        install -D -m 0600 deploy/config.example.toml "$config"
        echo "wrote $config from deploy/config.example.toml: edit it"
    fi
    echo "next: claude-hooks check, then systemctl --user start claude-hooks"

# Create missing agent containers and start stopped ones (all agents, or the ones named)
containers-up *AGENTS:
    claude-hooks containers up "$@"

# Stop agent containers; state volumes stay (--force stops running tasks)
containers-down *AGENTS:
    claude-hooks containers down "$@"

# Recreate agent containers from the current image and config (--force: under running tasks)
containers-rebuild *AGENTS:
    claude-hooks containers rebuild "$@"

# Print (-f: follow) agent containers' own output
containers-logs *AGENTS:
    claude-hooks containers logs "$@"

# Open a shell in an agent's container, as the agent user
containers-shell AGENT:
    claude-hooks containers shell "$@"

# Build the Debian base image locally (debootstrap; nothing is pulled)
base-image:
    bash deploy/build-base-image.sh

# Build the agent image from deploy/Dockerfile, and its base if missing (tag: $CLAUDE_HOOKS_IMAGE)
image:
    bash deploy/build-agent-image.sh {{ image_tag }}

# Validate the config and reach Forgejo, the tokens and Docker (--offline: config only)
check *ARGS:
    claude-hooks check "$@"

# A mention becomes a finished task, locally, against the Forgejo simulator
demo *ARGS:
    claude-hooks demo "$@"

# Follow the daemon's log
logs:
    journalctl --user -u claude-hooks -f -o cat

# The test suite (the README's test command)
test *ARGS:
    python3 -m pytest -q -ra "$@"

# The benchmarks (they print a table; not part of the test run)
bench *ARGS:
    python3 -m bench "$@"

"""Subcommands added by a later change."""

from __future__ import annotations

from claude_hooks.cli import AddCommand


def register(add: AddCommand) -> None:
    """Add this module's subcommands to the `claude-hooks` parser."""

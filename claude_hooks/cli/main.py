"""The `claude-hooks` command: argparse subcommands, each a thin call into a module."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import structlog

from claude_hooks import __version__
from claude_hooks.config import Config, ConfigError, load_config
from claude_hooks.daemon.journal import cli_line

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2


def _load(args: argparse.Namespace) -> Config:
    """The config `check` and `run` use: valid, its stop fits the unit's TimeoutStopSec,
    and its prompt files are templates the worker can use."""
    from claude_hooks.cli.check import check_prompt_files
    from claude_hooks.daemon.budget import check_shutdown_budget

    config = load_config(args.config)
    check_shutdown_budget(config)
    check_prompt_files(config)
    return config


def cmd_version(args: argparse.Namespace) -> int:
    print(f"claude-hooks {__version__}")
    return EXIT_OK


def cmd_check(args: argparse.Namespace) -> int:
    from claude_hooks.cli.check import run_checks

    try:
        config = _load(args)
    except ConfigError as exc:
        cli_line(f"FAIL config: {exc}", "error", sys.stdout)
        return EXIT_FAIL
    results = asyncio.run(run_checks(config, offline=args.offline))
    for result in results:
        cli_line(result.line(), result.level, sys.stdout)
    return EXIT_OK if all(r.ok for r in results) else EXIT_FAIL


def cmd_run(args: argparse.Namespace) -> int:
    config = _load(args)
    from claude_hooks.api.connections import FileLimitTooLow
    from claude_hooks.daemon.log import setup_logging
    from claude_hooks.daemon.main import EXIT_CONFIG, EXIT_CRASHED, EXIT_STORE, run_daemon
    from claude_hooks.daemon.services import ListenError
    from claude_hooks.store import StoreError

    setup_logging(config.daemon.log_format, args.log_level or config.daemon.log_level)
    log = structlog.get_logger(__name__)
    try:
        return asyncio.run(run_daemon(config))
    except StoreError as exc:  # a broken state dir is the operator's to fix: say so, no traceback
        # Also the state dir held by another daemon (daemon/lock.py): the error names its pid.
        log.error("daemon_start_failed", path=exc.path, error=str(exc))
        return EXIT_STORE
    except ListenError as exc:  # api.listen cannot be bound: the setting names the fix
        log.error("daemon_start_failed", key="api.listen", error=str(exc))
        return EXIT_CONFIG
    except FileLimitTooLow as exc:  # the unit's LimitNOFILE= (or ulimit -n) names the fix
        log.error("daemon_start_failed", key="LimitNOFILE", error=str(exc))
        return EXIT_CONFIG
    except Exception:  # through the log, not Python's bare traceback: at error priority
        log.exception("daemon_crashed")
        return EXIT_CRASHED


Handler = Callable[[argparse.Namespace], int]
AddCommand = Callable[[str, Handler, str], argparse.ArgumentParser]

# Each module adds its subcommands through register(add): the API client commands
# (submit, tasks, show, logs, cancel), `containers …` and `demo`.
_COMMAND_MODULES = (
    "claude_hooks.cli.client",
    "claude_hooks.cli.containers",
    "claude_hooks.demo.command",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="claude-hooks",
        description="Mention an AI agent on Forgejo and get real work back.",
    )
    parser.add_argument("--version", action="version", version=f"claude-hooks {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config",
        type=Path,
        default=None,
        help="config file (default: $XDG_CONFIG_HOME/claude-hooks/config.toml)",
    )
    common.add_argument(
        "--log-level",
        choices=["debug", "info", "warning", "error"],
        default=None,
        help="override daemon.log_level",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(name: str, handler: Handler, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, parents=[common], help=help, description=help)
        p.set_defaults(handler=handler)
        return p

    add("run", cmd_run, "run the daemon (polling, webhooks, API, tasks) until SIGTERM")
    check = add("check", cmd_check, "validate the config and reach Forgejo, tokens and Docker")
    check.add_argument("--offline", action="store_true", help="validate the config only")
    add("version", cmd_version, "print the version")
    for module in _COMMAND_MODULES:
        importlib.import_module(module).register(add)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except ConfigError as exc:
        cli_line(f"claude-hooks: config error: {exc}")
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130

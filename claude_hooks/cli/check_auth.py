"""`claude-hooks check`: how each agent's Claude logs in, and whether that can work.

One line per agent: the auth mode and its file, whether the daemon can read it and
nobody else can, and for a credentials file when its access token expires and
whether a refresh token is there to renew it. Never a secret's value.
"""

from __future__ import annotations

import json
import stat
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from claude_hooks.config import AgentConfig, AuthMode, Config
from claude_hooks.redact import redactor

_MS_THRESHOLD = 10**11  # expiresAt above this is milliseconds (Claude Code writes ms)


def login_reports(config: Config, now: float | None = None) -> list[tuple[str, bool, str]]:
    """(check name, ok, detail) per agent; a detail starting "warning:" is a warning."""
    moment = time.time() if now is None else now
    return [login_report(agent, moment) for agent in config.agents]


def login_report(agent: AgentConfig, now: float) -> tuple[str, bool, str]:
    name = f"claude login of agent {agent.name}"
    file = agent.auth_file
    if file is None:  # the loader refuses this; said plainly all the same
        return name, False, "no credentials_file, oauth_token_file or api_key_file"
    where = f"{agent.auth.value} {file}"
    try:
        mode = file.stat().st_mode
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        return name, False, f"{where}: cannot read: {reason}"
    redactor.learn(text)  # what follows may quote the file; never its secrets
    if not text.strip():
        return name, False, f"{where} is empty"
    exposed = bool(mode & (stat.S_IRWXG | stat.S_IRWXO))
    parts = ["readable" if exposed else "readable and private"]
    warn = exposed
    if exposed:
        parts.append(
            f"but group or others can read it too (mode {stat.S_IMODE(mode):04o}; chmod 600)"
        )
    if agent.auth is AuthMode.CREDENTIALS:
        fact = credentials_fact(text, now)
        if isinstance(fact, str):
            return name, False, f"{where}: {fact}"
        parts.append(fact.text)
        warn = warn or fact.warn
    detail = f"{where}: " + "; ".join(parts)
    return name, True, f"warning: {detail}" if warn else detail


@dataclass(frozen=True)
class TokenFact:
    text: str
    warn: bool = False  # expired with nothing to renew it


def credentials_fact(text: str, now: float) -> TokenFact | str:
    """What a .credentials.json says about its access token; or, as a str, why it is
    unusable."""
    try:
        data: Any = json.loads(text)
    except ValueError:
        return "not JSON (a .credentials.json from `claude /login` is)"
    oauth = data.get("claudeAiOauth") if isinstance(data, dict) else None
    if not isinstance(oauth, dict) or not oauth.get("accessToken"):
        return "has no claudeAiOauth.accessToken (log in again: claude /login)"
    has_refresh = bool(oauth.get("refreshToken"))
    expires = oauth.get("expiresAt")
    refresh = "a refresh token renews it" if has_refresh else "no refresh token"
    if not isinstance(expires, int | float) or isinstance(expires, bool):
        return TokenFact(f"no expiresAt, {refresh}")
    seconds = expires / 1000 if expires > _MS_THRESHOLD else float(expires)
    when = datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M UTC")
    if seconds > now:
        return TokenFact(f"access token expires {when}, {refresh}")
    if has_refresh:
        return TokenFact(
            f"access token expired {when}; Claude Code renews it with the refresh token"
        )
    return TokenFact(
        f"access token expired {when} and no refresh token: log in again "
        "(docs/OPERATIONS.md, Claude login)",
        warn=True,
    )

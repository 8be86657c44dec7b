"""Write real config files and secret files for tests, the way an operator would."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from claude_hooks.config import Config, load_config
from claude_hooks.demo.toml import toml_table, toml_value  # noqa: F401  (tests import them here)


class ConfigFactory:
    """Makes a valid config in a temp dir; tests override sections to break it."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def secret(self, name: str, value: str, mode: int = 0o600) -> Path:
        path = self.root / "secrets" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(value + "\n")
        os.chmod(path, mode)
        return path

    def agent(self, name: str = "dev", **overrides: Any) -> dict[str, Any]:
        values: dict[str, Any] = {
            "name": name,
            "role": "dev",
            "token_file": str(self.secret(f"token-{name}", f"forgejo-token-of-{name}-0123456789")),
            "credentials_file": str(
                self.secret(
                    f"creds-{name}.json",
                    '{"claudeAiOauth": {"accessToken": "oauth-' + name + '-abcdef"}}',
                )
            ),
        }
        values.update(overrides)
        # None drops a key: credentials_file=None for an agent with another auth mode.
        return {key: value for key, value in values.items() if value is not None}

    def text(
        self,
        *,
        forgejo: dict[str, Any] | None = None,
        daemon: dict[str, Any] | None = None,
        api: dict[str, Any] | None = None,
        agents: list[dict[str, Any]] | None = None,
    ) -> str:
        out = toml_table(
            "[forgejo]",
            {"url": "http://127.0.0.1:3000", "repositories": ["acme/*"], **(forgejo or {})},
        )
        out += toml_table("[daemon]", {"state_dir": str(self.root / "state"), **(daemon or {})})
        if api is not None:
            out += toml_table("[api]", api)
        for agent in agents if agents is not None else [self.agent()]:
            out += toml_table("[[agents]]", agent)
        return out

    def write(self, text: str | None = None, **sections: Any) -> Path:
        path = self.root / "config.toml"
        path.write_text(text if text is not None else self.text(**sections))
        return path

    def load(self, **sections: Any) -> Config:
        return load_config(self.write(**sections))

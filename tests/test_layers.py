"""The packages are layered by pipeline stage: a lower layer never imports a higher one.

tasks, config, text, redact, metrics  →  forgejo, store  →  intake, runner, report
→  work  →  api  →  daemon  →  cli; nothing imports demo (the CLI finds its command
by name). A module may import its own layer and the layers below, never one above.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

PACKAGE = REPO_ROOT / "claude_hooks"
LAYERS: dict[str, int] = {
    **dict.fromkeys(("tasks", "config", "text", "redact", "metrics", "precedence", "__init__"), 0),
    **dict.fromkeys(("forgejo", "store"), 1),
    **dict.fromkeys(("intake", "runner", "report"), 2),
    "work": 3,
    "api": 4,
    "daemon": 5,  # composes everything below it, the HTTP API included
    "cli": 6,
    "__main__": 6,
    "demo": 7,
}


def unit_of(module: str) -> str:
    """claude_hooks.intake.poller → intake; claude_hooks.config → config."""
    return module.split(".")[1] if "." in module else "__init__"


def imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {name for name in found if name.startswith("claude_hooks.")}


def module_files() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def violations() -> list[str]:
    found = []
    for path in module_files():
        own = unit_of("claude_hooks." + ".".join(path.relative_to(PACKAGE).with_suffix("").parts))
        for target in sorted(imports_of(path)):
            other = unit_of(target)
            if other == own:
                continue
            if other == "demo" or LAYERS[other] > LAYERS[own]:
                found.append(f"{path.relative_to(REPO_ROOT)} imports {target}")
    return found


def test_every_package_has_a_layer() -> None:
    units = {p.relative_to(PACKAGE).parts[0].removesuffix(".py") for p in module_files()}
    assert units - set(LAYERS) == set()


def test_no_lower_layer_imports_a_higher_one() -> None:
    assert violations() == []


@pytest.mark.parametrize("source", ["intake", "store", "work", "runner", "report"])
def test_the_check_fails_when_a_lower_layer_reaches_up(
    source: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # A check that cannot fail is a defect: plant an upward import and see it caught.
    package = tmp_path / "claude_hooks"
    (package / source).mkdir(parents=True)
    (package / source / "planted.py").write_text("from claude_hooks.daemon import services\n")
    monkeypatch.setattr(__name__ + ".PACKAGE", package)
    monkeypatch.setattr(__name__ + ".REPO_ROOT", tmp_path)
    assert violations() == [f"claude_hooks/{source}/planted.py imports claude_hooks.daemon"]

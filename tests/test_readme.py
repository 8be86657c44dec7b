"""The README is the newcomer's contract: its commands run, its config loads."""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path

import pytest

from claude_hooks.config import parse_config
from tests.conftest import REPO_ROOT

README = (REPO_ROOT / "README.md").read_text()
CI_RUN = (REPO_ROOT / ".ci" / "run").read_text()


def code_blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README, re.S)


def quick_start() -> list[str]:
    first = code_blocks("sh")[0]
    return [line.split("#")[0].strip() for line in first.splitlines() if line.strip()]


def test_readme_opens_with_install_and_run_then_the_tests() -> None:
    assert README.index("```sh") < README.index("claude-hooks lets a team")
    install_and_run, tests = quick_start()
    assert install_and_run == "pip install . && claude-hooks demo"
    assert tests.endswith("python3 -m pytest -q -ra")


def test_ci_runs_the_readme_test_command() -> None:
    test_command = quick_start()[1].split("&&")[-1].strip()
    assert re.search(rf"^{re.escape(test_command)}$", CI_RUN, re.M), test_command
    install = quick_start()[1].split("&&")[0].strip()
    assert "-e '.[test]'" in install and "-e '.[test]'" in CI_RUN


def test_readme_config_loads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = next(block for block in code_blocks("toml") if "[forgejo]" in block)
    monkeypatch.setenv("HOME", str(tmp_path))
    for rel in re.findall(r'"~/([^"]+)"', text):
        file = tmp_path / rel
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_text("secret-for-the-readme-test\n")
        os.chmod(file, 0o600)
    config = parse_config(tomllib.loads(text), REPO_ROOT / "README.md")
    assert config.agent_names == ("dev", "reviewer")
    assert config.daemon.drain_timeout == 240 and config.api.listen == "127.0.0.1:8765"


def test_readme_commands_are_real_subcommands() -> None:
    from claude_hooks.cli.main import build_parser

    known = set(build_parser()._subparsers._group_actions[0].choices)  # type: ignore[union-attr]
    used = set(re.findall(r"^\s*claude-hooks ([a-z-]+)", "\n".join(code_blocks("sh")), re.M))
    assert used and used <= known, used - known


# --- the design notes live in docs/, and every citation resolves ---------------------------

DOCS = REPO_ROOT / "docs"
PACKAGES = (
    "api",
    "cli",
    "daemon",
    "demo",
    "forgejo",
    "intake",
    "report",
    "runner",
    "store",
    "work",
)
TEXT_SUFFIXES = {".py", ".md", ".toml", ".sh", ".service", ".txt", ".cfg"}
# A path outside the repository, however it is spelt: ../shared/…, shared/claude/…, DESIGN.md.
# "services/webhook/shared/payloader.go" (a file in Forgejo's own source) is not one.
OUTSIDE = re.compile(r"(?<![\w/.-])(?:\.\./)*shared/|\bDESIGN\.md\b")
DOC_CITE = re.compile(r"(?<![\w/.-])docs/([\w.-]+\.md)\b")
REPO_PATH = re.compile(r"(?<![\w/.<-])((?:claude_hooks|tests|deploy|docs|examples)/[\w/.-]*\w)")
MODULE_PATH = re.compile(rf"(?<![\w/.<-])((?:{'|'.join(PACKAGES)})/[\w/-]*\w\.(?:py|md|json))\b")
MD_LINK = re.compile(r"\]\(([^)\s#]+)(?:#[^)]*)?\)")


def readable_files() -> list[Path]:
    """README and every text file of the package, the docs, the tests and the benchmarks."""
    files = [REPO_ROOT / "README.md"]
    for top in ("claude_hooks", "docs", "tests", "bench", "deploy"):
        files += [
            path
            for path in sorted((REPO_ROOT / top).rglob("*"))
            if path.is_file()
            and (path.suffix in TEXT_SUFFIXES or path.name == "Dockerfile")
            and not any(part.startswith(".") or part == "__pycache__" for part in path.parts)
        ]
    return [path for path in files if path != Path(__file__).resolve()]


def test_nothing_cites_a_document_outside_the_repository() -> None:
    cited = [
        f"{path.relative_to(REPO_ROOT)}:{number}: {line.strip()}"
        for path in readable_files()
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1)
        if OUTSIDE.search(line)
    ]
    assert cited == []


def test_every_cited_doc_exists() -> None:
    missing = {
        f"{path.relative_to(REPO_ROOT)}: docs/{name}"
        for path in readable_files()
        if not path.is_relative_to(REPO_ROOT / "tests")  # test data names docs/ of repos too
        for name in DOC_CITE.findall(path.read_text(errors="replace"))
        if not (DOCS / name).is_file()
    }
    assert missing == set()


def test_the_docs_and_readme_name_only_files_that_exist() -> None:
    """A module moved or renamed must take its mentions in docs/ and the README along."""
    missing = set()
    for doc in [REPO_ROOT / "README.md", *sorted(DOCS.glob("*.md"))]:
        text = doc.read_text()
        where = doc.relative_to(REPO_ROOT)
        missing |= {
            f"{where}: {p}" for p in REPO_PATH.findall(text) if not (REPO_ROOT / p).exists()
        }
        missing |= {
            f"{where}: {p}"
            for p in MODULE_PATH.findall(text)
            if not (REPO_ROOT / "claude_hooks" / p).exists()
        }
        missing |= {
            f"{where}: ({link})"
            for link in MD_LINK.findall(text)
            if "://" not in link and not (doc.parent / link).exists()
        }
    assert missing == set()


def test_the_package_code_cites_only_files_that_exist() -> None:
    package = REPO_ROOT / "claude_hooks"
    missing = {
        f"{path.relative_to(REPO_ROOT)}: {p}"
        for path in sorted(package.rglob("*.py"))
        for p in REPO_PATH.findall(path.read_text())
        if p.startswith(("claude_hooks/", "docs/")) and not (REPO_ROOT / p).exists()
    }
    assert missing == set()


def test_readme_diagram_names_the_packages_in_the_order_data_visits_them() -> None:
    diagram = README[README.index("## Architecture") :].split("```")[1]
    rows = [line.split()[0] for line in diagram.splitlines() if re.match(r"^ \w+/ ", line)]
    assert rows[:5] == ["intake/", "store/", "work/", "runner/", "report/"]
    for package in PACKAGES:
        assert f"{package}/" in diagram, package
    for doc in ("ARCHITECTURE", "FORGEJO", "CLAUDE-CLI", "VERDICTS", "OPERATIONS"):
        assert f"](docs/{doc}.md)" in README, doc


def test_the_architecture_follows_a_task_through_the_packages_in_order() -> None:
    flow = (DOCS / "ARCHITECTURE.md").read_text().split("## The flow of one task", 1)[1]
    headings = re.findall(r"^### \d+\. .*\(`([\w/ →`]+)`\)$", flow, re.M)
    order = [package for heading in headings for package in re.findall(r"(\w+)/", heading)]
    assert order == ["intake", "store", "work", "runner", "work", "report"]

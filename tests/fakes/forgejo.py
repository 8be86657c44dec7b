"""The Forgejo simulator for tests, contract-checked: a pytest plugin module.

Registered from tests/conftest.py (`pytest_plugins = ["tests.fakes.forgejo"]`).
Every test that uses the `forgejo_sim` fixture has each API request it caused,
and each answer the simulator gave, checked against Forgejo's OpenAPI
description when the test ends (tests/contract.py); a violation fails the test.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from claude_hooks.demo.sim.forgejo import ForgejoSim, RecordedRequest
from claude_hooks.demo.sim.state import SimClock, SimError
from tests.contract import ForgejoContract, forgejo_contract

__all__ = [
    "ForgejoSim",
    "RecordedRequest",
    "SimClock",
    "SimError",
    "Team",
    "add_team",
    "forgejo_contract_checker",
    "forgejo_sim",
]

TEAM_REPO = "acme/app"


@dataclass(frozen=True)
class Team:
    """A small team on the simulator: people, agents, one repository, API tokens."""

    repo: str
    tokens: dict[str, str]  # login → API token

    def token(self, login: str) -> str:
        return self.tokens[login]


def add_team(sim: ForgejoSim, repo: str = TEAM_REPO) -> Team:
    """alice (human, write), dev / reviewer / code-lead (agents, write), outsider (none)."""
    logins = ("alice", "dev", "reviewer", "code-lead", "outsider")
    tokens = {login: f"token-of-{login}-0123456789" for login in logins}
    for login in logins:
        sim.add_user(login, token=tokens[login])
    sim.add_repo(
        repo,
        collaborators={"alice": "write", "dev": "write", "reviewer": "write", "code-lead": "write"},
        private=True,
    )
    return Team(repo, tokens)


def assert_contract(sim: ForgejoSim, contract: ForgejoContract) -> None:
    violations = contract.check_all(sim.all_requests)
    if violations:
        listed = "\n  ".join(violations)
        pytest.fail(f"{len(violations)} Forgejo API contract violation(s):\n  {listed}")


@pytest.fixture(scope="session")
def forgejo_contract_checker() -> ForgejoContract:
    """Forgejo's OpenAPI description, loaded once per session."""
    return forgejo_contract()


@pytest.fixture
async def forgejo_sim(forgejo_contract_checker: ForgejoContract) -> AsyncIterator[ForgejoSim]:
    """A started simulator; every request made to it is contract-checked at teardown."""
    sim = ForgejoSim()
    await sim.start()
    try:
        yield sim
    finally:
        await sim.stop()
    assert_contract(sim, forgejo_contract_checker)

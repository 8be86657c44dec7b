"""The Forgejo simulator for tests, contract-checked: a pytest plugin module.

Registered from tests/conftest.py (`pytest_plugins = ["tests.fakes.forgejo"]`).
Every test that uses the `forgejo_sim` fixture has each API request it caused,
and each answer the simulator gave, checked against Forgejo's OpenAPI
description when the test ends (tests/contract.py); a violation fails the test.
That description is not redistributed here (tests/data/SPEC-SOURCE.md): without
`$CLAUDE_HOOKS_CAPTURES/forgejo/openapi.v3.json` the tests still run, unchecked, with one
ContractNotChecked warning per session saying why; under CI=true with
CLAUDE_HOOKS_CAPTURES set (but the spec missing there) they fail instead.
"""

from __future__ import annotations

import warnings
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from claude_hooks.demo.sim.forgejo import ForgejoSim, RecordedRequest
from claude_hooks.demo.sim.state import SimClock, SimError
from tests.captures import required
from tests.contract import ForgejoContract, load_contract

__all__ = [
    "ContractNotChecked",
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


class ContractNotChecked(UserWarning):
    """The simulator tests ran without the Forgejo API contract check."""


@pytest.fixture(scope="session")
def forgejo_contract_checker() -> ForgejoContract | None:
    """Forgejo's OpenAPI description, loaded once per session; None if it is unavailable.

    Unavailable is a failure under CI=true with CLAUDE_HOOKS_CAPTURES set (the check is
    then part of what CI proves) and one warning per session otherwise: the simulator
    tests are worth running without it.
    """
    found = load_contract()
    if isinstance(found, ForgejoContract):
        return found
    if required():
        pytest.fail(f"required under CI=true: {found}")
    reason = f"simulator requests are not contract-checked: {found}"
    warnings.warn(ContractNotChecked(reason), stacklevel=1)  # points here: the fixture decides
    return None


@pytest.fixture
async def forgejo_sim(
    forgejo_contract_checker: ForgejoContract | None,
) -> AsyncIterator[ForgejoSim]:
    """A started simulator; every request made to it is contract-checked at teardown."""
    sim = ForgejoSim()
    await sim.start()
    try:
        yield sim
    finally:
        await sim.stop()
    if forgejo_contract_checker is not None:
        assert_contract(sim, forgejo_contract_checker)

"""End to end with the REAL Claude Code CLI (2.1.332): the two token logins, and a
subscription usage limit as the real service reports it (#15).

- `oauth_token_file` → the CLI sends `Authorization: Bearer <token>` (and the
  `oauth-2025-04-20` beta); `api_key_file` → `x-api-key: <key>`, no Authorization.
  Either way the secret is in the Claude exec's environment only, never in the
  container's config (`docker inspect`).
- A 429 carrying the unified rate-limit headers: the run ends on a usage limit, and the
  worker's outcome carries it (type and reset), not a plain failure.

Where the 429's shape comes from: the pinned CLI's own handling, read in the npm
package's binary (`@anthropic-ai/claude-code-linux-x64` 2.1.332, its bundled JS).
Its response-header reader takes `anthropic-ratelimit-unified-status` ("allowed" when
absent; "allowed_warning"; "rejected"), `anthropic-ratelimit-unified-reset` (unix
seconds, `Math.round(Number(...))`) and `anthropic-ratelimit-unified-representative-claim`
(the window: "five_hour", "seven_day", …) into the `rate_limit_event` it prints
(`{status, resetsAt, rateLimitType, isUsingOverage}`); its error classifier counts a
response as a rate limit when the status is 429 or the body's error type is
`rate_limit_error`, the Messages API's error shape `{"type":"error","error":{"type",
"message"}}`. The CLI does not read the message of such a body.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from claude_hooks.config import Config
from claude_hooks.daemon.services import Services
from claude_hooks.demo.sim.forgejo import ForgejoSim
from claude_hooks.tasks import Outcome, Task, UsageLimit
from claude_hooks.work.worker import TaskWorker
from tests.e2e.claude_cli import (  # noqa: F401  (installed_claude: a fixture)
    cli_agent,
    installed_claude,
    one_agent_config,
)
from tests.e2e.host_image import built_host_image  # noqa: F401
from tests.fakes.configs import ConfigFactory
from tests.fakes.messages_api import Refusal, ScriptedMessagesApi, final_turn
from tests.waiting import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.docker]

REPO = "acme/app"
# A name of its own: its container claude-hooks-<name> is not another test's "dev".
ALICE, DEV = "alice", f"auth{uuid.uuid4().hex[:8]}"
OAUTH_TOKEN = "sk-ant-oat01-e2e-oauth-token-4c1d9e"
API_KEY = "sk-ant-api03-e2e-api-key-7b20fa"
RESETS_AT = int(time.time()) + 3 * 3600  # whole seconds, as the header carries them


def usage_limit_refusal(resets_at: int, claim: str = "five_hour") -> Refusal:
    """What the service answers a subscription whose window is used up (see above)."""
    return Refusal(
        status=429,
        body={
            "type": "error",
            "error": {"type": "rate_limit_error", "message": "Usage limit reached."},
        },
        headers={
            "anthropic-ratelimit-unified-status": "rejected",
            "anthropic-ratelimit-unified-reset": str(resets_at),
            "anthropic-ratelimit-unified-representative-claim": claim,
        },
    )


Login = Callable[[ConfigFactory], dict[str, object]]


def oauth_login(factory: ConfigFactory) -> dict[str, object]:
    return {"oauth_token_file": str(factory.secret("dev-oauth", OAUTH_TOKEN))}


def api_key_login(factory: ConfigFactory) -> dict[str, object]:
    return {"api_key_file": str(factory.secret("dev-api-key", API_KEY))}


def auth_config(
    factory: ConfigFactory, sim: ForgejoSim, image: str, claude: Path, api_url: str, login: Login
) -> Config:
    sim.add_user(ALICE, token="forgejo-token-of-alice-0123456789")
    sim.add_user(DEV, token="forgejo-token-of-dev-0123456789")
    sim.add_repo(REPO, collaborators={ALICE: "write", DEV: "admin"})
    token = factory.secret("dev-token", "forgejo-token-of-dev-0123456789")
    agent = cli_agent(
        factory, DEV, claude=claude, api_url=api_url, image=image, api_key_in_env=False,
        token_file=str(token), credentials_file=None, **login(factory),
    )  # fmt: skip
    return one_agent_config(factory, sim, agent)


class Outcomes:
    """What the worker handed back for each task (before any scheduler policy)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.seen: list[Outcome] = []
        original = TaskWorker.execute

        async def execute(worker: TaskWorker, task: Task) -> Outcome:
            outcome = await original(worker, task)
            self.seen.append(outcome)
            return outcome

        monkeypatch.setattr(TaskWorker, "execute", execute)


async def run_one_task(
    forgejo_sim: ForgejoSim,
    config_factory: ConfigFactory,
    host_image: str,
    claude_binary: Path,
    api: ScriptedMessagesApi,
    login: Login,
    outcomes: Outcomes,
    test_labels: dict[str, str],
) -> tuple[Outcome, str]:
    """One mention → one run of the real CLI; its outcome and the container's config."""
    config = auth_config(
        config_factory, forgejo_sim, host_image, claude_binary, api.base_url, login
    )
    async with Services.running(
        config, daemon_id="test-e2e-auth", extra_labels=test_labels, listen=False
    ) as services:
        number = forgejo_sim.create_issue(REPO, ALICE, "Say hi", "Please.")
        forgejo_sim.add_comment(REPO, number, ALICE, f"@{DEV} please answer")
        await wait_until(lambda: outcomes.seen, timeout=90, interval=0.1, what="the run to end")
        container = await services.docker.containers.get(config.agents[0].container_name)
        return outcomes.seen[0], json.dumps(container._container)


@pytest.fixture
def outcomes(monkeypatch: pytest.MonkeyPatch) -> Outcomes:
    return Outcomes(monkeypatch)


@pytest.fixture
async def answering_api() -> AsyncIterator[ScriptedMessagesApi]:
    async with ScriptedMessagesApi([final_turn("Hi there.")]) as api:
        yield api


async def test_an_oauth_token_login_sends_a_bearer_token(
    forgejo_sim: ForgejoSim, config_factory: ConfigFactory, host_image: str,
    claude_binary: Path, answering_api: ScriptedMessagesApi, outcomes: Outcomes,
    test_labels: dict[str, str],
) -> None:  # fmt: skip
    outcome, inspected = await run_one_task(
        forgejo_sim, config_factory, host_image, claude_binary, answering_api, oauth_login,
        outcomes, test_labels,
    )  # fmt: skip
    assert outcome.usage_limit is None and outcome.result == "Hi there.", outcome
    headers = [{k.lower(): v for k, v in h.items()} for h in answering_api.headers]
    assert headers and all(h.get("authorization") == f"Bearer {OAUTH_TOKEN}" for h in headers)
    assert all("x-api-key" not in h for h in headers)
    assert all("oauth-2025-04-20" in h.get("anthropic-beta", "") for h in headers)
    assert OAUTH_TOKEN not in inspected


async def test_an_api_key_login_sends_x_api_key(
    forgejo_sim: ForgejoSim, config_factory: ConfigFactory, host_image: str,
    claude_binary: Path, answering_api: ScriptedMessagesApi, outcomes: Outcomes,
    test_labels: dict[str, str],
) -> None:  # fmt: skip
    outcome, inspected = await run_one_task(
        forgejo_sim, config_factory, host_image, claude_binary, answering_api, api_key_login,
        outcomes, test_labels,
    )  # fmt: skip
    assert outcome.usage_limit is None and outcome.result == "Hi there.", outcome
    headers = [{k.lower(): v for k, v in h.items()} for h in answering_api.headers]
    assert headers and all(h.get("x-api-key") == API_KEY for h in headers)
    assert all("authorization" not in h for h in headers)
    assert API_KEY not in inspected


async def test_a_usage_limit_429_ends_the_run_as_a_usage_limit(
    forgejo_sim: ForgejoSim, config_factory: ConfigFactory, host_image: str,
    claude_binary: Path, outcomes: Outcomes, test_labels: dict[str, str],
) -> None:  # fmt: skip
    async with ScriptedMessagesApi([], refusal=usage_limit_refusal(RESETS_AT)) as api:
        outcome, _ = await run_one_task(
            forgejo_sim, config_factory, host_image, claude_binary, api, oauth_login,
            outcomes, test_labels,
        )  # fmt: skip
    assert outcome.usage_limit is not None, outcome
    limit: UsageLimit = outcome.usage_limit
    assert (limit.limit_type, limit.resets_at) == ("five_hour", float(RESETS_AT))
    assert "limit" in limit.message and "resets" in limit.message
    # Not a failure: the task goes back to the queue and the agent pauses until the reset.
    assert outcome.deferred and outcome.retry_at == float(RESETS_AT) and not outcome.uses_attempt
    assert outcome.pause is not None and outcome.pause.until == float(RESETS_AT)
    assert outcome.reason is not None and outcome.reason.startswith("paused until ")
    assert outcome.reason.endswith("(Claude usage limit)"), outcome.reason
    assert outcome.session_id  # kept, so the re-run after the reset resumes the session

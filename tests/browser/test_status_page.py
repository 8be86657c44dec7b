"""The status page in a real browser: Debian's headless chromium, driven over CDP.

The app is served on 127.0.0.1 with a real store and scheduler (tests/test_api.py's
harness). The page must show nothing before a token is given, render the tasks
once it is, and then follow new tasks, state changes and a task's log live,
without a reload. What a person sees is checked by computed style and bounding box
(`Page.shown`), never by the `hidden` property a stylesheet can override, and each
view is kept as a screenshot in the test's tmp_path (`screenshots/<view>.png`,
under pytest's basetemp, which keeps the last three runs).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from claude_hooks.tasks import Outcome, TaskState
from tests.browser.cdp import Browser, Page, find_chromium
from tests.fakes.configs import ConfigFactory
from tests.test_api import TOKEN, ApiHarness, ApiTuning, open_harness

pytestmark = pytest.mark.browser


@pytest.fixture
def chromium() -> str:
    executable = find_chromium()
    if executable is None:
        reason = "chromium is not installed (apt-get install -y chromium)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason}: CI must install it")
        pytest.skip(reason)
    return executable


@pytest.fixture
async def api(config_factory: ConfigFactory, tmp_path: Path) -> AsyncIterator[ApiHarness]:
    tuning = ApiTuning(keepalive=1.0, cancel_wait=2.0)
    async with open_harness(config_factory, tmp_path, tuning=tuning) as harness:
        yield harness


def row_state(task_id: int) -> str:
    return f"document.querySelector('#recent tr[data-task-id=\"{task_id}\"]')?.dataset.state"


async def sign_in(page: Page, token: str) -> None:
    await page.evaluate(
        f"document.getElementById('token').value = {json.dumps(token)};"
        "document.getElementById('login').requestSubmit()"
    )


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
VIEWS = ("#login", "#overview", "#task-view")


async def assert_view(page: Page, shown: str, screenshot: Path) -> bytes:
    """Exactly `shown` of the page's views is visible to a person; its screenshot is kept."""
    seen = {view: await page.shown(view) for view in VIEWS}
    assert seen == {view: view == shown for view in VIEWS}
    png = await page.screenshot(screenshot)
    assert png.startswith(PNG_SIGNATURE) and len(png) > 1000
    return png


async def test_the_page_follows_tasks_live_once_given_the_token(
    api: ApiHarness, chromium: str, tmp_path: Path
) -> None:
    first = await api.submit("implement the parser", number=11)
    await api.submit("write the docs", number=12)
    await api.runs.started[first["task_id"]].wait()
    await api.emit(first["task_id"], ("tool_use", "Bash: make test"))

    shots = tmp_path / "screenshots"
    async with Browser.launch(chromium, tmp_path / "profile") as browser:
        page = await browser.open(api.url + "/")

        # Public page, private data: nothing shows before a token is accepted.
        await page.wait_for("!document.getElementById('login').hidden")
        assert await page.evaluate("document.querySelectorAll('[data-task-id]').length") == 0
        pictures = [await assert_view(page, "#login", shots / "signed-out.png")]
        assert await page.shown("#token")
        await sign_in(page, "not-the-token")
        await page.wait_for(
            "document.getElementById('login-error').textContent.includes('refused')"
        )
        assert await page.evaluate("document.querySelectorAll('[data-task-id]').length") == 0

        await sign_in(page, TOKEN)
        await page.wait_for("document.querySelectorAll('#recent tbody tr').length === 2")
        assert await page.evaluate(row_state(1)) == "running"
        assert await page.evaluate(row_state(2)) == "queued"
        dev_card = "document.querySelector('.agent[data-agent=\"dev\"]').textContent"
        assert "owner/repo#11" in await page.evaluate(dev_card)
        assert "#1 in queue" in await page.evaluate(dev_card)
        # Signed in: the task list, and no sign-in form above it.
        pictures.append(await assert_view(page, "#overview", shots / "signed-in.png"))
        assert await page.shown("#recent tr[data-task-id='1']")
        assert await page.evaluate(f"sessionStorage.getItem('claude-hooks-token') === '{TOKEN}'")

        # From here on nothing reloads: a marker on window would vanish with a reload.
        await page.evaluate("window.stillTheSamePage = true")
        third = await api.submit("review it", agent="reviewer", number=13)
        await page.wait_for(f"{row_state(third['task_id'])} !== undefined")
        api.runs.finish(first["task_id"])
        await page.wait_for(f"{row_state(1)} === 'succeeded'")
        await page.wait_for(f"{row_state(2)} === 'running'")

        # The live log of one task.
        await page.evaluate("location.hash = '#/tasks/2'")
        await page.wait_for("document.querySelectorAll('#task-log li').length >= 2")
        pictures.append(await assert_view(page, "#task-view", shots / "task.png"))
        await api.emit(2, ("tool_use", "Edit: docs/index.md"))
        await page.wait_for(
            "[...document.querySelectorAll('#task-log li')]"
            ".some(li => li.textContent.includes('Edit: docs/index.md'))"
        )
        api.runs.finish(2, Outcome(TaskState.FAILED, reason="max turns reached"))
        await page.wait_for("!document.getElementById('task-end').hidden")
        assert await page.evaluate("document.getElementById('task-end').textContent") == (
            "Task failed."
        )
        await page.wait_for(
            "document.getElementById('task-facts').textContent.includes('max turns reached')"
        )
        seqs = await page.evaluate(
            "[...document.querySelectorAll('#task-log li')].map(li => Number(li.dataset.seq))"
        )
        assert seqs == list(range(1, len(seqs) + 1))  # each event once, in order

        assert await page.evaluate("window.stillTheSamePage") is True
        assert len(set(pictures)) == 3  # three different pictures, one per view
        assert browser.cdp.exceptions == []


async def test_a_paused_agent_is_shown_as_paused_and_a_resume_clears_it_live(
    api: ApiHarness, chromium: str, tmp_path: Path
) -> None:
    reason = "paused until 05:00 UTC (Claude usage limit)"
    await api.scheduler.pause("reviewer", time.time() + 3600, reason, "usage_limit")
    reviewer = ".agent[data-agent='reviewer']"
    async with Browser.launch(chromium, tmp_path / "profile") as browser:
        page = await browser.open(api.url + "/")
        await page.wait_for("!document.getElementById('login').hidden")
        assert not await page.shown(f"{reviewer} .paused")  # nothing before the token
        await sign_in(page, TOKEN)
        await page.wait_for(f'document.querySelector("{reviewer} .paused") !== null')
        assert await page.shown(f"{reviewer} .paused")
        said = await page.evaluate(f'document.querySelector("{reviewer} .paused").textContent')
        assert said == f"{reason}; will resume"
        assert not await page.shown(".agent[data-agent='dev'] .paused")
        await page.screenshot(tmp_path / "screenshots" / "paused.png")

        # Lifted, live: the next change on the feed reads the agents again.
        await page.evaluate("window.stillTheSamePage = true")
        assert await api.scheduler.resume("reviewer", by="alice")
        await api.submit("review it", agent="reviewer", number=13)
        await page.wait_for(f'document.querySelector("{reviewer} .paused") === null')
        assert await page.shown(f"{reviewer} li")  # its task shows in its place
        assert await page.evaluate("window.stillTheSamePage") is True
        assert browser.cdp.exceptions == []


async def test_an_engine_that_is_down_is_shown_on_its_agents_and_goes_when_it_is_back(
    api: ApiHarness, chromium: str, tmp_path: Path
) -> None:
    api.engines = {"local": False}
    engine = ".agent[data-agent='dev'] .engine[data-engine='local']"
    async with Browser.launch(chromium, tmp_path / "profile") as browser:
        page = await browser.open(api.url + "/")
        await page.wait_for("!document.getElementById('login').hidden")
        assert not await page.shown(engine)  # nothing before the token
        await sign_in(page, TOKEN)
        await page.wait_for(f'document.querySelector("{engine}") !== null')
        assert await page.shown(engine)
        assert await page.evaluate(f'document.querySelector("{engine}").textContent') == (
            "local down"
        )
        colour = await page.evaluate(f'getComputedStyle(document.querySelector("{engine}")).color')
        assert colour == "rgb(179, 38, 30)"  # --failed: it reads as a fault, not a note
        await page.screenshot(tmp_path / "screenshots" / "engine-down.png")

        # Back up, live: the next change on the feed reads the agents again.
        await page.evaluate("window.stillTheSamePage = true")
        api.engines = {"local": True}
        await api.submit("do it now", number=14)
        await page.wait_for(f'document.querySelector("{engine}") === null')
        assert await page.shown(".agent[data-agent='dev'] li")
        assert await page.evaluate("window.stillTheSamePage") is True
        assert browser.cdp.exceptions == []

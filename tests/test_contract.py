"""The contract check can fail: wrong requests and wrong answers are reported.

These tests use their own simulator (not the checked `forgejo_sim` fixture),
because they make bad requests on purpose. They need Forgejo's OpenAPI document,
which is not redistributed here (tests/data/SPEC-SOURCE.md): without
`$CLAUDE_HOOKS_CAPTURES/forgejo/openapi.v3.json` they skip, or fail under CI=true. The
tests of what happens without it run always.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from multidict import MultiDict, MultiDictProxy

from claude_hooks.demo.sim.forgejo import ForgejoSim, RecordedRequest
from claude_hooks.forgejo.client import ForgejoClient
from tests.captures import CAPTURES_ENV
from tests.contract import ForgejoContract, forgejo_contract

pytest_plugins = ["pytester"]

TOKEN = "dev-token-0123456789"


@pytest.fixture
def contract() -> ForgejoContract:
    return forgejo_contract()


@pytest.fixture
async def sim() -> AsyncIterator[ForgejoSim]:
    sim = ForgejoSim()
    sim.add_user("dev", token=TOKEN)
    sim.add_repo("acme/app", collaborators={"dev": "write"})
    sim.create_issue("acme/app", "acme", "An issue", "@dev hello")
    await sim.start()
    yield sim
    await sim.stop()


async def raw_call(
    sim: ForgejoSim, method: str, path: str, body: Any = None, token: str | None = TOKEN
) -> int:
    headers = {"Authorization": f"token {token}"} if token else {}
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, sim.base_url + path, json=body, headers=headers) as response,
    ):
        return response.status


def recorded(
    method: str,
    path: str,
    status: int | None = 200,
    response: Any = None,
    query: list[tuple[str, str]] | None = None,
    body: Any = None,
    authenticated: bool = True,
    injected: bool = False,
) -> RecordedRequest:
    return RecordedRequest(
        method=method,
        path=path,
        query=MultiDictProxy(MultiDict(query or [])),
        body=body,
        headers={"Content-Type": "application/json"} if body is not None else {},
        authenticated=authenticated,
        status=status,
        response_body=b"" if response is None else json.dumps(response).encode(),
        response_content_type="application/json",
        injected=injected,
    )


async def test_what_the_client_sends_passes(sim: ForgejoSim, contract: ForgejoContract) -> None:
    async with ForgejoClient(sim.base_url, TOKEN, max_attempts=1) as client:
        [thread] = await client.notifications()
        await client.get_issue("acme/app", 1)
        await client.create_comment("acme/app", 1, "on it")
        await client.mark_thread_read(thread.id)
    assert len(sim.all_requests) == 4
    assert contract.check_all(sim.all_requests) == []


async def test_unknown_query_parameter_is_a_violation(
    sim: ForgejoSim, contract: ForgejoContract
) -> None:
    assert await raw_call(sim, "GET", "/api/v1/notifications?unread_only=true") == 200
    [problem] = contract.check_all(sim.all_requests)
    assert "unknown query parameter 'unread_only'" in problem
    assert problem.startswith("GET /api/v1/notifications (/notifications)")


async def test_wrong_parameter_type_is_a_violation(
    sim: ForgejoSim, contract: ForgejoContract
) -> None:
    await raw_call(sim, "GET", "/api/v1/notifications?limit=many")
    [problem] = contract.check_all(sim.all_requests)
    assert "limit" in problem


async def test_body_without_a_required_field_is_a_violation(
    sim: ForgejoSim, contract: ForgejoContract
) -> None:
    status = await raw_call(sim, "POST", "/api/v1/repos/acme/app/issues/1/comments", {"bdy": "x"})
    assert status == 422
    problems = contract.check_all(sim.all_requests)
    assert any("request:" in p and "'body' is a required property" in p for p in problems)


async def test_missing_authorization_is_a_violation(
    sim: ForgejoSim, contract: ForgejoContract
) -> None:
    assert await raw_call(sim, "GET", "/api/v1/user", token=None) == 401
    [problem] = contract.check_all(sim.all_requests)
    assert "Security not found" in problem


def test_unknown_path_and_method_are_violations(contract: ForgejoContract) -> None:
    nowhere = contract.check(recorded("GET", "/api/v1/repos/acme/app/issues/1/frobnicate"))
    wrong_method = contract.check(recorded("DELETE", "/api/v1/user", status=204))
    assert nowhere == [
        "GET /api/v1/repos/acme/app/issues/1/frobnicate: no path of the Forgejo API matches"
    ]
    assert wrong_method == ["DELETE /api/v1/user: the Forgejo API has no DELETE on /user"]


def test_diff_path_matches_the_diff_operation_not_the_pull(contract: ForgejoContract) -> None:
    matched = contract.match("/api/v1/repos/acme/app/pulls/7.diff")
    assert matched is not None
    assert matched[0].template == "/repos/{owner}/{repo}/pulls/{index}.{diffType}"
    assert matched[1] == {"owner": "acme", "repo": "app", "index": "7", "diffType": "diff"}


def test_response_with_wrong_field_type_is_a_violation(contract: ForgejoContract) -> None:
    [problem] = contract.check(recorded("GET", "/api/v1/user", response={"id": "7", "login": "x"}))
    assert "response 200" in problem and "'7' is not of type 'integer'" in problem


def test_undeclared_success_status_is_a_violation(contract: ForgejoContract) -> None:
    [problem] = contract.check(recorded("GET", "/api/v1/user", status=201, response={"id": 1}))
    assert "status 201 is not declared" in problem


def test_undeclared_client_error_needs_forgejos_error_body(contract: ForgejoContract) -> None:
    path = "/api/v1/repos/acme/app/issues/1"  # the spec declares 200 and 404 only
    good = recorded("GET", path, status=401, response={"message": "no", "url": "u"})
    bad = recorded("GET", path, status=401, response={"error": "no"})
    assert contract.check(good) == []
    assert "not Forgejo's error body" in contract.check(bad)[0]


def test_null_is_accepted_only_where_forgejo_sends_nil(contract: ForgejoContract) -> None:
    issue = {"id": 1, "number": 1, "milestone": None, "closed_at": None, "assignees": None}
    broken = {**issue, "title": None}
    path = "/api/v1/repos/acme/app/issues/1"
    assert contract.check(recorded("GET", path, response=issue)) == []
    [problem] = contract.check(recorded("GET", path, response=broken))
    assert "title" in problem


def test_injected_failures_are_not_held_against_the_simulator(contract: ForgejoContract) -> None:
    answer = {"message": "injected failure"}
    assert contract.check(recorded("GET", "/api/v1/user", 502, answer, injected=True)) == []
    assert contract.check(recorded("GET", "/api/v1/user", None, injected=True)) == []


def test_the_fixture_fails_a_test_whose_requests_break_the_contract(
    pytester: pytest.Pytester, contract: ForgejoContract
) -> None:
    result = run_inner_tests(pytester)
    result.assert_outcomes(passed=3, errors=1)  # test_bad passes, then fails at teardown
    result.stdout.fnmatch_lines(["*1 Forgejo API contract violation*", "*'sudo_as'*"])


def test_without_the_spec_the_simulator_tests_run_unchecked_with_one_warning(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(CAPTURES_ENV, raising=False)
    monkeypatch.delenv("CI", raising=False)
    result = run_inner_tests(pytester)
    result.assert_outcomes(passed=3, warnings=1)  # the bad request too: nothing checks it
    result.stdout.fnmatch_lines(
        [f"*ContractNotChecked: simulator requests are not contract-checked*{CAPTURES_ENV}*"]
    )


def test_a_captures_directory_without_the_spec_fails_the_simulator_tests_under_ci(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(CAPTURES_ENV, str(tmp_path))
    monkeypatch.setenv("CI", "true")
    result = run_inner_tests(pytester)
    result.assert_outcomes(errors=3)
    result.stdout.fnmatch_lines(
        [f"*required under CI=true: Forgejo's OpenAPI document is unavailable: {CAPTURES_ENV}*"]
    )


def test_a_clean_clones_ci_without_captures_runs_the_simulator_tests_unchecked(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(CAPTURES_ENV, raising=False)
    monkeypatch.setenv("CI", "true")
    result = run_inner_tests(pytester)
    result.assert_outcomes(passed=3, warnings=1)


def test_the_checkers_own_tests_skip_without_the_spec_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(CAPTURES_ENV, raising=False)
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match=f"{CAPTURES_ENV} is not set"):
        forgejo_contract()


def test_the_checkers_own_tests_fail_under_ci_when_the_captures_lack_the_spec(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(CAPTURES_ENV, str(tmp_path))
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match=f"CI=true: .*{CAPTURES_ENV}="):
        forgejo_contract()


def run_inner_tests(pytester: pytest.Pytester) -> pytest.RunResult:
    """Three simulator tests in their own session: two good requests, one the spec forbids."""
    pytester.makeini(
        "[pytest]\nasyncio_mode = auto\nasyncio_default_fixture_loop_scope = function\n"
    )
    pytester.makepyfile(
        test_inner=f"""
        import aiohttp

        pytest_plugins = ["tests.fakes.forgejo"]

        async def call(sim, query):
            sim.add_user("dev", token="{TOKEN}")
            headers = {{"Authorization": "token {TOKEN}"}}
            async with aiohttp.ClientSession() as session:
                async with session.get(sim.base_url + "/api/v1/user" + query, headers=headers) as r:
                    assert r.status == 200

        async def test_good(forgejo_sim):
            await call(forgejo_sim, "")

        async def test_also_good(forgejo_sim):
            await call(forgejo_sim, "")

        async def test_bad(forgejo_sim):
            await call(forgejo_sim, "?sudo_as=me")
        """
    )
    return pytester.runpytest_inprocess("-p", "no:cacheprovider")

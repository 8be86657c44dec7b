"""Several daemons on one Forgejo (#18): disjoint agent sets, one task per mention.

Two real `claude-hooks run` processes, each with its own state dir, API port, webhook
URL and agent, serve one simulator. Every mention reaches both daemons twice: by a
webhook delivered to both URLs and by each daemon's polling. Each daemon acts only
for the agents it configures, so the two stores together hold one task per mention,
and each ran once (the scripted claude appends the issue number to a file in the
agent's home: an independent count of runs, beside the store's attempts).

The pure part (whose loop steps a daemon takes on a PR of another daemon's agent) is
decided by `Policy` without any I/O; it is tested first.
"""

from __future__ import annotations

import base64
import contextlib
import os
import sqlite3
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import aiodocker
import pytest

from claude_hooks.cli.check import check_docker, shared_agent_warnings
from claude_hooks.config import Config, ConfigError
from claude_hooks.demo.sim.forgejo import ForgejoSim
from claude_hooks.intake.decide import Policy, propose
from claude_hooks.intake.thread import Post, PostKind, ThreadContext
from claude_hooks.runner.containers import HOME_DIR, INSTANCE_LABEL, instance_labels, run_exec
from claude_hooks.tasks import TaskKind, TaskSpec, TriggerSource
from tests.fakes.configs import ConfigFactory
from tests.fakes.docker import AGENT_UID
from tests.test_daemon import Daemon, free_port, start_daemon, wait_for_ready
from tests.waiting import wait_until

REPO = "acme/app"
SECRET = "webhook-secret-0123456789"
SUFFIX = uuid.uuid4().hex[:6]  # container names are per agent: ours, not another test's
DEV_A, DEV_B = f"deva{SUFFIX}", f"devb{SUFFIX}"
RUNS_FILE = f"{HOME_DIR}/runs"  # in the agent's volume: one line per claude run


# --- pure: a daemon never takes a step for an agent it does not configure -------------


def approved_pull(author: str, reviewer: str) -> ThreadContext:
    approval = Post(PostKind.REVIEW, 7, reviewer, "LGTM", 1.0, review_state="APPROVED")
    return ThreadContext(
        repo=REPO,
        number=3,
        is_pull=True,
        title="Fix",
        new=(approval,),
        head_sha="abc123",
        pull_author=author,
    )


def test_an_approval_on_another_daemons_pr_is_that_daemons_merge_not_ours() -> None:
    team_a = Policy(("dev-a", "lead-a"), repositories=(REPO,), merge_by={"dev-a": "lead-a"})
    team_b = Policy(("dev-b", "lead-b"), repositories=(REPO,), merge_by={"dev-b": "lead-b"})
    ctx = approved_pull(author="dev-b", reviewer="lead-a")  # A's lead reviews B's PR

    assert team_a.loop_agents(ctx) == ()  # dev-b is no agent of A: no loop of A's moves
    asked_of_a = [i for a in team_a.agents for i in propose(a, ctx, team_a).items]
    assert asked_of_a == []
    assert team_b.loop_agents(ctx) == ("dev-b", "lead-b")
    (merge,) = propose("lead-b", ctx, team_b, TriggerSource.WEBHOOK).items
    assert isinstance(merge, TaskSpec) and merge.kind is TaskKind.MERGE_REQUEST


def changes_requested_by_the_other_team(rounds: int) -> ThreadContext:
    """dev-a's PR; rev-b (daemon B's agent) asks for changes, dev-a answers, `rounds` times."""
    events: list[Post] = []
    for n in range(rounds):
        events.append(
            Post(PostKind.REVIEW, 10 + n, "rev-b", "No.", None, review_state="REQUEST_CHANGES")
        )
        if n < rounds - 1:
            events.append(Post(PostKind.COMMENT, 100 + n, "dev-a", "@rev-b fixed", None))
    return ThreadContext(
        repo=REPO, number=5, is_pull=True, title="Fix", new=(events[-1],),
        history=tuple(events[:-1]), head_sha="abc", pull_author="dev-a",
    )  # fmt: skip


def test_a_review_loop_with_another_daemons_agent_is_bounded_by_the_rounds() -> None:
    """Without `daemon.peer_agents`, rev-b is a person to daemon A: every review of it
    starts a new conversation, so max_review_rounds never ends the loop between teams."""
    team_a = Policy(("dev-a",), repositories=(REPO,), max_review_rounds=2, peers=("rev-b",))
    within = propose("dev-a", changes_requested_by_the_other_team(2), team_a).items
    past = propose("dev-a", changes_requested_by_the_other_team(3), team_a).items

    assert [t.kind for t in within if isinstance(t, TaskSpec)] == [TaskKind.REVIEW_FEEDBACK]
    assert [t.kind for t in past if isinstance(t, TaskSpec)] == [TaskKind.ROUNDS_SPENT]
    assert team_a.agents == ("dev-a",)  # a peer is never acted for


def test_a_peers_mentions_chain_hops_and_need_write_access_like_a_persons() -> None:
    team_a = Policy(("dev-a",), repositories=(REPO,), hop_limit=1, peers=("dev-b",))
    posts = tuple(
        Post(PostKind.COMMENT, n, "dev-b" if n % 2 else "dev-a", "@dev-a @dev-b on", None)
        for n in range(1, 6)
    )
    ctx = ThreadContext(repo=REPO, number=6, is_pull=False, title="T", new=posts[-1:],
                        history=posts[:-1])  # fmt: skip
    proposal = propose("dev-a", ctx, team_a)

    assert [type(i).__name__ for i in proposal.items] == ["Refusal"]  # past the hop limit
    first = ThreadContext(repo=REPO, number=6, is_pull=False, title="T", new=posts[:1])
    assert propose("dev-a", first, team_a).requesters(team_a) == frozenset({"dev-b"})


# --- two real daemons on one simulator -------------------------------------------------


def team_config(factory: ConfigFactory, sim: ForgejoSim, image: str, agent: str) -> Config:
    token = f"forgejo-token-of-{agent}-0123456789"
    sim.add_user(agent, token=token)
    sim.add_collaborator(REPO, agent, "admin")
    creds = factory.secret("creds.json", '{"claudeAiOauth": {"accessToken": "oauth-x-1"}}')
    os.chown(creds, AGENT_UID, AGENT_UID)
    config = factory.load(
        forgejo={
            "url": sim.base_url,
            "repositories": [REPO],
            "webhook_secret_file": str(factory.secret("hook-secret", SECRET)),
        },
        daemon={"poll_interval": 0.5, "drain_timeout": 5, "log_format": "json"},
        api={
            "listen": f"127.0.0.1:{free_port()}",
            "token_file": str(factory.secret("api-token", "api-token-0123456789")),
        },
        agents=[
            factory.agent(
                agent, token_file=str(factory.secret("token", token)),
                credentials_file=str(creds), image=image, network="none", checkout=False,
                max_concurrency=2, timeout=120,
            )
        ],
    )  # fmt: skip
    sim.add_webhook(f"{config.api.base_url}/hooks/forgejo", SECRET)
    return config


@pytest.fixture
async def two_daemons(docker: aiodocker.Docker) -> AsyncIterator[list[Daemon]]:
    started: list[Daemon] = []
    yield started
    for daemon in started:
        if daemon.process.returncode is None:
            daemon.process.kill()
            await daemon.process.wait()
    for agent in (a for d in started for a in d.config.agents):
        with contextlib.suppress(aiodocker.DockerError):
            await (await docker.containers.get(agent.container_name)).delete(force=True)
        with contextlib.suppress(aiodocker.DockerError):
            await (await docker.volumes.get(agent.volume_name)).delete()


def stored_tasks(config: Config) -> list[tuple[str, int, str, int]]:
    """(agent, number, state, attempts) of every task in the daemon's store."""
    with (
        contextlib.suppress(sqlite3.OperationalError),
        sqlite3.connect(config.daemon.db_path) as db,
    ):
        query = "SELECT agent, number, state, attempts FROM tasks ORDER BY id"
        return db.execute(query).fetchall()
    return []


async def runs_in(docker: aiodocker.Docker, config: Config) -> list[str]:
    """The issue numbers the agent's claude ran for, one line per run."""
    agent = config.agents[0]
    container = await docker.containers.get(agent.container_name)
    _, output = await run_exec(container, ["cat", RUNS_FILE], user=agent.user)
    return output.split()


def notification_polls(sim: ForgejoSim) -> list[object]:
    return [r for r in sim.all_requests if r.path.startswith("/api/v1/notifications")]


def mention(sim: ForgejoSim, agents: tuple[str, ...]) -> int:
    number = sim.create_issue(REPO, "alice", "Work", "Please work.")
    count_run = base64.b64encode(f"echo {number} >> {RUNS_FILE}".encode()).decode()
    names = " ".join(f"@{a}" for a in agents)
    sim.add_comment(REPO, number, "alice", f"{names} go\n\nfake-claude: run={count_run}")
    return number


@pytest.mark.docker
@pytest.mark.slow
async def test_two_daemons_with_disjoint_agents_make_one_task_per_mention_and_run_it_once(
    forgejo_sim: ForgejoSim,
    tmp_path: Path,
    test_image: str,
    docker: aiodocker.Docker,
    two_daemons: list[Daemon],
) -> None:
    forgejo_sim.add_user("alice", token="forgejo-token-of-alice-0123456789")
    forgejo_sim.add_repo(REPO, collaborators={"alice": "write"})
    configs = [
        team_config(ConfigFactory(tmp_path / name), forgejo_sim, test_image, agent)
        for name, agent in (("a", DEV_A), ("b", DEV_B))
    ]
    for config in configs:
        await wait_for_ready(config, await start_daemon(config, two_daemons))

    expected = Counter[tuple[str, int]]()
    for agents in [(DEV_A,)] * 24 + [(DEV_B,)] * 24 + [(DEV_A, DEV_B)]:
        number = mention(forgejo_sim, agents)
        expected.update((a, number) for a in agents)
    assert sum(expected.values()) == 50

    def finished() -> list[tuple[str, int, str, int]]:
        rows = [row for config in configs for row in stored_tasks(config)]
        return rows if sum(row[2] == "succeeded" for row in rows) >= 50 else []

    rows = await wait_until(
        finished,
        timeout=240,
        interval=0.5,
        what="50 tasks succeeded in the two stores",
        details=lambda: "\n".join(d.output()[-3000:] for d in two_daemons),
    )
    await forgejo_sim.webhooks_idle()
    statuses = Counter(
        d.status
        for d in forgejo_sim.deliveries
        if d.event == "issue_comment" and d.payload["comment"]["user"]["login"] == "alice"
    )  # the agents' own comments are delivered too
    polled = len(notification_polls(forgejo_sim))
    await wait_until(  # both pollers read their notifications twice more: nothing new
        lambda: len(notification_polls(forgejo_sim)) >= polled + 4, timeout=20
    )
    rows = [row for config in configs for row in stored_tasks(config)]

    assert statuses == {202: 2 * 49}  # both daemons took every comment's webhook

    assert Counter((agent, number) for agent, number, _, _ in rows) == expected
    assert {(state, attempts) for _, _, state, attempts in rows} == {("succeeded", 1)}
    for config, agent in zip(configs, (DEV_A, DEV_B), strict=True):
        assert {a for a, *_ in stored_tasks(config)} == {agent}  # each only for its own
        ran = Counter(int(n) for n in await runs_in(docker, config))
        assert ran == Counter({n: 1 for a, n in expected if a == agent})


# --- check: another config on this host already runs one of our agents ----------------


@pytest.mark.docker
async def test_check_warns_when_another_daemons_container_runs_one_of_our_agents(
    config_factory: ConfigFactory, test_image: str, docker: aiodocker.Docker, tmp_path: Path
) -> None:
    shared, own = f"shared{SUFFIX}", f"own{SUFFIX}"
    agents = [config_factory.agent(a, image=test_image) for a in (shared, own)]
    ours = config_factory.load(agents=agents)
    (tmp_path / "other").mkdir()
    theirs = ConfigFactory(tmp_path / "other").load(agents=[config_factory.agent(shared)])
    created = []
    try:
        for config, agent in ((theirs, shared), (ours, own)):  # as each daemon labels its own
            body = {
                "Image": test_image,
                "Cmd": ["sleep", "60"],
                "Labels": instance_labels(config.daemon.state_dir),
            }
            created.append(await docker.containers.create(body, name=f"claude-hooks-{agent}"))
        results = await check_docker(ours)
    finally:
        for container in created:
            await container.delete(force=True)

    warnings = [r.detail for r in results if r.name == "agent shared"]
    (warning,) = warnings  # the agent whose container is ours is no warning
    theirs_label = instance_labels(theirs.daemon.state_dir)[INSTANCE_LABEL]
    assert f"agent {shared}:" in warning and f"instance {theirs_label}" in warning
    assert all(r.ok for r in results)  # a warning, not a failure: the operator decides


def test_shared_agents_are_those_whose_container_is_labelled_for_another_instance(
    config_factory: ConfigFactory,
) -> None:
    config = config_factory.load(agents=[config_factory.agent("dev"), config_factory.agent("rev")])
    mine = instance_labels(config.daemon.state_dir)
    labels = {"dev": {"claude-hooks.managed": "true"}, "rev": mine}

    (warning,) = shared_agent_warnings(config, labels)
    assert warning.startswith("agent dev: container claude-hooks-dev belongs to no claude-hooks")
    assert shared_agent_warnings(config, {}) == []  # no container yet: nothing to compare


def test_an_agent_both_configured_and_a_peer_is_refused_naming_the_key(
    config_factory: ConfigFactory,
) -> None:
    with pytest.raises(ConfigError) as error:
        config_factory.load(daemon={"peer_agents": ["rev-b", "Dev"]})
    assert "daemon.peer_agents[1]" in str(error.value) and "'Dev'" in str(error.value)
    loaded = config_factory.load(daemon={"peer_agents": ["rev-b"]})
    policy = Policy.from_config(loaded)
    assert (policy.is_agent("REV-B"), policy.is_ours("rev-b"), policy.agents) == (
        True,
        False,
        ("dev",),
    )

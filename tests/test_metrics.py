"""Metrics: what each hook records, read back through Prometheus' own text parser."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from claude_hooks.metrics import Metrics, QueueSnapshot, task_seconds
from claude_hooks.tasks import AgentPause, Task, TaskKind, TaskSpec, TaskState, TriggerSource

SPEC = TaskSpec("dev", TaskKind.MENTION, "o/r", 3, "k", "alice", "@dev do it", TriggerSource.POLL)

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(metrics: Metrics, accept: str | None = None) -> Samples:
    body, _ = metrics.render(accept)
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
    }


def finished(state: TaskState, **fields: object) -> Task:
    return Task(id=1, spec=SPEC, state=state, **fields)  # type: ignore[arg-type]


def test_a_finished_task_adds_its_duration_and_cost() -> None:
    metrics = Metrics()
    metrics.task_finished(
        finished(TaskState.SUCCEEDED, started_at=100.0, finished_at=190.0, cost_usd=0.25)
    )
    metrics.task_finished(
        finished(TaskState.SUCCEEDED, started_at=0.0, finished_at=10.0, cost_usd=0.5)
    )
    samples = scrape(metrics)
    labels = (("agent", "dev"), ("state", "succeeded"))
    assert samples[("claude_hooks_task_duration_seconds_count", labels)] == 2
    assert samples[("claude_hooks_task_duration_seconds_sum", labels)] == 100
    bucket = (("agent", "dev"), ("le", "60.0"), ("state", "succeeded"))
    assert samples[("claude_hooks_task_duration_seconds_bucket", bucket)] == 1
    assert samples[("claude_hooks_task_cost_usd_total", (("agent", "dev"),))] == 0.75
    assert samples[("claude_hooks_tasks_finished_total", labels)] == 2


def test_a_task_cancelled_before_it_ran_is_counted_without_a_duration() -> None:
    metrics = Metrics()
    metrics.task_finished(finished(TaskState.CANCELLED))
    samples = scrape(metrics)
    labels = (("agent", "dev"), ("state", "cancelled"))
    assert samples[("claude_hooks_tasks_finished_total", labels)] == 1
    assert ("claude_hooks_task_duration_seconds_count", labels) not in samples


def test_task_seconds_prefers_wall_time_then_claudes_own_duration() -> None:
    assert task_seconds(finished(TaskState.FAILED, started_at=5.0, finished_at=7.5)) == 2.5
    assert task_seconds(finished(TaskState.FAILED, duration_ms=1500)) == 1.5
    assert task_seconds(finished(TaskState.FAILED)) is None


def test_poll_errors_are_counted_per_agent() -> None:
    metrics = Metrics()
    for agent in ("dev", "dev", "reviewer"):
        metrics.poll_error(agent)
    samples = scrape(metrics)
    assert samples[("claude_hooks_poll_errors_total", (("agent", "dev"),))] == 2
    assert samples[("claude_hooks_poll_errors_total", (("agent", "reviewer"),))] == 1


def test_forgejo_requests_are_timed_by_method_path_template_and_status() -> None:
    metrics = Metrics()
    path = "/repos/{owner}/{repo}/issues/{index}/comments"
    metrics.forgejo_request("post", path, 201, 0.2)
    metrics.forgejo_request("POST", path, None, 30.0)
    samples = scrape(metrics)
    ok = (("method", "POST"), ("path", path), ("status", "201"))
    lost = (("method", "POST"), ("path", path), ("status", "error"))
    assert samples[("claude_hooks_forgejo_request_seconds_count", ok)] == 1
    assert samples[("claude_hooks_forgejo_request_seconds_sum", lost)] == 30.0


def test_webhook_deliveries_are_counted_by_result() -> None:
    metrics = Metrics()
    for result in ("accepted", "accepted", "bad_signature"):
        metrics.webhook(result)
    samples = scrape(metrics)
    assert samples[("claude_hooks_webhook_deliveries_total", (("result", "accepted"),))] == 2
    assert samples[("claude_hooks_webhook_deliveries_total", (("result", "bad_signature"),))] == 1


def test_the_queue_gauges_report_every_state_of_every_configured_agent() -> None:
    metrics = Metrics()
    metrics.observe_queue(
        QueueSnapshot(
            counts={("dev", TaskState.RUNNING): 1, ("old-agent", TaskState.SUCCEEDED): 4},
            agents=("dev", "reviewer"),
            queue_depth=3,
            running=1,
        )
    )
    samples = scrape(metrics)
    tasks = {labels: v for (name, labels), v in samples.items() if name == "claude_hooks_tasks"}
    assert len(tasks) == 3 * len(TaskState)  # idle agents report zeros, not nothing
    assert tasks[(("agent", "dev"), ("state", "running"))] == 1
    assert tasks[(("agent", "reviewer"), ("state", "queued"))] == 0
    assert tasks[(("agent", "old-agent"), ("state", "succeeded"))] == 4
    assert samples[("claude_hooks_queue_depth", ())] == 3
    assert samples[("claude_hooks_running_tasks", ())] == 1


def test_a_state_that_emptied_drops_to_zero_at_the_next_scrape() -> None:
    metrics = Metrics()
    metrics.observe_queue(QueueSnapshot(counts={("dev", TaskState.QUEUED): 2}, agents=("dev",)))
    metrics.observe_queue(QueueSnapshot(counts={}, agents=("dev",)))
    assert scrape(metrics)[("claude_hooks_tasks", (("agent", "dev"), ("state", "queued")))] == 0


def test_two_instances_keep_separate_registries() -> None:
    first, second = Metrics(), Metrics()  # a second registration would raise on a shared one
    first.poll_error("dev")
    assert ("claude_hooks_poll_errors_total", (("agent", "dev"),)) not in scrape(second)


@pytest.mark.parametrize(
    ("accept", "content_type"),
    [
        (None, "text/plain; version=0.0.4"),
        ("application/openmetrics-text; version=1.0.0", "application/openmetrics-text"),
    ],
)
def test_the_exposition_format_follows_the_scrapers_accept_header(
    accept: str | None, content_type: str
) -> None:
    body, served = Metrics().render(accept)
    assert served.startswith(content_type)
    assert b"claude_hooks_queue_depth" in body


def test_a_paused_agent_reads_1_and_each_usage_limit_is_counted_by_its_type() -> None:
    metrics = Metrics()
    hit = AgentPause("dev", 2e9, "Claude usage limit", "usage_limit", "five_hour")
    metrics.pause_changed("dev", hit)
    metrics.pause_changed("dev", None)  # resumed: no count
    metrics.pause_changed("reviewer", AgentPause("reviewer", 2e9, "daily budget", "daily_budget"))
    metrics.observe_queue(QueueSnapshot(agents=("dev", "reviewer"), paused=frozenset({"dev"})))
    samples = scrape(metrics)
    assert samples[("claude_hooks_agent_paused", (("agent", "dev"),))] == 1
    assert samples[("claude_hooks_agent_paused", (("agent", "reviewer"),))] == 0
    hits = (("agent", "dev"), ("limit_type", "five_hour"))
    assert samples[("claude_hooks_usage_limit_hits_total", hits)] == 1
    assert not any(
        name == "claude_hooks_usage_limit_hits_total" and ("agent", "reviewer") in labels
        for name, labels in samples
    )

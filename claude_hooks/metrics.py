"""Prometheus metrics: every metric the daemon exports, in its own CollectorRegistry.

Two kinds of numbers: events counted as they happen (a task finished, a poll failed,
a Forgejo request, a webhook delivery) through the hook methods the other modules
call, and the queue as it is right now (tasks by state and agent, queue depth,
running), taken from the store and scheduler at scrape time by the /metrics
handler and handed over as one QueueSnapshot. A registry of our own keeps tests
and a second daemon in one process from sharing (and double-registering) metrics.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from claude_hooks.tasks import AgentPause, Task, TaskState

PREFIX = "claude_hooks"
# A task runs from seconds (a quick answer) to the agent timeout (an hour by default).
TASK_DURATION_BUCKETS = (5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200)
FORGEJO_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
TRANSPORT_ERROR = "error"  # the status label of a Forgejo request that got no answer


@dataclass(frozen=True)
class QueueSnapshot:
    """The queue at one moment: what the gauges report until the next scrape."""

    counts: Mapping[tuple[str, TaskState], int] = field(default_factory=dict)
    agents: tuple[str, ...] = ()  # configured agents: reported with zeros when idle
    queue_depth: int = 0
    running: int = 0
    paused: frozenset[str] = frozenset()  # agents whose queue waits (a usage limit, a budget)
    engines: Mapping[str, bool] = field(default_factory=dict)  # each Docker engine up, by name


def task_seconds(task: Task) -> float | None:
    """Wall time of the last run, or Claude's own duration when the run times are missing."""
    if task.started_at is not None and task.finished_at is not None:
        return max(0.0, task.finished_at - task.started_at)
    if task.duration_ms is not None:
        return task.duration_ms / 1000
    return None


class _QueueCollector(Collector):
    """Reads the latest snapshot when the registry is collected."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        snapshot = self._metrics.snapshot
        tasks = GaugeMetricFamily(
            f"{PREFIX}_tasks", "Stored tasks by agent and state", labels=["agent", "state"]
        )
        agents = sorted({*snapshot.agents, *(agent for agent, _ in snapshot.counts)})
        for agent in agents:
            for state in TaskState:
                tasks.add_metric([agent, str(state)], snapshot.counts.get((agent, state), 0))
        yield tasks
        yield GaugeMetricFamily(
            f"{PREFIX}_queue_depth", "Tasks waiting for a slot", value=snapshot.queue_depth
        )
        yield GaugeMetricFamily(
            f"{PREFIX}_running_tasks", "Tasks holding a slot", value=snapshot.running
        )
        paused = GaugeMetricFamily(
            f"{PREFIX}_agent_paused",
            "1 while the agent's queue waits for a usage limit or budget to reset",
            labels=["agent"],
        )
        for agent in agents:
            paused.add_metric([agent], 1 if agent in snapshot.paused else 0)
        yield paused
        engine_up = GaugeMetricFamily(
            f"{PREFIX}_engine_up",
            "1 while the Docker engine answers (its agents' tasks go there), 0 while it is down",
            labels=["engine"],
        )
        for engine, up in sorted(snapshot.engines.items()):
            engine_up.add_metric([engine], 1 if up else 0)
        yield engine_up


class Metrics:
    """The daemon's metrics; the hook methods are cheap and never raise on odd input."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.snapshot = QueueSnapshot()
        self.registry.register(_QueueCollector(self))
        self._task_duration = Histogram(
            f"{PREFIX}_task_duration_seconds",
            "Wall time of finished task runs",
            ["agent", "state"],
            buckets=TASK_DURATION_BUCKETS,
            registry=self.registry,
        )
        self._tasks_finished = Counter(
            f"{PREFIX}_tasks_finished",
            "Tasks that reached a final state",
            ["agent", "state"],
            registry=self.registry,
        )
        self._task_cost = Counter(
            f"{PREFIX}_task_cost_usd",
            "Claude cost of finished tasks, in US dollars",
            ["agent"],
            registry=self.registry,
        )
        self._poll_errors = Counter(
            f"{PREFIX}_poll_errors",
            "Notification polls that failed",
            ["agent"],
            registry=self.registry,
        )
        self._forgejo_latency = Histogram(
            f"{PREFIX}_forgejo_request_seconds",
            "Forgejo API request latency (status 'error': no answer)",
            ["method", "path", "status"],
            buckets=FORGEJO_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self._usage_limit_hits = Counter(
            f"{PREFIX}_usage_limit_hits",
            "Claude usage limits that paused an agent",
            ["agent", "limit_type"],
            registry=self.registry,
        )
        self._webhooks = Counter(
            f"{PREFIX}_webhook_deliveries",
            "Webhook deliveries by how they were handled",
            ["result"],
            registry=self.registry,
        )

    # --- hooks other modules call ---

    def task_changed(self, task: Task) -> None:
        """A scheduler listener: count each task once, when it ends."""
        if task.state.is_final:
            self.task_finished(task)

    def task_finished(self, task: Task) -> None:
        agent, state = task.spec.agent, str(task.state)
        self._tasks_finished.labels(agent, state).inc()
        seconds = task_seconds(task)
        if seconds is not None:
            self._task_duration.labels(agent, state).observe(seconds)
        if task.cost_usd is not None and task.cost_usd > 0:
            self._task_cost.labels(agent).inc(task.cost_usd)

    def pause_changed(self, agent: str, pause: AgentPause | None) -> None:
        """A scheduler pause listener: count each usage limit that paused an agent."""
        if pause is not None and pause.cause == "usage_limit":
            self._usage_limit_hits.labels(agent, pause.limit_type or "unknown").inc()

    def poll_error(self, agent: str) -> None:
        self._poll_errors.labels(agent).inc()

    def forgejo_request(
        self, method: str, path_template: str, status: int | None, seconds: float
    ) -> None:
        label = TRANSPORT_ERROR if status is None else str(status)
        self._forgejo_latency.labels(method.upper(), path_template, label).observe(seconds)

    def webhook(self, result: str) -> None:
        self._webhooks.labels(result).inc()

    # --- scraping ---

    def observe_queue(self, snapshot: QueueSnapshot) -> None:
        self.snapshot = snapshot

    def render(self, accept: str | None = None) -> tuple[bytes, str]:
        """(body, content type) in the format the scraper's Accept header asks for:
        Prometheus text 0.0.4 by default, OpenMetrics when asked."""
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type

"""Builds every long-lived part of the daemon from the config, and closes them again.

This is the only place that knows how the parts fit: the store, the scheduler
and its worker, the Docker containers, one Forgejo client per agent, the Intake
(with its pollers and webhook handler) and the HTTP listener. daemon.py runs them;
tests and the demo build them the same way.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import aiodocker
import structlog
from aiohttp import web

from claude_hooks.config import Config, read_secret
from claude_hooks.daemon.log import redactor
from claude_hooks.forgejo.client import ForgejoClient, RepositoryNotServed
from claude_hooks.intake.decide import Policy
from claude_hooks.intake.intake import Intake
from claude_hooks.intake.poller import Poller, SharedBackoff
from claude_hooks.intake.reader import Permissions
from claude_hooks.intake.submit import Submitter
from claude_hooks.intake.webhooks import WebhookHandler
from claude_hooks.metrics import Metrics
from claude_hooks.report.tracker import Reporter, TaskReports
from claude_hooks.runner.containers import ContainerManager, instance_labels
from claude_hooks.runner.runtime import AgentRuntime, DockerRuntime
from claude_hooks.store import Store
from claude_hooks.tasks import Task, TaskSpec
from claude_hooks.work.delivery import Delivery
from claude_hooks.work.scheduler import Scheduler, SchedulerError
from claude_hooks.work.worker import TaskWorker

log = structlog.get_logger(__name__)


@dataclass
class Services:
    config: Config
    daemon_id: str
    store: Store
    docker: aiodocker.Docker
    containers: ContainerManager
    clients: Mapping[str, ForgejoClient]
    metrics: Metrics
    reports: TaskReports
    scheduler: Scheduler
    submitter: Submitter
    intake: Intake
    pollers: Sequence[Poller]
    outage: SharedBackoff
    webhooks: WebhookHandler
    web_runner: web.AppRunner | None = None
    accepting: bool = True

    @classmethod
    async def start(
        cls,
        config: Config,
        *,
        daemon_id: str,
        extra_labels: Mapping[str, str] | None = None,
        listen: bool = True,
        runtime: AgentRuntime | None = None,
    ) -> Services:
        """Open, wire and start everything; `runtime` replaces Docker (the demo only)."""
        config.daemon.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        store = await Store.open(config.daemon.db_path)
        docker = aiodocker.Docker()
        labels = {**instance_labels(config.daemon.state_dir), **(extra_labels or {})}
        containers = ContainerManager(docker, extra_labels=labels)
        metrics = Metrics()
        clients = {
            agent.name: ForgejoClient(
                config.forgejo.url,
                lambda agent=agent: read_secret(agent.token_file),
                timeout=config.forgejo.request_timeout,
                on_request=metrics.forgejo_request,
                serves=config.forgejo.serves,
            )
            for agent in config.agents
        }
        services = cls._assemble(
            config,
            daemon_id,
            store,
            docker,
            containers,
            clients,
            metrics,
            runtime or DockerRuntime(containers),
        )
        if runtime is None:
            await services._housekeeping()
        await services.scheduler.start()
        if listen:
            await services._listen()
        return services

    @classmethod
    def _assemble(
        cls,
        config: Config,
        daemon_id: str,
        store: Store,
        docker: aiodocker.Docker,
        containers: ContainerManager,
        clients: Mapping[str, ForgejoClient],
        metrics: Metrics,
        runtime: AgentRuntime,
    ) -> Services:
        def client_for(agent: str) -> ForgejoClient:
            return clients[config.agent(agent).name]

        holder: list[Services] = []
        policy = Policy.from_config(config)  # the daemon's one policy and permission view
        permissions = Permissions(policy, {n: c.repo_permission for n, c in clients.items()})
        reporter = Reporter(client_for, redact=redactor)
        reports = TaskReports(
            reporter, store, lambda task_id: holder[0].scheduler.position(task_id)
        )
        delivery = Delivery(client_for, redact=redactor)
        worker = TaskWorker(
            config,
            store,
            runtime,
            client_for,
            reports,
            delivery,
            daemon_id=daemon_id,
            permissions=permissions,
        )
        scheduler = Scheduler(
            store,
            max_concurrency=config.daemon.max_concurrency,
            agent_limits={a.name: a.max_concurrency for a in config.agents},
            execute=worker.execute,
            precheck=worker.precheck,
            timeouts={a.name: a.timeout for a in config.agents},
            on_change=lambda task: holder[0].on_change(task),
        )
        outage = SharedBackoff()
        submitter = Submitter(scheduler, store, config.forgejo.serves)
        intake = Intake(policy, clients, permissions, submitter.submit, task_hops=store.task_hop)
        services = cls(
            config=config,
            daemon_id=daemon_id,
            store=store,
            docker=docker,
            containers=containers,
            clients=clients,
            metrics=metrics,
            reports=reports,
            scheduler=scheduler,
            submitter=submitter,
            intake=intake,
            pollers=[
                Poller(
                    agent,
                    clients[agent.name],
                    intake,
                    store,
                    interval=config.daemon.poll_interval,
                    metrics=metrics,
                    outage=outage,
                )
                for agent in config.agents
            ],
            outage=outage,
            webhooks=WebhookHandler(intake),
        )
        holder.append(services)
        return services

    async def _housekeeping(self) -> None:
        """Containers of agents no longer configured go; processes of a dead daemon die."""
        try:
            removed = await self.containers.remove_orphans(set(self.config.agent_names))
            for agent in self.config.agents:
                await self.containers.kill_strays(agent, self.daemon_id)
        except Exception as exc:  # Docker down must not stop Forgejo intake; tasks wait
            log.warning("container_housekeeping_failed", error=str(exc))
            return
        if removed:
            log.info("orphan_containers_removed", containers=removed)

    async def _listen(self) -> None:
        from claude_hooks.api.app import ApiDeps, TaskFeed, build_app

        self.feed = TaskFeed()
        config = self.config
        deps = ApiDeps(
            config=config,
            store=self.store,
            scheduler=self.scheduler,
            submit=self.submit,
            on_webhook=self.webhooks.receive,
            webhook_secret=self._webhook_secret,
            api_token=self._api_token,
            readiness=self.readiness,
            metrics=self.metrics,
            accepting=lambda: self.accepting,
            feed=self.feed,
        )
        self.web_runner = web.AppRunner(build_app(deps), access_log=None, shutdown_timeout=2.0)
        await self.web_runner.setup()
        site = web.TCPSite(self.web_runner, config.api.host, config.api.port)
        await site.start()
        log.info("api_listening", url=config.api.base_url)

    # --- API submissions --------------------------------------------------------------------

    async def submit(self, spec: TaskSpec) -> tuple[Task, bool]:
        if not self.accepting:
            raise SchedulerError("shutting down: not accepting new tasks")
        if not self.config.forgejo.serves(spec.repo):
            raise RepositoryNotServed(spec.repo)
        return await self.scheduler.submit(spec)

    async def on_change(self, task: Task) -> None:
        await self.reports.on_change(task)
        feed = getattr(self, "feed", None)
        if feed is not None:
            feed.publish(task)
        if task.state.is_final:
            self.metrics.task_finished(task)

    # --- health -----------------------------------------------------------------------------

    async def readiness(self) -> dict[str, bool]:
        store_ok = True
        try:
            await self.store.counts()
        except Exception:
            store_ok = False
        return {
            "store": store_ok,
            "docker": await self.containers.ping(),
            "forgejo": not self.outage.down,
        }

    def _webhook_secret(self) -> bytes | None:
        file = self.config.forgejo.webhook_secret_file
        return read_secret(file).encode() if file is not None else None

    def _api_token(self) -> str | None:
        file = self.config.api.token_file
        return read_secret(file) if file is not None else None

    def stop_accepting(self) -> None:
        self.accepting = False

    async def close(self) -> None:
        await self.reports.close()
        await self.submitter.close()  # stops asked for by `@agent stop`, still under way
        if self.web_runner is not None:
            await self.web_runner.cleanup()
        for client in self.clients.values():
            await client.close()
        await self.docker.close()
        await self.store.close()

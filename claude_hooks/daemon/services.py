"""Builds every long-lived part of the daemon from the config, runs it, and closes it.

This is the only place that knows how the parts fit: the store, the scheduler
and its worker, the Docker containers, one Forgejo client per agent, the Intake
(with its pollers and webhook handler) and the HTTP listener. The daemon
(daemon/main.py), the demo and the tests all start, run and close them through
`Services`.

Start-up is a stack (contextlib.AsyncExitStack, as aiohttp's cleanup contexts): each
part registers its close as it is opened, so a step that fails closes what was opened
before it, and `close` unwinds in reverse: what runs (the scheduler's tasks, the report
chains) ends before what it uses (the Forgejo clients, Docker, the store). A failing
close is logged and the others still run.

The order of the first steps is what keeps one daemon from breaking another's work:
the state directory's lock (daemon/lock.py) comes before the store and Docker, so a
second daemon on the same state directory stops before it reads or kills anything; the
HTTP listener is bound before the housekeeping (stray processes, orphan containers) and
before the scheduler takes up what a previous process left, so a port already taken
stops the start before anything is touched, and a recovered task never runs while the
port that shows it is still closed.
"""

from __future__ import annotations

import asyncio
import errno
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from functools import partial

import aiodocker
import structlog
from aiohttp import web

from claude_hooks.api.app import ApiDeps, TaskFeed, build_app
from claude_hooks.api.connections import (
    AcceptErrorLog,
    ConnectionGuard,
    GuardedSite,
    RateLimitedLog,
    connection_limits,
    open_file_limit,
)
from claude_hooks.config import AgentConfig, Config, read_secret
from claude_hooks.daemon.lock import StateDirLock
from claude_hooks.daemon.log import redactor
from claude_hooks.forgejo.client import ForgejoClient
from claude_hooks.intake.decide import Policy
from claude_hooks.intake.intake import Intake
from claude_hooks.intake.poller import Poller, SharedBackoff
from claude_hooks.intake.reader import Permissions
from claude_hooks.intake.submit import STOPS_CLOSE_WITHIN, Submitter
from claude_hooks.intake.webhooks import WebhookHandler, WebhookInbox
from claude_hooks.metrics import Metrics
from claude_hooks.report.tracker import REPORTS_CLOSE_WITHIN, Reporter, TaskReports
from claude_hooks.runner.containers import ContainerError, ContainerManager, instance_labels
from claude_hooks.runner.engines import EngineHealth, EnginePool
from claude_hooks.runner.placement import EnginePlacer
from claude_hooks.runner.runtime import AgentRuntime, DockerRuntime
from claude_hooks.store import Store
from claude_hooks.tasks import Task, TaskSpec
from claude_hooks.work.delivery import Delivery
from claude_hooks.work.outages import OutagePolicy
from claude_hooks.work.scheduler import Scheduler, SchedulerError, TaskQueue
from claude_hooks.work.worker import TaskWorker

log = structlog.get_logger(__name__)

# The bounded waits of `close`, in seconds. Their sum is part of the shutdown budget
# (daemon/budget.py), which must fit the unit's TimeoutStopSec.
HTTP_CLOSE_WITHIN = 2.0  # open requests (event streams) after the listener stops
CLOSE_WITHIN = HTTP_CLOSE_WITHIN + STOPS_CLOSE_WITHIN + REPORTS_CLOSE_WITHIN
# Seconds between pings of every engine: how soon an engine that went away (with no
# task's exec on it to notice) is skipped, and one that came back is used again.
ENGINE_PING_INTERVAL = 10.0


class ListenError(Exception):
    """`api.listen` cannot be bound (in use, not an address of this host); in words."""


@dataclass
class Services:
    config: Config
    daemon_id: str
    store: Store
    docker: aiodocker.Docker  # the first engine's (the only one unless docker_host differs)
    containers: ContainerManager  # the first engine's; every engine's: `engines`
    clients: Mapping[str, ForgejoClient]
    metrics: Metrics
    reports: TaskReports
    scheduler: Scheduler
    feed: TaskFeed
    submitter: Submitter
    intake: Intake
    pollers: Sequence[Poller]
    outage: SharedBackoff
    webhooks: WebhookHandler
    inbox: WebhookInbox  # the API keeps deliveries here; they are decided in the background
    closing: AsyncExitStack  # every part's close, registered as the part was opened
    web_runner: web.AppRunner | None = None
    engines: EnginePool | None = None  # one client and manager per engine the agents name
    health: EngineHealth | None = None  # whether each engine is up, by name
    runtime: DockerRuntime | None = None  # None: the demo's or a test's runtime
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
        """Open, wire and start everything; `runtime` replaces Docker (the demo, tests).
        If a step fails, what the steps before it opened is closed, then the error raised."""
        closing = AsyncExitStack()
        try:
            return await cls._open(config, closing, daemon_id, extra_labels, listen, runtime)
        except BaseException:
            await closing.aclose()
            raise

    @classmethod
    async def _open(
        cls,
        config: Config,
        closing: AsyncExitStack,
        daemon_id: str,
        extra_labels: Mapping[str, str] | None,
        listen: bool,
        runtime: AgentRuntime | None,
    ) -> Services:
        config.daemon.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        lock = StateDirLock.acquire(config.daemon.state_dir)  # before the store and Docker
        closing.push_async_callback(lock.aclose)  # the last thing released
        store = await Store.open(config.daemon.db_path)
        _on_close(closing, "store", store.close)
        labels = {**instance_labels(config.daemon.state_dir), **(extra_labels or {})}
        declared = [engine.engine for engine in config.engines]
        engines = await EnginePool.open(config.agents, labels, declared)
        _on_close(closing, "docker", engines.close)
        docker, containers = engines.clients[0].docker, engines.clients[0].manager
        health = EngineHealth(client.engine.name for client in engines.clients)
        placer = EnginePlacer(config, store, health)
        metrics = Metrics()
        clients: dict[str, ForgejoClient] = {}
        for agent in config.agents:
            clients[agent.name] = client = ForgejoClient(
                config.forgejo.url,
                partial(read_secret, agent.token_file),
                timeout=config.forgejo.request_timeout,
                on_request=metrics.forgejo_request,
                serves=config.forgejo.serves,
                token_file=agent.token_file,
            )
            _on_close(closing, f"forgejo client of {agent.name}", client.close)
        if runtime is None:
            runtime = DockerRuntime(engines)
            _on_close(closing, "runtime", runtime.close)
        services = cls._assemble(
            config, daemon_id, store, docker, containers, clients, metrics, runtime, closing, placer
        )
        services.engines, services.health = engines, health
        services.runtime = runtime if isinstance(runtime, DockerRuntime) else None
        _on_close(closing, "reports", services.reports.close)
        _on_close(closing, "stop commands", services.submitter.close)
        if listen:  # before the housekeeping: a port in use stops us before we touch anything
            await services._listen()
        if isinstance(runtime, DockerRuntime):
            await services._housekeeping()
            await engines.ping(health)  # before the first placement: a down engine is skipped
            services._watch_engines()
        _on_close(closing, "scheduler", services.scheduler.close)
        await services.scheduler.start()  # dispatches recovered tasks: the port answers now
        _on_close(closing, "webhook inbox", services.inbox.close)
        services.inbox.start()  # decides what a previous process kept but did not decide
        services.reports.start_outbox()  # final reports an outage or a crash kept from a thread
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
        closing: AsyncExitStack,
        placer: EnginePlacer | None = None,
    ) -> Services:
        def client_for(agent: str) -> ForgejoClient:
            return clients[config.agent(agent).name]

        # The queue exists before the scheduler: the reports show queue positions, the
        # worker writes progress through the reports, and the scheduler runs the worker.
        queue = TaskQueue()
        policy = Policy.from_config(config)  # the daemon's one policy and permission view
        permissions = Permissions(policy, {n: c.repo_permission for n, c in clients.items()})
        reports = TaskReports(Reporter(client_for, redact=redactor), store, queue.position)
        delivery = Delivery(client_for, redact=redactor)

        async def submit_loop_step(spec: TaskSpec) -> None:
            # A step the worker starts itself (a CI fix): the scheduler made below, on a
            # repository the task that starts it was already served for.
            if config.forgejo.serves(spec.repo):
                await scheduler.submit(spec)

        outages = OutagePolicy(
            attempts=config.daemon.outage_retries,
            within=config.daemon.outage_retry_for,
            backoff=config.daemon.outage_backoff,
        )
        worker = TaskWorker(
            config,
            store,
            runtime,
            client_for,
            reports,
            delivery,
            daemon_id=daemon_id,
            permissions=permissions,
            submit=submit_loop_step,
            retries=outages,  # an overloaded Claude API is waited out like an outage
            placer=placer,
        )
        scheduler = Scheduler(
            store,
            max_concurrency=config.daemon.max_concurrency,
            agent_limits={a.name: a.max_concurrency for a in config.agents},
            execute=worker.execute,
            precheck=worker.precheck,
            timeouts={a.name: a.timeout for a in config.agents},
            queue=queue,
            outages=outages,
        )
        feed = TaskFeed()
        scheduler.subscribe(reports.on_change)
        scheduler.subscribe(feed.publish)
        scheduler.subscribe(metrics.task_changed)
        scheduler.subscribe_pauses(metrics.pause_changed)
        outage = SharedBackoff()
        submitter = Submitter(scheduler, store, config.forgejo.serves)
        intake = Intake(policy, clients, permissions, submitter.submit, task_hops=store.task_hop)
        pollers = [
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
        ]
        webhooks = WebhookHandler(intake)
        return cls(
            config=config,
            daemon_id=daemon_id,
            store=store,
            docker=docker,
            containers=containers,
            clients=clients,
            metrics=metrics,
            reports=reports,
            scheduler=scheduler,
            feed=feed,
            submitter=submitter,
            intake=intake,
            pollers=pollers,
            outage=outage,
            webhooks=webhooks,
            inbox=WebhookInbox(webhooks, store),
            closing=closing,
        )

    async def _housekeeping(self) -> None:
        """Containers of agents no longer configured go; processes of a dead daemon die.

        Only in this instance's containers (its label): the lock makes any other
        daemon process on them a dead one. A same-named container of another
        instance is refused, its processes left alone, and the other agents go on.
        """
        assert self.engines is not None  # Docker housekeeping: `_open` made the pool
        for client in self.engines.clients:
            await self._engine_housekeeping(
                client.manager, self.engines.agents_on(client, self.config.agents)
            )

    async def _engine_housekeeping(
        self, manager: ContainerManager, agents: Sequence[AgentConfig]
    ) -> None:
        """One engine's: an agent moved to another engine leaves an orphan here."""
        try:
            removed = await manager.remove_orphans({agent.name for agent in agents})
            for agent in agents:
                try:
                    await manager.kill_strays(agent, self.daemon_id)
                except ContainerError as exc:
                    log.error("container_refused", agent=agent.name, error=str(exc))
        except Exception as exc:  # Docker down must not stop Forgejo intake; tasks wait
            log.warning("container_housekeeping_failed", engine=manager.engine, error=str(exc))
            return
        if removed:
            log.info("orphan_containers_removed", engine=manager.engine, containers=removed)

    def _watch_engines(self) -> None:
        """Ping every engine every ENGINE_PING_INTERVAL (up/down: EngineHealth), until close."""
        engines, health = self.engines, self.health
        assert engines is not None and health is not None

        async def watch() -> None:
            while True:
                await asyncio.sleep(ENGINE_PING_INTERVAL)  # a period, not a wait on a condition
                try:
                    await engines.ping(health)
                except Exception as exc:  # never let the watch die: the next ping tries again
                    log.warning("engine_ping_failed", error=repr(exc))

        watcher = asyncio.create_task(watch(), name="engine-health")

        async def stop() -> None:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)

        _on_close(self.closing, "engine health", stop)

    def engine_states(self) -> dict[str, bool]:
        """Whether each engine is up, by name, as last seen (no ping)."""
        if self.health is None:
            return {}
        return {name: state.up for name, state in self.health.states().items()}

    async def _listen(self) -> None:
        config = self.config
        deps = ApiDeps(
            config=config,
            store=self.store,
            scheduler=self.scheduler,
            submit=self.submit,
            on_webhook=self.inbox.take,
            webhook_secret=self._webhook_secret,
            api_token=self._api_token,
            readiness=self.readiness,
            engines=self.engine_states,
            metrics=self.metrics,
            accepting=lambda: self.accepting,
            feed=self.feed,
        )
        self.web_runner = web.AppRunner(
            build_app(deps), access_log=None, shutdown_timeout=HTTP_CLOSE_WITHIN
        )
        await self.web_runner.setup()
        _on_close(self.closing, "http listener", self.web_runner.cleanup)
        self._log_accept_errors()
        limits = connection_limits(open_file_limit())
        guard = ConnectionGuard(limits, RateLimitedLog("api_connection_refused", level="warning"))
        handler_args = {
            "access_log": None,
            "keepalive_timeout": config.api.idle_timeout,
            "header_timeout": config.api.header_timeout,
            # Reading what is left of a refused body lets the client see the answer;
            # no longer than a body may take.
            "lingering_time": min(10.0, config.api.body_timeout),
        }
        site = GuardedSite(
            self.web_runner,
            config.api.host,
            config.api.port,
            guard=guard,
            handler_args=handler_args,
        )
        try:
            await site.start()
        except OSError as exc:
            raise ListenError(listen_problem(config.api.listen, exc)) from None
        log.info(
            "api_listening",
            url=config.api.base_url,
            max_connections=limits.max_connections,
            backlog=limits.backlog,
            open_file_limit=open_file_limit(),
        )

    def _log_accept_errors(self) -> None:
        """asyncio logs every failed accept(): thousands a second once descriptors run out."""
        loop = asyncio.get_running_loop()
        previous = loop.get_exception_handler()
        loop.set_exception_handler(AcceptErrorLog(previous, RateLimitedLog("api_accept_failed")))

        async def restore() -> None:
            loop.set_exception_handler(previous)

        _on_close(self.closing, "accept error log", restore)

    # --- running ----------------------------------------------------------------------------

    async def run(
        self,
        stop: asyncio.Event,
        *,
        skip_drain: asyncio.Event | None = None,
        on_drain: Callable[[int], None] | None = None,
    ) -> tuple[int, ...]:
        """Poll and take work until `stop`; then let running tasks end until drain_timeout
        (or `skip_drain`) and interrupt the rest: the ids of the tasks cut short.

        Two scopes, as in Forgejo runner's poller: accepting new work (pollers, webhooks,
        API submissions) ends at `stop`; running tasks end only at the drain deadline, and
        the ones stopped then are recorded interrupted, so the next start re-runs them.
        """
        pollers = [
            asyncio.create_task(poller.run(stop), name=f"poll-{poller.agent}")
            for poller in self.pollers
        ]
        for poller_task in pollers:
            poller_task.add_done_callback(_log_poller_end)
        try:
            await stop.wait()  # --- the accepting scope ends ---
            self.stop_accepting()
            await self.inbox.close()  # undecided deliveries stay stored for the next start
            await asyncio.gather(*pollers, return_exceptions=True)
            running = len(self.scheduler.running_ids())  # --- work scope: the drain ---
            if on_drain is not None:
                on_drain(running)
            drain_timeout = self.config.daemon.drain_timeout
            log.info("drain_started", running=running, drain_timeout=drain_timeout)
            return await self.scheduler.drain(drain_timeout, skip=skip_drain)
        finally:
            for poller_task in pollers:
                poller_task.cancel()
            await asyncio.gather(*pollers, return_exceptions=True)

    @classmethod
    @asynccontextmanager
    async def running(
        cls,
        config: Config,
        *,
        daemon_id: str,
        extra_labels: Mapping[str, str] | None = None,
        listen: bool = True,
        runtime: AgentRuntime | None = None,
    ) -> AsyncIterator[Services]:
        """Start, `run` while the block runs, then drain and close (the demo, the tests)."""
        services = await cls.start(
            config, daemon_id=daemon_id, extra_labels=extra_labels, listen=listen, runtime=runtime
        )
        stop = asyncio.Event()
        run = asyncio.create_task(services.run(stop), name="services")
        try:
            yield services
        finally:
            stop.set()
            try:
                await run
            finally:
                await services.close()

    # --- API submissions --------------------------------------------------------------------

    async def submit(self, spec: TaskSpec) -> tuple[Task, bool]:
        if not self.accepting:
            raise SchedulerError("shutting down: not accepting new tasks")
        return await self.scheduler.submit(spec)  # the API refused unserved repositories

    # --- health -----------------------------------------------------------------------------

    async def readiness(self) -> dict[str, bool]:
        store_ok = True
        try:
            await self.store.writable()  # a store another process locks cannot take a task
        except Exception:
            store_ok = False
        return {
            "store": store_ok,
            "docker": await self._docker_ready(),
            "forgejo": not self.outage.down,
        }

    async def _docker_ready(self) -> bool:
        """Every agent has an engine that answers: one engine of a pool down is not enough
        to fail readiness (its tasks go to the others); it shows in `engines`."""
        if self.engines is None:
            return await self.containers.ping()
        up = await self.engines.ping(self.health)
        return all(any(up[e.name] for e in agent.on_engines) for agent in self.config.agents)

    def _webhook_secret(self) -> bytes | None:
        file = self.config.forgejo.webhook_secret_file
        return read_secret(file).encode() if file is not None else None

    def _api_token(self) -> str | None:
        file = self.config.api.token_file
        return read_secret(file) if file is not None else None

    def stop_accepting(self) -> None:
        self.accepting = False
        if self.runtime is not None:
            self.runtime.stop_reading_back()  # no task follows the runs that end now

    async def close(self) -> None:
        """Close every part, the last opened first; closing again does nothing."""
        self.stop_accepting()
        await self.closing.aclose()


def listen_problem(listen: str, exc: OSError) -> str:
    """Why api.listen cannot be bound, for the operator: the key, the value, the fix."""
    reason = exc.strerror or str(exc)
    if exc.errno == errno.EADDRINUSE:
        hint = (
            "another process listens there (another claude-hooks daemon? `ss -ltnp` names it): "
            "stop it, or set api.listen to a free port"
        )
    else:
        hint = "set api.listen to an address of this host with a free port"
    return f"api.listen = {listen!r}: cannot listen: {reason}; {hint}"


def _on_close(closing: AsyncExitStack, part: str, close: Callable[[], Awaitable[object]]) -> None:
    """Register `close` on the stack; if it fails, say so and let the other parts close."""

    async def close_part() -> None:
        try:
            await close()
        except Exception as exc:
            log.error("close_failed", part=part, error=repr(exc), exc_info=exc)

    closing.push_async_callback(close_part)


def _log_poller_end(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.error("poller_crashed", poller=task.get_name(), error=repr(exc), exc_info=exc)

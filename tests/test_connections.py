"""The API's connections are bounded (#16 §3): read timeouts, idle timeout, connection cap.

A peer on a real socket against the daemon's own listener (Services, the store, the
scheduler; no Docker): a slow head or body gets 408 and the connection closes, an idle
connection closes, and beyond the cap (derived from RLIMIT_NOFILE) a connection closes
before anything is read. The cap under 1,000 connections is tried on a real
`claude-hooks run` whose open-file limit is 128, as the issue saw it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiodocker
import aiohttp
import pytest
from structlog.testing import capture_logs

from claude_hooks.api.connections import (
    ACCEPT_OUT_OF_RESOURCE,
    AcceptErrorLog,
    FileLimitTooLow,
    RateLimitedLog,
    connection_limits,
)
from claude_hooks.config import Config, ConfigError, load_config
from claude_hooks.daemon.main import EXIT_CONFIG
from claude_hooks.daemon.services import Services
from claude_hooks.precedence import PRECEDENCE
from tests.fakes.configs import ConfigFactory
from tests.test_services import FakeDocker, HeldRuntime, free_port
from tests.waiting import wait_until

WITHIN = 10.0
SECRET = "webhook-secret-0123456789"


def timeouts_config(factory: ConfigFactory, **api: object) -> Config:
    return factory.load(
        forgejo={
            "url": "http://127.0.0.1:9",
            "webhook_secret_file": str(factory.secret("hook-secret", SECRET)),
        },
        daemon={"poll_interval": 30, "drain_timeout": 5},
        api={"listen": f"127.0.0.1:{free_port()}", **api},
        agents=[factory.agent("dev")],
    )


@pytest.fixture(autouse=True)
def fake_docker(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(aiodocker, "Docker", FakeDocker)


@contextlib.asynccontextmanager
async def daemon(config: Config) -> AsyncIterator[Services]:
    services = await Services.start(config, daemon_id="test-connections", runtime=HeldRuntime())
    try:
        yield services
    finally:
        await services.close()


async def connect(config: Config) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(config.api.host, config.api.port)


async def until_closed(reader: asyncio.StreamReader) -> tuple[bytes, float]:
    """Everything the server sends until it closes the connection, and when it closed."""
    started = time.monotonic()
    data = await asyncio.wait_for(reader.read(), WITHIN)
    return data, time.monotonic() - started


async def test_a_request_head_that_trickles_gets_408_and_the_connection_closes(
    config_factory: ConfigFactory,
) -> None:
    config = timeouts_config(config_factory, header_timeout=0.3, idle_timeout=30)
    async with daemon(config):
        reader, writer = await connect(config)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # never the blank line
        data, took = await until_closed(reader)
        writer.close()
    assert data.startswith(b"HTTP/1.1 408 Request Timeout\r\n"), data
    assert b"Connection: close" in data
    assert 0.25 <= took < 5, took


async def test_bodies_that_trickle_get_408_and_their_connections_close(
    config_factory: ConfigFactory,
) -> None:
    """The issue's 150 slow-body connections, which stayed open for 60 s and more."""
    config = timeouts_config(config_factory, body_timeout=0.4, idle_timeout=30)

    async def slow_body() -> tuple[bytes, float]:
        reader, writer = await connect(config)
        writer.write(
            b"POST /hooks/forgejo HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1000\r\n"
            b'X-Forgejo-Event: issues\r\nContent-Type: application/json\r\n\r\n{"act'
        )
        try:
            return await until_closed(reader)
        finally:
            writer.close()

    async with daemon(config):
        answers = await asyncio.gather(*(slow_body() for _ in range(150)))
    for data, took in answers:
        head, _, body = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408 Request Timeout"), data
        assert b"Connection: close" in head
        assert b"did not arrive within 0.4s" in body
        assert 0.35 <= took < 5, took


async def test_an_idle_connection_is_closed_before_and_after_a_request(
    config_factory: ConfigFactory,
) -> None:
    config = timeouts_config(config_factory, idle_timeout=0.5)
    async with daemon(config):
        reader, writer = await connect(config)  # never sends a byte
        silent, took = await until_closed(reader)
        writer.close()
        assert (silent, took >= 0.45) == (b"", True), (silent, took)

        reader, writer = await connect(config)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")  # keep-alive
        answered, took = await until_closed(reader)
        writer.close()
    assert answered.startswith(b"HTTP/1.1 200 OK") and answered.endswith(b'{"status": "ok"}')
    assert took >= 0.45, took


async def test_a_request_holds_the_streams_from_its_connection_to_its_answer(
    config_factory: ConfigFactory,
) -> None:
    """claude_hooks/precedence.py: the agents' output waits while a request is on its way
    and in its handler; every hold is let go again, whatever the connection did."""
    config = timeouts_config(config_factory, header_timeout=0.3, idle_timeout=30)
    before = PRECEDENCE.open_holds
    async with daemon(config):
        reader, writer = await connect(config)  # accepted: a request is on its way
        await wait_until(lambda: PRECEDENCE.open_holds == before + 1, what="the accept's hold")
        for _ in range(2):  # keep-alive: the second request holds from its first byte
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            head = await asyncio.wait_for(reader.readuntil(b'{"status": "ok"}'), WITHIN)
            assert head.startswith(b"HTTP/1.1 200 OK")
            await wait_until(lambda: PRECEDENCE.open_holds == before, what="the answer's end")
        writer.close()

        _, silent = await connect(config)  # closed without a byte
        silent.close()
        timed_out, writer = await connect(config)  # a head that never ends: 408
        writer.write(b"GET /healthz HTTP/1.1\r\n")
        await until_closed(timed_out)
        writer.close()
        await wait_until(lambda: PRECEDENCE.open_holds == before, what="every hold let go")


@pytest.mark.parametrize("key", ["header_timeout", "body_timeout", "idle_timeout"])
@pytest.mark.parametrize("value", ["nan", "inf", "0", "-1"])
def test_a_timeout_that_never_fires_or_fires_at_once_is_named(
    config_factory: ConfigFactory, key: str, value: str
) -> None:
    text = config_factory.text(api={"listen": "127.0.0.1:8765"})
    path = config_factory.write(text.replace("[api]\n", f"[api]\n{key} = {value}\n", 1))
    with pytest.raises(ConfigError, match=f"api.{key}"):
        load_config(path)


# --- the connection cap -----------------------------------------------------------------------


def test_the_cap_leaves_the_daemon_its_own_descriptors() -> None:
    for limit in (128, 1024, 4096, 65536):
        limits = connection_limits(limit)
        in_flight = limits.max_connections + 4 * limits.backlog
        assert limits.max_connections >= 8 and in_flight + 64 <= limit, (limit, limits)
    with pytest.raises(FileLimitTooLow, match=r"RLIMIT_NOFILE.*LimitNOFILE"):
        connection_limits(80)


OPEN_FILES = 128  # the limit under which 125 idle connections stopped the daemon
CONNECTIONS = 1000


def low_file_limit() -> None:  # runs in the daemon's process, before exec
    resource.setrlimit(resource.RLIMIT_NOFILE, (OPEN_FILES, OPEN_FILES))


def open_files(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


async def healthy(config: Config) -> bool:
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session,
            session.get(f"{config.api.base_url}/healthz") as response,
        ):
            return response.status == 200
    except (aiohttp.ClientError, TimeoutError):
        return False


async def hold(config: Config) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
    try:
        return await asyncio.wait_for(connect(config), WITHIN)
    except (OSError, TimeoutError):
        return None


async def closed_by_server(reader: asyncio.StreamReader) -> bool:
    try:
        return await reader.read(1) == b""
    except ConnectionError:
        return True


@pytest.mark.slow
async def test_the_cap_holds_under_1000_connections_at_an_open_file_limit_of_128(
    forgejo_sim: Any, config_factory: ConfigFactory
) -> None:
    token = "forgejo-token-of-capped-0123456789"
    forgejo_sim.add_user("capped", token=token)
    config = config_factory.load(
        forgejo={"url": forgejo_sim.base_url, "repositories": ["acme/*"]},
        daemon={"poll_interval": 0.2, "drain_timeout": 5, "log_format": "json"},
        api={"listen": f"127.0.0.1:{free_port()}", "idle_timeout": 120},
        agents=[config_factory.agent("capped", token_file=str(config_factory.secret("t", token)))],
    )
    log_path = config.path.parent / "daemon.log"
    with log_path.open("wb") as log_file:
        daemon = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "claude_hooks", "run", "--config", str(config.path)),
            stdout=log_file,
            stderr=asyncio.subprocess.STDOUT,
            preexec_fn=low_file_limit,
        )
    held: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    try:
        await wait_until(lambda: healthy(config), timeout=30, details=log_path.read_text)
        limits = listening(log_path)
        cap, backlog = limits["max_connections"], limits["backlog"]
        idle = open_files(daemon.pid)
        opened = await asyncio.gather(*(hold(config) for _ in range(CONNECTIONS)))
        held = [connection for connection in opened if connection is not None]
        ends = [asyncio.create_task(closed_by_server(reader)) for reader, _ in held]
        # Beyond the cap, what the daemon accepts it closes at once; the kernel keeps the
        # rest of the burst half-open in its queues (never a descriptor of the daemon).
        await wait_until(
            lambda: sum(end.done() for end in ends) >= CONNECTIONS // 4,
            details=lambda: (sum(e.done() for e in ends), len(held), cap, open_files(daemon.pid)),
        )
        peak = open_files(daemon.pid)
        polls = len(forgejo_sim.requests)
        # While the cap is full the daemon keeps polling: its token file still opens.
        await wait_until(lambda: len(forgejo_sim.requests) >= polls + 3, timeout=WITHIN)
        peak = max(peak, open_files(daemon.pid))
        for _, writer in held:
            writer.close()
        await wait_until(lambda: healthy(config), timeout=WITHIN, details=log_path.read_text)
    finally:
        for _, writer in held:
            writer.close()
        daemon.terminate()
        await daemon.wait()
    log = log_path.read_text()
    assert ACCEPT_OUT_OF_RESOURCE not in log and "Too many open files" not in log
    refusals = [r for r in records(log_path) if r.get("event") == "api_connection_refused"]
    assert len(refusals) == 1 and refusals[0]["count"] == 1, refusals  # once a minute
    assert len(held) == CONNECTIONS and cap < OPEN_FILES // 2
    assert peak <= idle + cap + 4 * backlog < OPEN_FILES, (peak, idle, cap)


def records(log_path: Path) -> list[dict[str, Any]]:
    found = []
    for line in log_path.read_text().splitlines():
        with contextlib.suppress(ValueError):
            found.append(dict(json.loads(line)))
    return found


def listening(log_path: Path) -> dict[str, Any]:
    for record in records(log_path):
        if record.get("event") == "api_listening":
            return record
    raise AssertionError(f"no api_listening record in {log_path}")


# --- accept errors ----------------------------------------------------------------------------


async def test_failed_accepts_are_logged_once_per_interval_with_a_count(
    config_factory: ConfigFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """What asyncio does per failed accept() once descriptors run out, 1,000 times: the
    daemon's loop makes one record of it, not 1,000 (the issue saw 471,876 in 30 s)."""
    failure = {
        "message": ACCEPT_OUT_OF_RESOURCE,
        "exception": OSError(24, "Too many open files"),
    }
    loop = asyncio.get_running_loop()
    async with daemon(timeouts_config(config_factory)):
        with capture_logs() as records:
            for _ in range(1000):
                loop.call_exception_handler(failure)
            loop.call_exception_handler({"message": "something else went wrong"})
    accept_records = [r for r in records if r["event"] == "api_accept_failed"]
    asyncio_records = [r for r in caplog.records if r.name == "asyncio"]
    assert [(r["count"], r["error"]) for r in accept_records] == [
        (1, "[Errno 24] Too many open files")
    ]
    assert [r.getMessage() for r in asyncio_records] == ["something else went wrong"]


def test_a_rate_limited_log_says_how_many_happened_since_its_last_record() -> None:
    now = [0.0]
    limited = RateLimitedLog("api_accept_failed", interval=60.0, clock=lambda: now[0])
    with capture_logs() as records:
        for second in range(150):  # 10 failures a second for 150 s
            now[0] = float(second)
            for _ in range(10):
                limited.record(error="EMFILE")
    assert [(r["count"], r["interval"]) for r in records] == [(1, 60.0), (600, 60.0), (600, 60.0)]


def test_other_loop_errors_still_reach_the_previous_handler() -> None:
    seen: list[dict[str, Any]] = []
    handler = AcceptErrorLog(lambda loop, context: seen.append(context), RateLimitedLog("x"))
    loop = asyncio.new_event_loop()
    try:
        with capture_logs() as records:
            handler(loop, {"message": "boom"})
            handler(loop, {"message": ACCEPT_OUT_OF_RESOURCE})
    finally:
        loop.close()
    assert seen == [{"message": "boom"}] and [r["event"] for r in records] == ["x"]


async def test_a_file_limit_too_low_for_any_connection_stops_the_start_in_words(
    config_factory: ConfigFactory,
) -> None:
    config = config_factory.load(
        daemon={"log_format": "json"}, api={"listen": f"127.0.0.1:{free_port()}"}
    )

    def tiny_file_limit() -> None:  # runs in the daemon's process, before exec
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))

    daemon = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "claude_hooks", "run", "--config", str(config.path)),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        preexec_fn=tiny_file_limit,
    )
    async with asyncio.timeout(30):
        out, _ = await daemon.communicate()
    text = out.decode()
    assert daemon.returncode == EXIT_CONFIG, text
    assert "Traceback" not in text and "daemon_crashed" not in text
    failed = [json.loads(line) for line in text.splitlines() if "daemon_start_failed" in line]
    assert len(failed) == 1 and "LimitNOFILE" in failed[0]["error"], text

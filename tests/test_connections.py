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
import time
from collections.abc import AsyncIterator

import aiodocker
import pytest

from claude_hooks.api.connections import (
    FileLimitTooLow,
    connection_limits,
)
from claude_hooks.config import Config, ConfigError, load_config
from claude_hooks.daemon.services import Services
from tests.fakes.configs import ConfigFactory
from tests.test_services import FakeDocker, HeldRuntime, free_port

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


async def test_a_body_that_trickles_gets_408_and_the_connection_closes(
    config_factory: ConfigFactory,
) -> None:
    config = timeouts_config(config_factory, body_timeout=0.4, idle_timeout=30)
    async with daemon(config):
        reader, writer = await connect(config)
        writer.write(
            b"POST /hooks/forgejo HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1000\r\n"
            b'X-Forgejo-Event: issues\r\nContent-Type: application/json\r\n\r\n{"act'
        )
        data, took = await until_closed(reader)
        writer.close()
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

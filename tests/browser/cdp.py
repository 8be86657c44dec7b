"""Just enough of the Chrome DevTools Protocol to drive Debian's headless chromium.

The browser is started by path (never downloaded) with a fresh profile, and talks
CDP over one aiohttp websocket: `Browser` opens pages, `Page` evaluates script in
them and waits for conditions. Exceptions thrown in a page are collected, so a
test can assert that the page ran cleanly.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import shutil
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp

from tests.waiting import wait_until

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
    "--no-default-browser-check",
    "--disable-extensions",
    "--mute-audio",
    "--remote-debugging-port=0",
)


def find_chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


class CdpError(Exception):
    pass


class Connection:
    """One CDP websocket: commands with ids matched to replies, events dispatched."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self._ws = ws
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.exceptions: list[str] = []  # uncaught errors thrown in any attached page
        self._reader = asyncio.create_task(self._read())

    async def send(
        self, method: str, params: dict[str, Any] | None = None, session: str | None = None
    ) -> dict[str, Any]:
        message_id = next(self._ids)
        message: dict[str, Any] = {"id": message_id, "method": method, "params": params or {}}
        if session is not None:
            message["sessionId"] = session
        reply = self._pending[message_id] = asyncio.get_running_loop().create_future()
        await self._ws.send_str(json.dumps(message))
        async with asyncio.timeout(15):
            return await reply

    async def _read(self) -> None:
        async for frame in self._ws:
            if frame.type is not aiohttp.WSMsgType.TEXT:
                continue
            message = json.loads(frame.data)
            if "id" in message:
                reply = self._pending.pop(message["id"], None)
                if reply is None or reply.done():
                    continue
                if "error" in message:
                    reply.set_exception(CdpError(f"{message['error']}"))
                else:
                    reply.set_result(message.get("result", {}))
            elif message.get("method") == "Runtime.exceptionThrown":
                details = message["params"]["exceptionDetails"]
                description = details.get("exception", {}).get("description")
                self.exceptions.append(description or details.get("text", "exception"))
        for reply in self._pending.values():
            if not reply.done():
                reply.set_exception(CdpError("the browser closed the connection"))

    async def close(self) -> None:
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader
        await self._ws.close()


class Page:
    def __init__(self, connection: Connection, session: str) -> None:
        self._cdp = connection
        self._session = session

    async def evaluate(self, expression: str) -> Any:
        reply = await self._cdp.send(
            "Runtime.evaluate",
            {"expression": expression, "returnByValue": True, "awaitPromise": True},
            self._session,
        )
        if "exceptionDetails" in reply:
            raise CdpError(f"{expression!r} threw: {reply['exceptionDetails']}")
        return reply["result"].get("value")

    async def shown(self, selector: str) -> bool:
        """Whether a person sees the element: rendered, not hidden by style, with an area.

        The `hidden` property alone says nothing: a stylesheet's `display` can override it.
        """
        return bool(
            await self.evaluate(
                f"(() => {{ const el = document.querySelector({json.dumps(selector)});"
                " if (!el) return false;"
                " const style = getComputedStyle(el); const box = el.getBoundingClientRect();"
                " return style.display !== 'none' && style.visibility !== 'hidden'"
                " && Number(style.opacity) > 0 && box.width > 0 && box.height > 0"
                " && el.checkVisibility({checkOpacity: true, checkVisibilityCSS: true}); })()"
            )
        )

    async def screenshot(self, path: Path) -> bytes:
        """The page as rendered: a PNG, also written to `path` (a test's artifact)."""
        reply = await self._cdp.send("Page.captureScreenshot", {"format": "png"}, self._session)
        png = base64.b64decode(reply["data"])
        await asyncio.to_thread(_write_file, path, png)
        return png

    async def wait_for(self, expression: str, seconds: float = 10.0) -> Any:
        """The expression's value once truthy; fails with what it last was."""
        last: list[Any] = [None]

        async def truthy() -> Any:
            last[0] = await self.evaluate(expression)
            return last[0]

        return await wait_until(
            truthy,
            timeout=seconds,
            interval=0.05,
            what=expression,
            details=lambda: f"last: {last[0]!r}",
        )


class Browser:
    def __init__(self, process: asyncio.subprocess.Process, cdp: Connection) -> None:
        self.process = process
        self.cdp = cdp

    @classmethod
    @contextlib.asynccontextmanager
    async def launch(cls, executable: str, profile: Path) -> AsyncIterator[Browser]:
        log = (profile.parent / "chromium.log").open("wb")
        process = await asyncio.create_subprocess_exec(
            executable, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "about:blank",
            stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log,
            start_new_session=True,  # its own process group: stopping it ends its children
        )  # fmt: skip
        try:
            url = await _devtools_url(profile, process)
            async with aiohttp.ClientSession() as session:
                ws = await session.ws_connect(url, max_msg_size=0)
                browser = cls(process, Connection(ws))
                try:
                    yield browser
                finally:
                    await browser.cdp.close()
        finally:
            await _stop(process)
            log.close()

    async def open(self, url: str) -> Page:
        target = await self.cdp.send("Target.createTarget", {"url": "about:blank"})
        attached = await self.cdp.send(
            "Target.attachToTarget", {"targetId": target["targetId"], "flatten": True}
        )
        page = Page(self.cdp, attached["sessionId"])
        await self.cdp.send("Runtime.enable", session=attached["sessionId"])
        await self.cdp.send("Page.enable", session=attached["sessionId"])
        await self.cdp.send("Page.navigate", {"url": url}, attached["sessionId"])
        await page.wait_for("document.readyState === 'complete'")
        return page


def _write_file(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


async def _devtools_url(profile: Path, process: asyncio.subprocess.Process) -> str:
    """Chromium writes its port and browser path to DevToolsActivePort once it listens."""
    marker = profile / "DevToolsActivePort"

    def port_and_path() -> list[str] | None:
        if process.returncode is not None:
            raise CdpError(f"chromium exited with {process.returncode} (see chromium.log)")
        lines = marker.read_text().split() if marker.exists() else []
        return lines if len(lines) >= 2 else None

    lines = await wait_until(port_and_path, timeout=30, interval=0.05, what=f"{marker}")
    return f"ws://127.0.0.1:{lines[0]}{lines[1]}"


async def _stop(process: asyncio.subprocess.Process) -> None:
    if process.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        async with asyncio.timeout(5):
            await process.wait()
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        await process.wait()

"""The demo's runtime where no Docker engine answers: the scripted claude as a host process.

Only `claude-hooks demo` uses it. It maps the container's /state onto a local
directory and runs the fake claude with the host's sh; the product always runs
tasks in the agent's container (runner/runtime.py DockerRuntime).
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable, Sequence
from pathlib import Path

from claude_hooks.config import AgentConfig
from claude_hooks.demo.agent_image import INPUTS
from claude_hooks.runner import workspace
from claude_hooks.runner.claude import STATE_DIR
from claude_hooks.runner.execution import ClaudeExec, ExecResult, LineSplitter, TailBuffer
from claude_hooks.runner.stream import Result, StreamEvent, parse_line

FAKE_CLAUDE = INPUTS / "fake-claude.sh"


class LocalRuntime:
    def __init__(self, root: Path) -> None:
        self._root = root

    def local(self, path: str) -> str:
        """A container path under /state, on this machine."""
        return str(self._root / path.removeprefix(STATE_DIR).lstrip("/"))

    def _env(self, env: Sequence[str]) -> dict[str, str]:
        mapped = {k: self.local(v) if v.startswith(STATE_DIR) else v
                  for k, v in (item.split("=", 1) for item in env)}  # fmt: skip
        return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **mapped,
                "FAKE_CLAUDE_SAMPLES": str(INPUTS / "samples")}  # fmt: skip

    async def prepare(
        self, agent: AgentConfig, plan: workspace.WorkspacePlan, env: Sequence[str]
    ) -> str:
        if plan.checkout is not workspace.Checkout.NONE:
            raise workspace.WorkspaceError("the demo's local runtime makes no git checkout")
        await asyncio.to_thread(Path(self.local(plan.path)).mkdir, parents=True, exist_ok=True)
        return ""

    async def publish(
        self, agent: AgentConfig, plan: workspace.WorkspacePlan, env: Sequence[str]
    ) -> workspace.Published:
        return workspace.Published(commits=0, log=())

    async def diff_since(
        self, agent: AgentConfig, plan: workspace.WorkspacePlan, env: Sequence[str], since: str
    ) -> workspace.DiffSince:
        return workspace.DiffSince(since, missing=True)  # no checkout here, so no history

    async def run(
        self, agent: AgentConfig, claude: ClaudeExec, on_event: Callable[[StreamEvent], None]
    ) -> ExecResult:
        process = await asyncio.create_subprocess_exec(
            "sh", str(FAKE_CLAUDE), *claude.argv[1:], cwd=self.local(claude.workdir),
            env=self._env(claude.env), stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )  # fmt: skip
        try:
            return await self._communicate(process, claude.stdin, on_event)
        except BaseException:
            await asyncio.shield(_stop(process, claude.stop_grace))
            raise

    async def _communicate(
        self, process: asyncio.subprocess.Process, stdin: bytes,
        on_event: Callable[[StreamEvent], None],
    ) -> ExecResult:  # fmt: skip
        assert process.stdin and process.stdout and process.stderr
        process.stdin.write(stdin)
        process.stdin.close()
        stderr = TailBuffer()
        drain_stderr = asyncio.create_task(_copy(process.stderr, stderr.write))
        splitter, result, count = LineSplitter(), None, 0

        def deliver(lines: list[bytes]) -> None:
            nonlocal result, count
            for line in lines:
                event = parse_line(line)
                result = event if isinstance(event, Result) else result
                count += 1
                on_event(event)

        while chunk := await process.stdout.read(65536):
            deliver(splitter.feed(chunk))
        deliver(splitter.flush())  # a last line without its newline
        await drain_stderr
        return ExecResult(await process.wait(), result, stderr.text(), count)


async def _copy(reader: asyncio.StreamReader, write: Callable[[bytes], None]) -> None:
    while chunk := await reader.read(65536):
        write(chunk)


async def _stop(process: asyncio.subprocess.Process, grace: float) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if process.returncode is not None:
            return
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            await asyncio.wait_for(process.wait(), grace)
        except TimeoutError:
            continue

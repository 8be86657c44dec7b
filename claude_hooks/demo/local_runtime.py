"""The demo's runtime where no Docker engine answers: the scripted team as host processes.

Only `claude-hooks demo` uses it. It maps each agent's /state onto a local
directory and runs workspace.py's scripts (real git, the host's) and the scripted
claude with the host's shell; the product always runs tasks in the agent's
container (runner/runtime.py DockerRuntime).
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

from claude_hooks.config import AgentConfig
from claude_hooks.demo.agent_image import INPUTS
from claude_hooks.runner import workspace
from claude_hooks.runner.claude import HOME_DIR, STATE_DIR
from claude_hooks.runner.execution import ClaudeExec, ExecResult, LineSplitter, Room, TailBuffer
from claude_hooks.runner.stream import Result, StreamEvent, parse_line

FAKE_CLAUDE = INPUTS / "fake-claude.sh"


class LocalRuntime:
    """Each agent's /state is a directory of its own under `root`; the workspace scripts
    (workspace.py's, unchanged) and the agent's claude_command run as host processes."""

    def __init__(self, root: Path) -> None:
        self._root = root

    def local(self, agent: str, path: str) -> str:
        """A container path under /state, on this machine, for `agent`."""
        return str(self._root / agent / path.removeprefix(STATE_DIR).lstrip("/"))

    def _env(self, agent: str, env: Sequence[str]) -> dict[str, str]:
        mapped = {k: self.local(agent, v) if v.startswith(STATE_DIR) else v
                  for k, v in (item.split("=", 1) for item in env)}  # fmt: skip
        return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **mapped,
                "FAKE_CLAUDE_SAMPLES": str(INPUTS / "samples")}  # fmt: skip

    def _here(self, agent: str, plan: workspace.WorkspacePlan) -> workspace.WorkspacePlan:
        return replace(plan, path=self.local(agent, plan.path))

    async def _script(self, agent: str, args: list[str], env: Sequence[str]) -> tuple[int, str]:
        home = Path(self.local(agent, HOME_DIR))
        await asyncio.to_thread(home.mkdir, parents=True, exist_ok=True)
        process = await asyncio.create_subprocess_exec(
            *args, cwd=home, env=self._env(agent, env),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        out, _ = await process.communicate()
        return process.returncode or 0, out.decode(errors="replace")

    async def ready(self, agent: AgentConfig) -> None:
        """No container here: nothing to make ready."""

    async def prepare(
        self, agent: AgentConfig, plan: workspace.WorkspacePlan, env: Sequence[str]
    ) -> str:
        here = self._here(agent.name, plan)
        code, output = await self._script(agent.name, workspace.prepare_args(here), env)
        if code != 0:
            raise workspace.WorkspaceError(f"preparing {plan.path} failed (exit {code})")
        return output.strip().splitlines()[-1] if output.strip() else ""

    async def publish(
        self, agent: AgentConfig, plan: workspace.WorkspacePlan, env: Sequence[str]
    ) -> workspace.Published:
        here = self._here(agent.name, plan)
        code, output = await self._script(agent.name, workspace.publish_args(here), env)
        if code != 0:
            raise workspace.PushRefused(plan.branch, code, output.strip())
        return workspace.parse_publish_output(output)

    async def diff_since(
        self, agent: AgentConfig, plan: workspace.WorkspacePlan, env: Sequence[str], since: str
    ) -> workspace.DiffSince:
        here = self._here(agent.name, plan)
        args = workspace.diff_since_args(here, since)
        code, output = await self._script(agent.name, args, env)
        if code != 0:
            raise workspace.WorkspaceError(f"diffing {plan.path} since {since[:10]} failed")
        return workspace.parse_diff_since(since, output)

    async def run(
        self,
        agent: AgentConfig,
        claude: ClaudeExec,
        on_event: Callable[[StreamEvent], None],
        room: Room | None = None,
    ) -> ExecResult:
        command = claude.argv[0]
        argv = ("sh", str(FAKE_CLAUDE)) if command == "claude" else (command,)
        process = await asyncio.create_subprocess_exec(
            *argv, *claude.argv[1:], cwd=self.local(agent.name, claude.workdir),
            env=self._env(agent.name, claude.env), stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )  # fmt: skip
        try:
            return await self._communicate(process, claude.stdin, on_event, room)
        except BaseException:
            await asyncio.shield(_stop(process, claude.stop_grace))
            raise

    async def _communicate(
        self, process: asyncio.subprocess.Process, stdin: bytes,
        on_event: Callable[[StreamEvent], None], room: Room | None,
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
            if room is not None:
                await room()
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

"""The scripted agent image of the demo and the tests, built without a registry.

FROM scratch around the host's static busybox (Debian's busybox-static), an
`agent` user (uid 100000) and a fake `claude` that replays recorded stream-json
(agent_image/fake-claude.sh). Built through the Docker Engine API from an
in-memory tar; an image built from the same inputs is reused (a content label).

    python -m claude_hooks.demo.agent_image [TAG]
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import sys
import tarfile
from pathlib import Path

import aiodocker

INPUTS = Path(__file__).resolve().parent / "agent_image"
DEFAULT_BUSYBOX = Path("/bin/busybox")
INPUTS_LABEL = "claude-hooks.test-image-inputs"
EXECUTABLE = {"busybox", "fake-claude.sh"}


class ImageBuildError(Exception):
    """The scripted agent image cannot be built here; the message says why."""


def context_files(busybox: Path = DEFAULT_BUSYBOX) -> dict[str, bytes]:
    """Build-context path → content: the inputs, the samples and the host's busybox."""
    if not busybox.is_file():
        raise ImageBuildError(
            f"no static busybox at {busybox}: apt-get install busybox-static (or pass --busybox)"
        )
    files = {p.name: p.read_bytes() for p in INPUTS.iterdir() if p.is_file()}
    files |= {f"samples/{p.name}": p.read_bytes() for p in (INPUTS / "samples").glob("*.jsonl")}
    files["busybox"] = busybox.read_bytes()
    return files


def inputs_digest(files: dict[str, bytes]) -> str:
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(name.encode() + b"\0" + hashlib.sha256(files[name]).digest())
    return digest.hexdigest()[:16]


def context_tar(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name in sorted(files):
            info = tarfile.TarInfo(name)
            info.size = len(files[name])
            info.mode = 0o755 if name in EXECUTABLE else 0o644
            tar.addfile(info, io.BytesIO(files[name]))
    return buffer.getvalue()


async def ensure_image(
    docker: aiodocker.Docker, tag: str, *, busybox: Path = DEFAULT_BUSYBOX
) -> bool:
    """Build `tag` unless an image from the same inputs exists; whether it built."""
    files = context_files(busybox)
    digest = inputs_digest(files)
    try:
        existing = await docker.images.inspect(tag)
    except aiodocker.DockerError:
        existing = None
    if existing and (existing["Config"].get("Labels") or {}).get(INPUTS_LABEL) == digest:
        return False
    output = await docker.images.build(
        fileobj=io.BytesIO(context_tar(files)), encoding="identity", tag=tag,
        labels={INPUTS_LABEL: digest}, rm=True,
    )  # fmt: skip
    errors = [line["error"] for line in output if isinstance(line, dict) and "error" in line]
    if errors:
        raise ImageBuildError(f"building {tag} failed: {errors[-1].strip()}")
    return True


async def _main(tag: str) -> int:
    async with aiodocker.Docker() as docker:
        built = await ensure_image(docker, tag)
    print(f"{'built' if built else 'up to date'}: {tag}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(
            asyncio.run(_main(sys.argv[1] if len(sys.argv) > 1 else "claude-hooks-test:latest"))
        )
    except (ImageBuildError, aiodocker.DockerError) as exc:
        print(f"agent_image: {exc}", file=sys.stderr)
        sys.exit(1)

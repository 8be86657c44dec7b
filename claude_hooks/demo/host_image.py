"""An agent image made of the host's own userland, for the demo and tests that need git.

The busybox test image has no git. This one is FROM scratch with only /etc/passwd
(the `agent` user, uid 100000), an empty /usr and the merged-/usr symlinks (/bin,
/lib, /lib64 → usr/…); its containers get the host's /usr bind-mounted read-only
(`HOST_USR_MOUNT` in the agent's `mounts`), so git, bash, coreutils and glibc are
the host's. /sbin stays a real directory: Docker bind-mounts docker-init at
/sbin/docker-init, which cannot be created inside a read-only /usr.

Built through the Docker Engine API from an in-memory tar (nothing is pulled), once
per set of inputs (a content label), like claude_hooks/demo/agent_image.py.
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile

import aiodocker

from claude_hooks.config import DEFAULT_AGENT_UID as AGENT_UID

HOST_IMAGE = "claude-hooks-host-userland:test"  # the tests'; the demo builds its own tag
INPUTS_LABEL = "claude-hooks.host-image-inputs"
HOST_USR_MOUNT = "/usr:/usr:ro"
MERGED_USR = {"bin": "usr/bin", "lib": "usr/lib", "lib64": "usr/lib64"}

DOCKERFILE = f"""FROM scratch
COPY rootfs/ /
COPY --chown={AGENT_UID}:{AGENT_UID} state/ /state/
ENV PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin
CMD ["sleep", "infinity"]
""".encode()
PASSWD = (
    f"root:x:0:0:root:/root:/bin/sh\nagent:x:{AGENT_UID}:{AGENT_UID}:agent:/state/home:/bin/bash\n"
)
GROUP = f"root:x:0:\nagent:x:{AGENT_UID}:\n"
DIRECTORIES = {"usr": 0o755, "sbin": 0o755, "tmp": 0o1777, "root": 0o700}
# The agent's, as in the real image (COPY --chown): a fresh state volume copies them,
# owner included.
AGENT_DIRECTORIES = ("state", "state/home", "state/home/.claude")


class HostImageError(RuntimeError):
    """The host-userland image cannot be built here; the message says why."""


def host_problem() -> str | None:
    """Why this host's userland cannot be borrowed, or None."""
    for link, target in MERGED_USR.items():
        path = f"/{link}"
        if not os.path.islink(path) or os.readlink(path) != target:
            return f"{path} is not a symlink to {target} (the host is not merged-/usr)"
    for tool in ("/usr/bin/git", "/usr/bin/bash", "/usr/bin/sleep"):
        if not os.access(tool, os.X_OK):
            return f"{tool} is missing on the host"
    return None


def context_tar() -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        _add_file(tar, "Dockerfile", DOCKERFILE, 0o644)
        _add_file(tar, "rootfs/etc/passwd", PASSWD.encode(), 0o644)
        _add_file(tar, "rootfs/etc/group", GROUP.encode(), 0o644)
        for name, mode in DIRECTORIES.items():
            info = tarfile.TarInfo(f"rootfs/{name}")
            info.type, info.mode = tarfile.DIRTYPE, mode
            tar.addfile(info)
        for name in AGENT_DIRECTORIES:
            info = tarfile.TarInfo(name)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
        for link, target in MERGED_USR.items():
            info = tarfile.TarInfo(f"rootfs/{link}")
            info.type, info.linkname, info.mode = tarfile.SYMTYPE, target, 0o777
            tar.addfile(info)
    return buffer.getvalue()


def _add_file(tar: tarfile.TarFile, name: str, data: bytes, mode: int) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode = len(data), mode
    tar.addfile(info, io.BytesIO(data))


async def ensure_host_image(docker: aiodocker.Docker, tag: str = HOST_IMAGE) -> str:
    """`tag`, built unless an image from the same inputs exists."""
    context = context_tar()
    digest = hashlib.sha256(context).hexdigest()[:16]
    try:
        existing = await docker.images.inspect(tag)
    except aiodocker.DockerError:
        existing = None
    if existing and (existing["Config"].get("Labels") or {}).get(INPUTS_LABEL) == digest:
        return tag
    output = await docker.images.build(
        fileobj=io.BytesIO(context), encoding="identity", tag=tag,
        labels={INPUTS_LABEL: digest}, rm=True,
    )  # fmt: skip
    errors = [line["error"] for line in output if isinstance(line, dict) and "error" in line]
    if errors:
        raise HostImageError(f"building {tag} failed: {errors[-1].strip()}")
    return tag

"""Real git behind the simulator: one bare repository per simulated repository, served
over smart HTTP by git's own `git http-backend`.

`GitStore` keeps the bare repositories (in a temporary directory, removed when the
simulator goes away) and writes to them with git plumbing — `fast-import` for
commits, so seeding a branch costs one process. `GitHttp` is the aiohttp side:
it authenticates like Forgejo (a token as `Authorization: token …`, or as either
half of basic auth; anonymous reads of public repositories only), checks read or
write access, runs the CGI with the request streamed in and its answer streamed
out, and after a push tells the simulator which branches moved, so pull requests
follow (`ForgejoSim.set_branch`) and `refs/pull/<n>/head` stays current.

Without a git binary the simulator runs as before, with made-up commit ids.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import os
import shutil
import subprocess
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Literal, overload

import structlog
from aiohttp import web

from claude_hooks.demo.sim.state import SimError, SimRepo, SimState, has_access

if TYPE_CHECKING:
    from claude_hooks.demo.sim.forgejo import ForgejoSim

log = structlog.get_logger(__name__)

GIT_ROUTE = "/{owner}/{repo}.git/{tail:.*}"
RECEIVE_PACK = "git-receive-pack"
UPLOAD_PACK = "git-upload-pack"
SIM_IDENTITY = ("Forgejo Simulator", "sim@forgejo.invalid")
MAX_CGI_HEADER_LINES = 50
CHUNK = 1 << 16
BACKEND_TIMEOUT = 120.0  # seconds one http-backend run may take


class GitError(Exception):
    """A git command of the simulator failed; the message names the command."""


def git_available() -> bool:
    """Whether git and its http-backend are installed here."""
    git = shutil.which("git")
    if git is None:
        return False
    done = subprocess.run([git, "--exec-path"], capture_output=True, text=True, check=False)
    return done.returncode == 0 and Path(done.stdout.strip(), "git-http-backend").exists()


def _clean_env() -> dict[str, str]:
    """Git run by the simulator ignores the host's and the user's git configuration."""
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": os.devnull,
        "HOME": os.devnull,
        "LC_ALL": "C",
    }


# --- the bare repositories --------------------------------------------------------------


@dataclass(frozen=True)
class FileCommit:
    """One commit that writes one file, for fast-import."""

    ref: str  # refs/heads/<branch>
    parent: str  # sha the commit follows; "" for a root commit
    path: str
    content: bytes
    message: str
    author: tuple[str, str]  # name, email
    when: datetime


def fast_import_stream(commit: FileCommit) -> bytes:
    """The fast-import commands for `commit`, ending with `get-mark` to learn its sha."""
    name, email = commit.author
    stamp = f"{name} <{email}> {int(commit.when.timestamp())} +0000"
    message = commit.message.encode()
    lines = [
        f"commit {commit.ref}".encode(),
        b"mark :1",
        f"author {stamp}".encode(),
        f"committer {stamp}".encode(),
        b"data %d" % len(message),
        message,
    ]
    if commit.parent:
        lines.append(f"from {commit.parent}".encode())
    lines += [
        f"M 100644 inline {commit.path}".encode(),
        b"data %d" % len(commit.content),
        commit.content,
        b"",
        b"get-mark :1",
        b"",
    ]
    return b"\n".join(lines)


class GitStore:
    """The bare repositories, `<root>/<owner>/<name>.git` by lower-cased full name."""

    def __init__(self, enabled: bool | None = None) -> None:
        self.enabled = git_available() if enabled is None else enabled
        self._tmp: tempfile.TemporaryDirectory[str] | None = None

    @property
    def root(self) -> Path:
        if self._tmp is None:
            # Cleaned up with the simulator (or at exit): a finalizer, not stop(), so a
            # simulator restarted in a test keeps its repositories.
            self._tmp = tempfile.TemporaryDirectory(prefix="forgejo-sim-git-")
        return Path(self._tmp.name)

    def path(self, repo: str) -> Path:
        return self.root / f"{repo.lower()}.git"

    def has(self, repo: str) -> bool:
        return self.enabled and self._tmp is not None and self.path(repo).is_dir()

    def git(self, repo: str, *args: str, stdin: bytes | None = None, check: bool = True) -> str:
        done = subprocess.run(
            ["git", "--git-dir", str(self.path(repo)), *args],
            input=stdin, capture_output=True, env=_clean_env(), check=False,
        )  # fmt: skip
        if check and done.returncode != 0:
            error = done.stderr.decode(errors="replace").strip()
            raise GitError(f"git {' '.join(args[:2])} in {repo} failed: {error}")
        return done.stdout.decode(errors="replace")

    def create(self, repo: SimRepo, when: datetime) -> str:
        """A bare repository whose default branch holds one commit with a README; its sha."""
        target = self.path(repo.full_name)
        target.parent.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(
            ["git", "init", "--quiet", "--bare", "-b", repo.default_branch, str(target)],
            capture_output=True, env=_clean_env(), check=False,
        )  # fmt: skip
        if done.returncode != 0:
            raise GitError(f"git init {target} failed: {done.stderr.decode().strip()}")
        readme = f"# {repo.name}\n"
        ref = f"refs/heads/{repo.default_branch}"
        return self.commit(
            repo.full_name,
            FileCommit(ref, "", "README.md", readme.encode(), "Initial commit", SIM_IDENTITY, when),
        )

    def commit(self, repo: str, commit: FileCommit) -> str:
        """Write `commit` and move its ref there; the new sha."""
        output = self.git(repo, "fast-import", "--quiet", stdin=fast_import_stream(commit))
        return output.strip().splitlines()[-1]

    def branches(self, repo: str) -> dict[str, str]:
        """Branch name → head sha, as the bare repository has them."""
        output = self.git(repo, "for-each-ref", "--format=%(objectname) %(refname)", "refs/heads")
        heads = (line.split(" ", 1) for line in output.splitlines() if line)
        return {ref.removeprefix("refs/heads/"): sha for sha, ref in heads}

    def has_commit(self, repo: str, sha: str) -> bool:
        if not self.has(repo) or not sha:
            return False
        return bool(
            self.git(repo, "rev-parse", "--verify", "--quiet", f"{sha}^{{commit}}", check=False)
        )

    def set_ref(self, repo: str, ref: str, sha: str) -> bool:
        """Point `ref` at `sha` if the repository has that commit; whether it did."""
        if not self.has_commit(repo, sha):
            return False
        self.git(repo, "update-ref", ref, sha)
        return True

    def merge_base(self, repo: str, base: str, head: str) -> str | None:
        if not (self.has_commit(repo, base) and self.has_commit(repo, head)):
            return None
        return self.git(repo, "merge-base", base, head, check=False).strip() or None

    def conflicts(self, repo: str, base: str, head: str) -> bool:
        """Whether merging head into base conflicts (Forgejo's pull checker, here with
        `git merge-tree`); False when git lacks either commit."""
        if not (self.has_commit(repo, base) and self.has_commit(repo, head)):
            return False
        done = subprocess.run(
            ["git", "--git-dir", str(self.path(repo)), "merge-tree", "--write-tree", base, head],
            capture_output=True, env=_clean_env(), check=False,
        )  # fmt: skip
        return done.returncode == 1  # 0 clean; 1 conflicts; other: an error, not a verdict

    def is_ancestor(self, repo: str, ancestor: str, descendant: str) -> bool:
        if not (self.has_commit(repo, ancestor) and self.has_commit(repo, descendant)):
            return False
        done = subprocess.run(
            ["git", "--git-dir", str(self.path(repo)), "merge-base", "--is-ancestor",
             ancestor, descendant],
            capture_output=True, env=_clean_env(), check=False,
        )  # fmt: skip
        return done.returncode == 0

    def merge(self, repo: str, spec: MergeSpec) -> str:
        """Merge as `spec` says and move the base branch; its new head."""
        return GitMerger(self.path(repo)).merge(spec)

    def delete_branch(self, repo: str, branch: str) -> None:
        self.git(repo, "update-ref", "-d", f"refs/heads/{branch}", check=False)

    def diff(self, repo: str, base: str, head: str) -> str | None:
        """`git diff merge-base..head`, what Forgejo's .diff shows; None without the commits."""
        merge_base = self.merge_base(repo, base, head)
        if merge_base is None:
            return None
        return self.git(repo, "diff", "--no-color", "--no-ext-diff", "-M", merge_base, head)


MERGE_STYLES_GIT = ("merge", "rebase", "rebase-merge", "squash", "fast-forward-only")


class MergeConflict(GitError):
    """The merge (or one rebased commit) conflicts; `style` is what was tried."""

    def __init__(self, style: str, detail: str) -> None:
        super().__init__(f"{style}: {detail}")
        self.style = style


class NotFastForward(GitError):
    """fast-forward-only asked for a head that does not contain the base."""


@dataclass(frozen=True)
class MergeSpec:
    """One pull-request merge as Forgejo's services/pull/merge*.go does it."""

    base_ref: str  # branch name
    base_sha: str
    head_sha: str
    style: str  # one of MERGE_STYLES_GIT
    message: str  # the commit message (unused by "rebase" and "fast-forward-only")
    committer: tuple[str, str]  # name, email: the merger
    author: tuple[str, str]  # of the squash commit: the pull request's author
    when: datetime


class GitMerger:
    """Merges in a throwaway clone with porcelain git, then pushes the result to the
    base branch, the way Forgejo merges (a temporary repository, then a push)."""

    def __init__(self, bare: Path) -> None:
        self.bare = bare
        self.work = Path()  # the clone, while merge() runs
        self.env: dict[str, str] = {}

    def merge(self, spec: MergeSpec) -> str:
        """The base branch's new head; raises MergeConflict / NotFastForward."""
        with tempfile.TemporaryDirectory(prefix="forgejo-sim-merge-") as tmp:
            self.work = Path(tmp)
            self.env = _clean_env() | _identity_env(spec)
            self._git("clone", "--quiet", "--shared", "--no-checkout", str(self.bare), tmp)
            self._git("checkout", "--quiet", "-B", "base", spec.base_sha)
            {
                "merge": self._merge,
                "rebase": self._rebase,
                "rebase-merge": self._rebase,
                "squash": self._squash,
                "fast-forward-only": self._fast_forward,
            }[spec.style](spec)
            new_head = self._git("rev-parse", "HEAD").strip()
            # A compare-and-swap push: refused if the base moved meanwhile.
            lease = f"--force-with-lease=refs/heads/{spec.base_ref}:{spec.base_sha}"
            self._git("push", "--quiet", lease, "origin", f"HEAD:refs/heads/{spec.base_ref}")
        return new_head

    def _merge(self, spec: MergeSpec) -> None:
        merged = self._git("merge", "--no-ff", "-m", spec.message, spec.head_sha, check=False)
        if merged.returncode != 0:
            self._git("merge", "--abort", check=False)
            raise MergeConflict(spec.style, _output(merged))

    def _rebase(self, spec: MergeSpec) -> None:
        self._git("checkout", "--quiet", "-B", "tracking", spec.head_sha)
        rebased = self._git("rebase", "--quiet", "base", check=False)
        if rebased.returncode != 0:
            self._git("rebase", "--abort", check=False)
            raise MergeConflict(spec.style, _output(rebased))
        self._git("checkout", "--quiet", "base")
        if spec.style == "rebase":
            self._git("merge", "--quiet", "--ff-only", "tracking")
        else:
            self._git("merge", "--quiet", "--no-ff", "-m", spec.message, "tracking")

    def _squash(self, spec: MergeSpec) -> None:
        squashed = self._git("merge", "--quiet", "--squash", spec.head_sha, check=False)
        if squashed.returncode != 0:
            raise MergeConflict(spec.style, _output(squashed))
        name, email = spec.author
        self._git("commit", "--quiet", f"--author={name} <{email}>", "-m", spec.message)

    def _fast_forward(self, spec: MergeSpec) -> None:
        done = self._git("merge", "--quiet", "--ff-only", spec.head_sha, check=False)
        if done.returncode != 0:
            raise NotFastForward(f"{spec.head_sha[:12]} does not contain {spec.base_sha[:12]}")

    @overload
    def _git(self, *args: str, check: Literal[True] = ...) -> str: ...
    @overload
    def _git(self, *args: str, check: Literal[False]) -> subprocess.CompletedProcess[str]: ...

    def _git(self, *args: str, check: bool = True) -> str | subprocess.CompletedProcess[str]:
        cwd = self.work if args[0] != "clone" else None
        done = subprocess.run(
            ["git", *args], cwd=cwd, capture_output=True, text=True, env=self.env, check=False
        )
        if not check:
            return done
        if done.returncode != 0:
            raise GitError(f"git {' '.join(args[:2])} for a merge failed: {_output(done)}")
        return done.stdout


def _identity_env(spec: MergeSpec) -> dict[str, str]:
    name, email = spec.committer
    stamp = f"{int(spec.when.timestamp())} +0000"
    return {
        "GIT_AUTHOR_NAME": name, "GIT_AUTHOR_EMAIL": email, "GIT_AUTHOR_DATE": stamp,
        "GIT_COMMITTER_NAME": name, "GIT_COMMITTER_EMAIL": email, "GIT_COMMITTER_DATE": stamp,
    }  # fmt: skip


def _output(done: subprocess.CompletedProcess[str]) -> str:
    return (done.stdout + done.stderr).strip()


# --- smart HTTP -------------------------------------------------------------------------


def token_of(authorization: str) -> str | None:
    """The API token in an Authorization header, as Forgejo's git endpoints accept it.

    `token T` / `Bearer T`, or basic auth with the token as password or as user name.
    None when there is no header; "" when there is one that carries no token.
    """
    if not authorization.strip():
        return None
    scheme, _, value = authorization.strip().partition(" ")
    if scheme.lower() in ("token", "bearer"):
        return value.strip()
    if scheme.lower() != "basic":
        return ""
    try:
        user, _, password = base64.b64decode(value.strip(), validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return ""
    return password if password and password != "x-oauth-basic" else user


def service_of(tail: str, query: Mapping[str, str]) -> str:
    """Which git service a smart-HTTP request is for (upload-pack for anything else)."""
    if tail == "info/refs":
        return query.get("service", UPLOAD_PACK)
    return RECEIVE_PACK if tail == RECEIVE_PACK else UPLOAD_PACK


def parse_cgi_head(lines: list[bytes]) -> tuple[int, dict[str, str]]:
    """Status and headers of a CGI answer (its header lines, without the blank one)."""
    status, headers = 200, {}
    for raw in lines:
        name, _, value = raw.decode("latin-1").rstrip("\r\n").partition(":")
        if name.lower() == "status":
            status = int(value.strip().split(" ", 1)[0])
        elif name:
            headers[name.strip()] = value.strip()
    return status, headers


class GitHttp:
    """`/{owner}/{repo}.git/…` of the simulator, answered by `git http-backend`."""

    def __init__(self, sim: ForgejoSim) -> None:
        self.sim = sim

    @property
    def store(self) -> GitStore:
        return self.sim.git

    @property
    def state(self) -> SimState:
        return self.sim.state

    def routes(self) -> list[web.RouteDef]:
        return [web.get(GIT_ROUTE, self.handle), web.post(GIT_ROUTE, self.handle)]

    async def handle(self, request: web.Request) -> web.StreamResponse:
        info = request.match_info
        service = service_of(info["tail"], request.query)
        try:
            repo, login = self._authorize(request, f"{info['owner']}/{info['repo']}", service)
        except SimError as exc:
            return _refusal(exc)
        before = self.store.branches(repo.full_name) if service == RECEIVE_PACK else {}
        response, code = await self._backend(request, repo, login)
        if service == RECEIVE_PACK and request.method == "POST" and code == 0:
            self._pushed(repo, before, login)
        return response

    def _authorize(self, request: web.Request, name: str, service: str) -> tuple[SimRepo, str]:
        """The repository and the caller's login ("" when anonymous), or a refusal."""
        token = token_of(request.headers.get("Authorization", ""))
        login = "" if token is None else self.state.tokens.get(token, None)
        if login is None:
            raise SimError(401, "invalid credentials")
        repo = self.state.repos.get(name.lower())
        if repo is None or not self.store.has(repo.full_name):
            raise SimError(404 if login else 401, f"repository {name} not found")
        writing = service == RECEIVE_PACK
        if not login:
            if writing or repo.private:
                raise SimError(401, "authentication required")
            return repo, login
        if not has_access(self.state, repo, login, "read"):
            raise SimError(404, f"repository {name} not found")
        if writing and not has_access(self.state, repo, login, "write"):
            raise SimError(403, f"{login} may not push to {repo.full_name}")
        return repo, login

    async def _backend(
        self, request: web.Request, repo: SimRepo, login: str
    ) -> tuple[web.StreamResponse, int | None]:
        env = _clean_env() | {
            "GIT_PROJECT_ROOT": str(self.store.root),
            "GIT_HTTP_EXPORT_ALL": "1",
            "PATH_INFO": f"/{repo.key}.git/{request.match_info['tail']}",
            "REQUEST_METHOD": request.method,
            "QUERY_STRING": request.query_string,
            "CONTENT_TYPE": request.headers.get("Content-Type", ""),
            "REMOTE_USER": login,
            "REMOTE_ADDR": request.remote or "",
        }
        # No CONTENT_LENGTH nor HTTP_CONTENT_ENCODING: aiohttp hands over the body already
        # inflated (git gzips large fetch negotiations), and without a length the
        # backend reads its input to the end.
        if "Git-Protocol" in request.headers:
            env["GIT_PROTOCOL"] = request.headers["Git-Protocol"]
        proc = await asyncio.create_subprocess_exec(
            "git", "http-backend", env=env, stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        try:
            async with asyncio.timeout(BACKEND_TIMEOUT):
                return await self._relay(request, proc)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()

    async def _relay(
        self, request: web.Request, proc: asyncio.subprocess.Process
    ) -> tuple[web.StreamResponse, int | None]:
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
        feeding = asyncio.create_task(_feed(request, proc.stdin))
        errors = asyncio.create_task(proc.stderr.read())
        try:
            head = await _read_head(proc.stdout)
            if head is None:
                await proc.wait()
                message = (await errors).decode(errors="replace").strip()
                log.warning("sim_git_backend_failed", code=proc.returncode, error=message)
                return web.Response(status=500, text=f"git http-backend: {message}\n"), 1
            status, headers = parse_cgi_head(head)
            response = web.StreamResponse(status=status, headers=headers)
            await response.prepare(request)
            while chunk := await proc.stdout.read(CHUNK):
                await response.write(chunk)
            await feeding
            code = await proc.wait()
            await response.write_eof()
        finally:
            feeding.cancel()
        stderr = (await errors).decode(errors="replace").strip()
        if code != 0 or status >= 400:
            log.warning("sim_git_request_failed", status=status, code=code, error=stderr)
        return response, code if status < 400 else 1

    def _pushed(self, repo: SimRepo, before: dict[str, str], pusher: str) -> None:
        """Branches a push moved, created or deleted reach the simulator's state."""
        after = self.store.branches(repo.full_name)
        for branch, sha in after.items():
            if before.get(branch) != sha:
                self.sim.set_branch(repo.full_name, branch, sha, pusher=pusher)
                log.info("sim_git_pushed", repo=repo.full_name, branch=branch, sha=sha[:12])
        for branch in before.keys() - after.keys():
            repo.branches.pop(branch, None)
            log.info("sim_git_branch_deleted", repo=repo.full_name, branch=branch)


async def _feed(request: web.Request, stdin: asyncio.StreamWriter) -> None:
    """The request body into the CGI, as it arrives; then end of input."""
    try:
        async for chunk in request.content.iter_chunked(CHUNK):
            stdin.write(chunk)
            await stdin.drain()
    except (BrokenPipeError, ConnectionResetError):
        pass  # the backend stopped reading: its answer says why
    finally:
        stdin.close()


async def _read_head(stdout: asyncio.StreamReader) -> list[bytes] | None:
    """The CGI header lines up to the blank line; None when the output ends before it."""
    lines: list[bytes] = []
    while len(lines) < MAX_CGI_HEADER_LINES:
        line = await stdout.readline()
        if not line:
            return None
        if not line.strip():
            return lines
        lines.append(line)
    raise GitError(f"git http-backend sent more than {MAX_CGI_HEADER_LINES} header lines")


def _refusal(exc: SimError) -> web.Response:
    response = web.Response(status=exc.status, text=exc.message + "\n")
    if exc.status == 401:
        response.headers["WWW-Authenticate"] = 'Basic realm="Forgejo Simulator"'
    return response

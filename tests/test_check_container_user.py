"""`claude-hooks check` warns when an agent's container uid is held by a host account.

Containers run without a user namespace: the container uid is the host uid, so a
person whose account has it reads every task's environment (/proc/<pid>/environ)
and the credentials file chowned to it.
"""

from __future__ import annotations

import dataclasses
import os
import pwd
from pathlib import Path

import pytest

from claude_hooks.cli.check import container_user_warnings, subuid_owner
from claude_hooks.cli.main import main
from claude_hooks.config import DEFAULT_AGENT_UID, AgentConfig
from tests.fakes.configs import ConfigFactory

ACCOUNTS = {0: "root", 1000: "alice"}


def nobody(uid: int) -> str | None:
    return None


def test_the_default_agent_uid_is_no_usual_account() -> None:
    default = next(f.default for f in dataclasses.fields(AgentConfig) if f.name == "user")
    assert default == f"{DEFAULT_AGENT_UID}:{DEFAULT_AGENT_UID}"
    assert DEFAULT_AGENT_UID > 60000  # above login.defs UID_MAX: no person gets it


def test_an_agent_uid_of_a_host_account_is_named_with_its_key(
    config_factory: ConfigFactory,
) -> None:
    config = config_factory.load(
        agents=[
            config_factory.agent("dev"),  # the default uid
            config_factory.agent("reviewer", user="1000:1000"),
            config_factory.agent("lead", user="agent"),  # a name: the image resolves it
        ]
    )
    warnings = container_user_warnings(config, ACCOUNTS.get, nobody)
    assert len(warnings) == 1
    assert warnings[0].startswith(
        f"{config.path}: agents[1].user: uid 1000 is the host account 'alice', which can "
        "then read the environment of agent reviewer's tasks and its credentials file"
    )


def test_an_agent_uid_delegated_to_a_person_for_rootless_containers_is_named(
    config_factory: ConfigFactory, tmp_path: Path
) -> None:
    subuid = tmp_path / "subuid"
    subuid.write_text("alice:100000:65536\nbob:165536:65536\n")
    assert subuid_owner(100000, subuid) == "alice"
    assert subuid_owner(165535, subuid) == "alice" and subuid_owner(165536, subuid) == "bob"
    assert subuid_owner(99999, subuid) is None
    assert subuid_owner(100000, tmp_path / "absent") is None
    config = config_factory.load(agents=[config_factory.agent("dev", user="170000:170000")])
    warnings = container_user_warnings(config, nobody, lambda uid: subuid_owner(uid, subuid))
    assert len(warnings) == 1
    assert (
        "agents[0].user: uid 170000 is among the subordinate uids of host account 'bob'"
        in (warnings[0])
    )


def test_check_offline_warns_about_a_real_account_of_this_host(
    config_factory: ConfigFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    uid = os.getuid()
    if uid == 0:  # root has its own warning (config.agent_warnings): take another account
        uid = next(entry.pw_uid for entry in pwd.getpwall() if entry.pw_uid != 0)
    try:
        account = pwd.getpwuid(uid).pw_name
    except KeyError:
        pytest.skip(f"uid {uid} running the tests has no passwd entry to warn about")
    path = config_factory.write(agents=[config_factory.agent("dev", user=f"{uid}:{uid}")])
    assert main(["check", "--offline", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    assert (
        f"OK   container user: warning: {path}: agents[0].user: uid {uid} is the host "
        f"account {account!r}"
    ) in out

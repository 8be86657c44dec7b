"""tests/captures.py: when a replay of a capture not redistributed here runs, skips or fails."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.captures import CAPTURES_ENV, capture, captures_dir

KIND = "claude/real-streams"


def test_unset_skips_naming_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(CAPTURES_ENV, raising=False)
    monkeypatch.setenv("CI", "true")  # unset is a skip even in CI: nobody asked for them
    with pytest.raises(pytest.skip.Exception, match=CAPTURES_ENV):
        capture(KIND, "a.jsonl")


def test_a_missing_file_skips_on_a_developers_machine(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / KIND).mkdir(parents=True)
    monkeypatch.setenv(CAPTURES_ENV, str(tmp_path))
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match=r"no file .*a\.jsonl"):
        capture(KIND, "a.jsonl")


@pytest.mark.parametrize("present", ["nothing", "the directory"])
def test_a_missing_file_fails_under_ci(
    present: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if present == "the directory":
        (tmp_path / KIND).mkdir(parents=True)
    monkeypatch.setenv(CAPTURES_ENV, str(tmp_path))
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match=f"CI=true: {CAPTURES_ENV}="):
        capture(KIND, "a.jsonl")


def test_a_present_file_is_found(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / KIND).mkdir(parents=True)
    (tmp_path / KIND / "a.jsonl").write_text("{}\n")
    monkeypatch.setenv(CAPTURES_ENV, str(tmp_path))
    monkeypatch.setenv("CI", "true")
    assert capture(KIND, "a.jsonl") == tmp_path / KIND / "a.jsonl"
    assert captures_dir(KIND) == tmp_path / KIND

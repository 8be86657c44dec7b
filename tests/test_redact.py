"""The redactor: every secret, in every shape it leaks in, and nothing else."""

from __future__ import annotations

import base64
import json
import random
import urllib.parse
from pathlib import Path

import pytest

from claude_hooks.config import read_secret
from claude_hooks.redact import MIN_SECRET_LENGTH, REDACTED, Redactor
from tests.fakes.leaks import leaks, shapes

TOKEN = "0123456789abcdef0123456789abcdef01234567"  # a Forgejo token looks like this
ODD = "tok/en+with=specials &?é"  # every encoder changes this one


@pytest.fixture
def redact() -> Redactor:
    redactor = Redactor()
    redactor.add(TOKEN, ODD)
    return redactor


@pytest.mark.parametrize("secret", [TOKEN, ODD])
@pytest.mark.parametrize("alphabet", [base64.b64encode, base64.urlsafe_b64encode])
def test_base64_of_a_secret_inside_any_text_is_hidden(
    redact: Redactor, secret: str, alphabet: object
) -> None:
    rng = random.Random(12)
    for before in range(7):  # every alignment, twice
        for after in range(3):
            stream = rng.randbytes(before) + secret.encode() + rng.randbytes(after)
            text = alphabet(stream).decode()  # type: ignore[operator]
            redacted = redact(f"the output: {text} (end)")
            assert REDACTED in redacted
            assert leaks({"secret": secret}, "text", redacted) == []
            assert redacted.startswith("the output: ") and redacted.endswith(" (end)")


def test_wrapped_and_json_escaped_base64_is_hidden(redact: Redactor) -> None:
    line = f"GIT_CONFIG_VALUE_0=Authorization: token {TOKEN}\n".encode()
    wrapped = base64.encodebytes(line).decode()  # 76 columns, as `base64` prints it
    assert "\n" in wrapped.strip()
    for text in (wrapped, wrapped.replace("\n", "\r\n"), json.dumps({"output": wrapped})):
        assert leaks({"token": TOKEN}, "text", redact(text)) == []


@pytest.mark.parametrize(
    "encode",
    [
        lambda s: s.encode().hex(),
        lambda s: s.encode().hex().upper(),
        lambda s: urllib.parse.quote(s, safe=""),
        lambda s: urllib.parse.quote(s),
        lambda s: urllib.parse.quote_plus(s),
        lambda s: urllib.parse.quote(s, safe="").lower(),
        lambda s: json.dumps(s)[1:-1],
    ],
    ids=["hex", "HEX", "quote", "quote-slash", "quote_plus", "quote-lowercase", "json"],
)
def test_hex_percent_and_json_encodings_are_hidden(redact: Redactor, encode: object) -> None:
    for secret in (TOKEN, ODD):
        text = f"before {encode(secret)} after"  # type: ignore[operator]
        assert redact(text) == f"before {REDACTED} after"


def test_text_without_a_secret_is_left_alone(redact: Redactor) -> None:
    rng = random.Random(7)
    texts = [
        "ordinary words, paths /state/work/acme/app/7 and a sha 4b825dc642cb6eb9a060e54bf8d69288",
        base64.b64encode(rng.randbytes(300)).decode(),
        rng.randbytes(200).hex(),
        json.dumps({"type": "assistant", "text": "0123456789abcdef0123 is half a token"}),
    ]
    for text in texts:
        assert redact(text) == text


def test_a_secret_containing_another_is_hidden_whole() -> None:
    redact = Redactor()
    redact.add("abcdef123456", "xxabcdef123456yy")
    assert redact("k=xxabcdef123456yy.") == f"k={REDACTED}."


def test_short_values_are_not_secrets() -> None:
    redact = Redactor()
    redact.add("a" * (MIN_SECRET_LENGTH - 1), "   ", "")
    assert redact.secrets == frozenset()
    assert redact("aaaaa YWFhYWE= 6161616161") == "aaaaa YWFhYWE= 6161616161"


def test_the_tokens_inside_a_credentials_file_are_secrets(tmp_path: Path) -> None:
    access, refresh = "sk-ant-oat01-abc_DEF-123", "sk-ant-ort01-xyz_UVW-789"
    creds = {"claudeAiOauth": {"accessToken": access, "refreshToken": refresh, "expiresAt": 9}}
    (tmp_path / "creds.json").write_text(json.dumps(creds, indent=2))
    redact = Redactor()
    assert redact.add_files([tmp_path / "creds.json", tmp_path / "missing"]) == [
        tmp_path / "missing"
    ]
    text = " ".join(shapes(access).values()) + " " + " ".join(shapes(refresh).values())
    assert leaks({"access": access, "refresh": refresh}, "text", redact(text)) == []


def test_read_secret_teaches_the_shared_redactor_each_value_it_reads(tmp_path: Path) -> None:
    """Fails before this change: a rotated token file was read and used, never redacted."""
    from claude_hooks.daemon.log import redactor

    file = tmp_path / "token"
    file.write_text("first-token-of-dev-6d1f0a\n")
    redactor.add_files([file])  # what the daemon learns at start
    file.write_text("rotated-token-of-dev-93be27\n")  # the operator rotates it
    assert read_secret(file) == "rotated-token-of-dev-93be27"  # the next Forgejo request
    rotated_b64 = base64.b64encode(b"rotated-token-of-dev-93be27").decode()
    text = f"old first-token-of-dev-6d1f0a new rotated-token-of-dev-93be27 {rotated_b64}"
    redacted = redactor(text)
    assert redacted.startswith(f"old {REDACTED} new {REDACTED} ")
    secrets = {"old": "first-token-of-dev-6d1f0a", "new": "rotated-token-of-dev-93be27"}
    assert leaks(secrets, "text", redacted) == []

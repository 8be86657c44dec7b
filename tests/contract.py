"""Checks requests made to the Forgejo simulator, and its answers, against Forgejo's OpenAPI.

The spec (Forgejo's OpenAPI document, swagger.v1.json of Forgejo 17.0.0-dev converted to
OpenAPI 3.0) is not redistributed here: it is read from
`$CLAUDE_HOOKS_CAPTURES/forgejo/openapi.v3.json` (tests/captures.py; where it lives
upstream is tests/data/SPEC-SOURCE.md). Without it the check cannot run: `load_contract`
says why, and its callers decide (the simulator fixture warns, or fails under CI=true;
the checker's own tests skip, or fail under CI=true).

For each recorded request: the path must match a path template of
the spec and the method one of its operations; every query
parameter must be one the operation declares (openapi-core ignores unknown
ones, so that check is ours); openapi-core then checks parameter types and the
JSON body. The simulator's answer must be a status the operation declares, with
a body valid against that response's schema.

Two tolerances, both because the spec is less exact than Forgejo itself:
- Forgejo serialises nil Go pointers and slices as `null` (milestone, closed_at,
  assignees…) although the spec never says `nullable`. A null is accepted where
  the property is an object, an array, a date-time, or one of NIL_STRINGS.
- Forgejo answers 401/403/404/422 on operations whose spec omits them; an
  undeclared 4xx must still carry Forgejo's error body (`message`, a string).
Answers produced by fault injection (fail_next, drop_next) are not checked.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from openapi_core import OpenAPI
from openapi_core.testing import MockRequest, MockResponse

from claude_hooks.demo.sim.gateway import API_PREFIX, RecordedRequest
from tests.captures import locate, required

SPEC_KIND, SPEC_NAME = "forgejo", "openapi.v3.json"  # $CLAUDE_HOOKS_CAPTURES/forgejo/…
HOST = "http://forgejo.invalid"
NIL_STRINGS = frozenset({"merge_commit_sha"})  # *string in modules/structs/pull.go
_PARAM = re.compile(r"\{([^}]+)\}")


@dataclass(frozen=True)
class PathTemplate:
    template: str  # as in the spec, relative to /api/v1
    pattern: re.Pattern[str]
    names: tuple[str, ...]
    literal_length: int  # more literal text: a more specific template

    @classmethod
    def compile(cls, template: str) -> PathTemplate:
        parts = _PARAM.split(template)  # literal, name, literal, name, …
        regex = "".join(
            re.escape(part) if i % 2 == 0 else "([^/]+)" for i, part in enumerate(parts)
        )
        literal = sum(len(part) for part in parts[::2])
        return cls(template, re.compile(f"^{regex}$"), tuple(parts[1::2]), literal)

    def match(self, path: str) -> dict[str, str] | None:
        found = self.pattern.match(path)
        return None if found is None else dict(zip(self.names, found.groups(), strict=True))


class ForgejoContract:
    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.openapi = OpenAPI.from_dict(spec)
        self.templates = [PathTemplate.compile(t) for t in spec["paths"]]

    # -- matching ----------------------------------------------------------------------------

    def match(self, path: str) -> tuple[PathTemplate, dict[str, str]] | None:
        """The most specific spec path for an /api/v1 path, with its parameters."""
        relative = path.removeprefix(API_PREFIX)
        found = [(t, params) for t in self.templates if (params := t.match(relative)) is not None]
        if not found:
            return None
        return max(found, key=lambda pair: pair[0].literal_length)

    def operation(self, template: str, method: str) -> dict[str, Any] | None:
        return self.spec["paths"][template].get(method.lower())

    def query_names(self, template: str, method: str) -> set[str]:
        path_item = self.spec["paths"][template]
        declared = [
            *path_item.get("parameters", []),
            *path_item[method.lower()].get("parameters", []),
        ]
        return {self._resolve(p)["name"] for p in declared if self._resolve(p)["in"] == "query"}

    # -- checking -----------------------------------------------------------------------------

    def check_all(self, exchanges: Iterable[RecordedRequest]) -> list[str]:
        return [problem for exchange in exchanges for problem in self.check(exchange)]

    def check(self, exchange: RecordedRequest) -> list[str]:
        """Everything wrong with one exchange, each as a sentence naming the request."""
        if not exchange.path.startswith(API_PREFIX + "/"):
            return []  # not the REST API (e.g. git over HTTP)
        where = f"{exchange.method} {exchange.path}"
        matched = self.match(exchange.path)
        if matched is None:
            return [f"{where}: no path of the Forgejo API matches"]
        template, params = matched
        if self.operation(template.template, exchange.method) is None:
            return [f"{where}: the Forgejo API has no {exchange.method} on {template.template}"]
        request = self._mock_request(exchange, template.template, params)
        problems = self._check_query(exchange, template.template)
        result = self.openapi.unmarshal_request(request)
        problems += [f"request: {describe(error)}" for error in result.errors]
        if not exchange.injected and exchange.status is not None:
            problems += self._check_response(exchange, template.template, request)
        return [f"{where} ({template.template}): {problem}" for problem in problems]

    def _check_query(self, exchange: RecordedRequest, template: str) -> list[str]:
        allowed = self.query_names(template, exchange.method)
        unknown = sorted(set(exchange.query) - allowed)
        return [
            f"request: unknown query parameter {name!r} (declared: {sorted(allowed) or 'none'})"
            for name in unknown
        ]

    def _check_response(
        self, exchange: RecordedRequest, template: str, request: MockRequest
    ) -> list[str]:
        status = exchange.status
        assert status is not None
        declared = self.operation(template, exchange.method)["responses"]  # type: ignore[index]
        if str(status) not in declared:
            if 400 <= status < 500:
                return _check_error_body(exchange)
            return [f"response: status {status} is not declared (declared: {sorted(declared)})"]
        schema = self._response_schema(template, exchange.method, status)
        if not exchange.response_body:
            if schema is None:
                return []
            return [f"response {status}: empty body where the spec declares a schema"]
        content_type = exchange.response_content_type
        if content_type != "application/json":
            return self._check_text_response(exchange, schema)
        data = drop_go_nils(json.loads(exchange.response_body), schema, self._resolve)
        response = MockResponse(json.dumps(data).encode(), status_code=status)
        result = self.openapi.unmarshal_response(request, response)
        return [f"response {status}: {describe(error)}" for error in result.errors]

    def _check_text_response(
        self, exchange: RecordedRequest, schema: Mapping[str, Any] | None
    ) -> list[str]:
        """A raw text answer (a diff) is fine where the spec declares a string schema."""
        if schema is not None and schema.get("type") == "string":
            return []
        return [
            f"response {exchange.status}: {exchange.response_content_type} body where the "
            "spec declares no string schema"
        ]

    # -- spec access ----------------------------------------------------------------------------

    def _resolve(self, node: Mapping[str, Any]) -> Mapping[str, Any]:
        while "$ref" in node:
            target: Any = self.spec
            for part in node["$ref"].removeprefix("#/").split("/"):
                target = target[part]
            node = target
        return node

    def _response_schema(self, template: str, method: str, status: int) -> Mapping[str, Any] | None:
        operation = self.operation(template, method) or {}
        response = self._resolve(operation["responses"][str(status)])
        for media in response.get("content", {}).values():
            return self._resolve(media.get("schema", {}))
        return None

    def _mock_request(
        self, exchange: RecordedRequest, template: str, params: dict[str, str]
    ) -> MockRequest:
        headers = {k: v for k, v in exchange.headers.items() if k.lower() != "content-type"}
        if exchange.authenticated:
            headers["Authorization"] = "token redacted"  # the sim never records the real one
        body = b"" if exchange.body is None else json.dumps(exchange.body).encode()
        return MockRequest(
            HOST,
            exchange.method.lower(),
            exchange.path,
            path_pattern=API_PREFIX + template,
            view_args=params,
            args=list(exchange.query.items()),
            headers=headers,
            data=body,
            content_type=exchange.headers.get("Content-Type", "application/json").split(";")[0],
        )


def drop_go_nils(data: Any, schema: Mapping[str, Any] | None, resolve: Any) -> Any:
    """`data` without the nulls Forgejo sends for nil Go pointers and slices."""
    if schema is None:
        return data
    schema = resolve(schema)
    if isinstance(data, dict) and "properties" in schema:
        kept = {}
        for key, value in data.items():
            prop = schema["properties"].get(key)
            if value is None and prop is not None and _may_be_nil(key, prop, resolve):
                continue
            kept[key] = drop_go_nils(value, prop, resolve)
        return kept
    if isinstance(data, list) and schema.get("type") == "array":
        return [drop_go_nils(item, schema.get("items"), resolve) for item in data]
    return data


def _may_be_nil(name: str, prop: Mapping[str, Any], resolve: Any) -> bool:
    if "$ref" in prop or "allOf" in prop or name in NIL_STRINGS:
        return True
    prop = resolve(prop)
    return prop.get("type") in ("object", "array") or prop.get("format") == "date-time"


def _check_error_body(exchange: RecordedRequest) -> list[str]:
    try:
        data = json.loads(exchange.response_body)
    except ValueError:
        data = None
    if isinstance(data, dict) and isinstance(data.get("message"), str):
        return []
    return [
        f"response {exchange.status}: not Forgejo's error body: {exchange.response_body!r:.200}"
    ]


def describe(error: BaseException) -> str:
    """An openapi-core error and its causes on one line; schema errors listed by location."""
    parts: list[str] = []
    current: BaseException | None = error
    while current is not None:
        schema_errors = getattr(current, "schema_errors", None) or ()
        if schema_errors:
            text = "; ".join(_schema_error(e) for e in schema_errors)
        else:
            text = str(current) or type(current).__name__
        if text not in parts:
            parts.append(text)
        current = current.__cause__
    return " <- ".join(parts)


def _schema_error(error: Any) -> str:
    where = "/".join(str(p) for p in getattr(error, "absolute_path", ())) or "(root)"
    return f"{where}: {getattr(error, 'message', error)}"


def load_contract() -> ForgejoContract | str:
    """The contract, or why it cannot be checked (the spec file is not where it is looked for).

    The lookup runs on every call, so a changed CLAUDE_HOOKS_CAPTURES counts (a pytester
    run inside a session that already loaded the spec); the loading is cached per file.
    """
    found = locate(SPEC_KIND, SPEC_NAME)
    if isinstance(found, str):
        return f"Forgejo's OpenAPI document is unavailable: {found}"
    return _contract_from(found)


@functools.cache
def _contract_from(spec_file: Path) -> ForgejoContract:
    """Loaded once per file: building the validators takes a second or two."""
    return ForgejoContract(json.loads(spec_file.read_text(encoding="utf-8")))


def forgejo_contract() -> ForgejoContract:
    """The contract for a test that cannot do without it: skips without the spec, but
    fails under CI=true when CLAUDE_HOOKS_CAPTURES is set (see tests/captures.py)."""
    found = load_contract()
    if isinstance(found, str):
        if required():
            pytest.fail(f"required under CI=true: {found}")
        pytest.skip(found)
    return found

"""Property-based fuzzing of the API from its own OpenAPI schema (schemathesis).

Schemathesis's pytest loader does not run on this pytest, so each endpoint's
strategy is drawn by Hypothesis directly; the checks are schemathesis's own.
"""

from __future__ import annotations

import os
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode

from replay.http import OPERATIONS
from tests.http.conftest import PREFIX, Server

# the event stream never ends unless asked to: test_stream.py covers it
FUZZED = [
    pytest.param(op.path, mode, id=f"{op.path}-{mode.value}")
    for op in OPERATIONS.values()
    if op.name != "stream"
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
    if mode is GenerationMode.POSITIVE or any(p.where == "query" for p in op.params)
] + [pytest.param("/openapi.json", GenerationMode.POSITIVE, id="/openapi.json-positive")]


CUTS = ("at_position", "known_at", "as_of")


@pytest.fixture(scope="module")
def api_schema(server: Server) -> Any:
    schema = schemathesis.openapi.from_url(server.base + PREFIX + "/openapi.json")

    # A parameter list cannot say "at most one of the three cuts"; valid requests
    # give one at most (the API refuses more with a 400, which test_api.py pins).
    @schema.hook
    def filter_query(ctx: Any, query: dict[str, Any] | None) -> bool:
        return query is None or sum(name in query for name in CUTS) <= 1

    return schema


@pytest.mark.parametrize(("path", "mode"), FUZZED)
def test_generated_requests_get_documented_answers_and_never_a_server_error(
    api_schema: Any, path: str, mode: GenerationMode
) -> None:
    """Requests drawn from the schema (valid ones, and invalid ones) never get a 5xx; every
    answer's status, content type, headers and body are what the schema documents, valid
    requests are accepted and invalid ones refused with a 4xx."""
    operation = api_schema[PREFIX + path]["GET"]

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=25,
        # new examples every local run; CI replays a fixed set so a landing never hangs on luck
        derandomize=bool(os.environ.get("CI")),
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def check(case: Any) -> None:
        case.call_and_validate()

    check()

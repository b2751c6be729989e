"""Schemathesis against the live server's own /openapi.json: a bounded number
of generated requests per operation; no 5xx, and every error in OpenAI's
envelope. (Driven through hypothesis directly: schemathesis' pytest fixture
loader does not support this pytest version.)"""

from __future__ import annotations

from collections import Counter

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

pytestmark = pytest.mark.e2e

EXAMPLES_PER_OPERATION = 50


def test_fuzz_no_server_errors_and_openai_envelopes(server) -> None:
    import httpx

    spec = httpx.get(server.url("/openapi.json"), headers=server.headers()).json()
    schema = schemathesis.openapi.from_dict(spec)
    operations = [result.ok() for result in schema.get_all_operations()]
    generation = {"POST /v1/chat/completions", "POST /v1/completions", "POST /v1/responses", "POST /v1/messages"}
    assert {op.label for op in operations} >= {*generation, "POST /tokenize"}
    statuses: Counter[tuple[str, int]] = Counter()

    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))  # fmt: skip
        def check(case) -> None:
            case.headers = {**(case.headers or {}), **server.headers()}
            if isinstance(case.body, dict):
                # Bound the work a valid request may ask for (the default fills the context).
                field = "max_output_tokens" if case.path == "/v1/responses" else "max_tokens"
                mt = case.body.get(field)
                if not isinstance(mt, int) or mt > 8:
                    case.body[field] = 8
                case.body.pop("max_completion_tokens", None)
            response = case.call(base_url=server.base_url, timeout=60)
            statuses[(case.operation.label, response.status_code)] += 1
            assert response.status_code < 500, (case.method, case.path, case.body, response.text[:500])
            if response.status_code >= 400 and case.path.startswith("/v1/messages"):  # Anthropic's envelope
                body = response.json()
                assert body["type"] == "error" and set(body["error"]) == {"type", "message"}, response.text[:500]
            elif response.status_code >= 400:
                err = response.json()["error"]
                assert set(err) == {"message", "type", "param", "code"}, response.text[:500]

        check()
    print(f"\n[fuzz] {sum(statuses.values())} requests: {dict(sorted(statuses.items()))}")
    assert sum(statuses.values()) >= EXAMPLES_PER_OPERATION * 3

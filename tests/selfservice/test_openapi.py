"""Schemathesis against the live gateway: every operation of the OpenAPI document the gateway
serves, called with generated requests and a valid API key; no answer is a server error and
every answer matches the document. The `model` enum lets the generated embedding requests reach
the embedding logic (here the fake embed service) instead of stopping at 404.

One check is left out: `positive_data_acceptance` reads any 4xx to a schema-valid request as
a fault, but some limits are not the schema's to state: a project id must be one of the
caller's org, an input must fit the model's token limit, `dimensions` the model's width. Those
400s are documented; every other check runs (it found that empty texts, refused with 400, were
allowed by the document: they no longer are)."""

from __future__ import annotations

import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import Case
from schemathesis.core.result import Ok
from schemathesis.specs.openapi.checks import positive_data_acceptance

from tests.selfservice.harness import Stack

EMBEDDING_PATHS = {"/v2/embeddings", "/v1/embeddings", "/v2/predict"}


def test_every_operation_answers_as_documented(stack: Stack) -> None:
    fuzzer = stack.account("fuzzer", customer="cus_fuzzer")
    headers = {"Authorization": f"Bearer {fuzzer.key}"}
    api = schemathesis.openapi.from_url(stack.url + "/openapi.json")
    answered: dict[str, set[int]] = {}
    for result in api.get_all_operations():
        assert isinstance(result, Ok), f"the document has an invalid operation: {result.err()}"
        operation = result.ok()

        # The pytest plugin's lazy schemas fail on pytest 9: drive Hypothesis directly.
        @given(case=operation.as_strategy())
        @settings(max_examples=25, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))  # fmt: skip
        def call(case: Case) -> None:
            response = case.call_and_validate(
                headers=headers, excluded_checks=[positive_data_acceptance]
            )
            answered.setdefault(case.path, set()).add(response.status_code)

        call()
    # Every operation was reached; generated embedding requests got vectors from the embed
    # service, under the fuzzing org.
    assert set(answered) == {path for path in api.raw_schema["paths"]}, answered
    assert all(200 in answered[path] for path in EMBEDDING_PATHS), answered
    assert any(r.org_id == fuzzer.org_id for r in stack.embed.requests)

"""schemathesis against the generated OpenAPI schema: no 5xx, responses match the schema.

Runs with an admin token (so requests get past auth and reach the handlers) on each
backend; PostgreSQL is where NUL bytes and out-of-range numbers would surface as 500s.
Examples are bounded per operation so the whole file stays well under a minute.
"""

from __future__ import annotations

import re

import schemathesis
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from gateway.custody.stores import SqlStores
from gateway.settings import Settings
from tests.api_helpers import Api, build_api
from tests.store_helpers import hold_message

pytest_plugins = ("tests.store_helpers", "tests.api_helpers")

EXAMPLES_PER_OPERATION = 25


def test_api_conforms_to_its_schema(stores: SqlStores, settings: Settings) -> None:
    """Any request the schema allows gets a documented, well-formed, non-5xx answer."""
    api = build_api(stores, settings.model_copy(update={"api_docs": True}))
    hold_message(api.stores, settings, "Q1")
    schema = schemathesis.openapi.from_asgi("/openapi.json", api.app)
    headers = api.as_("admin")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 10

    for operation in operations:
        @hsettings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy())
        def check(case: schemathesis.Case) -> None:
            case.call_and_validate(headers=headers)

        check()


def test_the_schema_says_a_decision_reason_must_not_be_blank(api: Api) -> None:
    """What the server refuses (a reason of white space only) the schema refuses too, so
    a client or generator that trusts the schema is not answered 422 for valid data."""
    schema = api.app.openapi()
    pattern = schema["components"]["schemas"]["DenyIn"]["properties"]["reason"]["pattern"]
    for blank in (" ", "\u3000\t\n", "\x1f"):
        assert re.fullmatch(pattern, blank) is None
        answer = api.client.post("/api/quarantine/Q1/release/deny", json={"reason": blank},
                                 headers=api.as_("admin"))
        assert answer.status_code == 422
    assert re.fullmatch(pattern, " 添付の差出人が確認できません ") is not None


def test_junk_bodies_are_rejected_cleanly(api: Api) -> None:
    """Bodies outside the schema (wrong JSON types, NUL, lone surrogates): 4xx, never 5xx."""
    headers = {**api.as_("admin"), "Content-Type": "application/json"}

    @hsettings(max_examples=60, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(body=st.one_of(st.binary(max_size=64), st.sampled_from([
        b'{"reason": "\\u0000"}', b'{"password": "\\ud800"}', b'{"part": "1.2.3"}',
        b'{"reason": 5}', b"[]", b"null", b'{"password": ""}'])))
    def check(body: bytes) -> None:
        response = api.client.post("/api/quarantine/Q1/release", content=body, headers=headers)
        assert response.status_code < 500, (body, response.text)

    check()

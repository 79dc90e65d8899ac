"""Property-based API tests from the server's own /openapi.json (fetched with the token).

For every operation schemathesis generates valid and invalid requests (bounded number of
examples) and checks that the server never answers 5xx and never answers a status code the
schema does not document (401, 413, 422, 409, 503 are all in the schema).
"""

from __future__ import annotations

import pytest
import schemathesis
import schemathesis.openapi
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import status_code_conformance
from support.worlds import AS_OF, build_world, fake_loaded

from serving.api import RankingService, ServeSettings, create_app
from serving.config import RankConfig

TOKEN = "schemathesis-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def api_schema(tmp_path_factory):
    settings = ServeSettings(
        api_token=TOKEN, as_of=AS_OF, activation_log=tmp_path_factory.mktemp("st") / "log.jsonl",
        rank=RankConfig(default_top=15, score_batch_limit=5, exploration_share=0.0, alias_check_seconds=0),
    )
    service = RankingService(
        settings, loader=lambda uri, tracking: fake_loaded(), data=build_world(),
        version_resolver=lambda uri, tracking: ("1", "run1"),
    )
    service.start()
    app = create_app(settings, service)
    return schemathesis.openapi.from_asgi("/openapi.json", app, headers=AUTH)


def operations(schema) -> list:
    ops = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in ops} >= {"/health", "/model", "/candidates", "/score", "/reload"}
    return ops


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=["valid", "invalid"])
def test_no_server_error_and_only_documented_status_codes(api_schema, mode):
    # schemathesis' pytest plugin does not load on this pytest, so each operation's strategy runs
    # under hypothesis directly; the checks are schemathesis' own
    seen: dict[str, set[int]] = {}

    def run_operation(operation) -> None:
        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck), database=None,
                  derandomize=True)  # the same examples on every run: CI stays reproducible
        def check(case):
            response = case.call_and_validate(headers=AUTH, checks=[not_a_server_error, status_code_conformance])
            seen.setdefault(operation.label, set()).add(response.status_code)

        check()

    for operation in operations(api_schema):
        try:
            run_operation(operation)
        except Unsatisfiable:
            # an operation with no parameters and no body (/health) has no invalid form
            assert mode is GenerationMode.NEGATIVE and not operation.query and not operation.body, operation.label
    assert seen and all(codes for codes in seen.values())
    if mode is GenerationMode.NEGATIVE:  # invalid input is refused, not served
        assert any(422 in codes or 413 in codes for codes in seen.values()), seen

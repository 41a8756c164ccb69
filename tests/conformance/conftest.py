"""One `server` fixture, parametrized over `apr-ds serve` and real SGLang, both serving the shipped APR checkpoint
for threads of MAX_CONTEXT tokens (the model's max_position_embeddings, as every preset does). One server of each
kind per test session; tests that change its state (pause, weights) put it back."""

import pytest

from servers import SHIPPED_APR, started

MAX_CONTEXT = 768


@pytest.fixture(scope="session", params=["ours", "sglang"])
def server(request, tmp_path_factory):
    log = tmp_path_factory.mktemp(f"conformance_{request.param}") / "server.log"
    with started(request.param, SHIPPED_APR, MAX_CONTEXT, log) as process:
        process.kind = request.param
        yield process

"""Per-tenant limits: named indexes, vectors, concurrent sessions, request rate.

Each limit gives a clear error (403 / 429 over REST, PermissionError or
ConnectionError over RPC), changes nothing, and leaves other tenants alone.
(The memory limit is in test_isolation.py.)
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import faiss_proxy
from faiss_proxy._client import Client

from .conftest import LiveServer, Rest, start_server, vector_items


def items(n: int, start: int = 0, d: int = 4) -> list[dict[str, object]]:
    x = np.arange(start * d, (start + n) * d, dtype="float32").reshape(n, d)
    return vector_items(x, [str(i) for i in range(start, start + n)])


@pytest.fixture
def quota_server(tmp_path: Path) -> Iterator[LiveServer]:
    live = start_server(tmp_path, tenant_max_indexes=2, tenant_max_vectors=100, tenant_max_sessions=2)
    yield live
    live.stop()


def test_named_index_and_vector_quotas(quota_server: LiveServer) -> None:
    live = quota_server
    tenant, key = live.new_tenant()
    rest = Rest(live.url, key)
    assert rest.post("/v1/index", {"name": "a", "dimension": 4})[0] == 201
    assert rest.post("/v1/index", {"name": "b", "dimension": 4})[0] == 201
    status, body = rest.post("/v1/index", {"name": "c", "dimension": 4})
    assert status == 403 and body["error"]["code"] == "limit_exceeded" and "2 named indexes" in body["error"]["message"]

    assert rest.post("/v1/index/a/vectors", {"vectors": items(60)})[0] == 200
    status, body = rest.post("/v1/index/b/vectors", {"vectors": items(41, 100)})
    assert status == 403 and "limit of 100" in body["error"]["message"]
    assert rest.get("/v1/index/b/ntotal")[1] == {"ntotal": 0}  # nothing was added
    assert rest.post("/v1/index/b/vectors", {"vectors": items(40, 100)})[0] == 200  # exactly at the limit
    assert rest.post("/v1/index/a/vectors", {"vectors": items(10)})[0] == 200  # replacing is not adding

    faiss_proxy.configure(api_url=live.url, api_key=key, timeout=60)
    try:
        index = faiss_proxy.open_index("a")
        with pytest.raises(PermissionError, match="limit of 100"):
            index.add_with_ids(np.ones((1, 4), "float32"), np.array([999], dtype="int64"))
        assert index.ntotal == 60
        with pytest.raises(PermissionError, match="named indexes"):
            faiss_proxy.create_index("c", 4)
        index.remove_ids(np.arange(5, dtype="int64"))
        index.add_with_ids(np.ones((5, 4), "float32"), np.arange(500, 505, dtype="int64"))  # room again
    finally:
        faiss_proxy.configure(api_url="", api_key="")

    # another tenant has its own quota
    _, other_key = live.new_tenant()
    other = Rest(live.url, other_key)
    assert other.post("/v1/index", {"name": "a", "dimension": 4})[0] == 201
    assert other.post("/v1/index/a/vectors", {"vectors": items(100)})[0] == 200


def test_concurrent_session_limit(quota_server: LiveServer) -> None:
    live = quota_server
    _, key = live.new_tenant()
    first, second = Client(live.url, key, timeout=30), Client(live.url, key, timeout=30)
    assert first.lookup("IndexFlatL2")(4).ntotal == 0
    assert second.lookup("IndexFlatL2")(4).ntotal == 0
    third = Client(live.url, key, timeout=30)
    with pytest.raises(ConnectionError, match=r"429.*RPC sessions"):
        third.connection()
    _, other_key = live.new_tenant()
    assert Client(live.url, other_key, timeout=30).lookup("IndexFlatL2")(4).ntotal == 0
    first.close()
    deadline = time.monotonic() + 10
    while True:
        try:
            third.connection()
            break
        except ConnectionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    assert third.lookup("IndexFlatL2")(4).ntotal == 0
    second.close()
    third.close()


def test_request_rate_limit(tmp_path: Path) -> None:
    live = start_server(tmp_path, tenant_rate_limit=5.0)
    try:
        _, key = live.new_tenant()
        _, other_key = live.new_tenant()
        rest, other = Rest(live.url, key), Rest(live.url, other_key)
        statuses = [rest.get("/v1/index")[0] for _ in range(12)]
        assert statuses[:5] == [200] * 5 and 429 in statuses
        status, body = rest.get("/v1/index")
        assert status == 429 and body["error"]["code"] == "rate_limited"
        assert other.get("/v1/index")[0] == 200  # another tenant's bucket
        time.sleep(1.1)
        assert rest.get("/v1/index")[0] == 200  # the bucket refills
        # RPC calls are limited in the tenant's worker; the other tenant's RPC goes on
        _, third_key = live.new_tenant()
        client = Client(live.url, other_key, timeout=30)
        bystander = Client(live.url, third_key, timeout=30)
        index = client.lookup("IndexFlatL2")(4)
        calm = bystander.lookup("IndexFlatL2")(4)
        with pytest.raises(PermissionError, match="request rate"):
            for _ in range(20):
                _ = index.ntotal
        assert calm.ntotal == 0  # a tenant of its own: its own bucket
        client.close()
        bystander.close()
    finally:
        live.stop()

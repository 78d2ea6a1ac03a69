"""No input makes the REST API answer 5xx: random bodies, mutated from valid ones.

A seeded generator (so failures reproduce) swaps fields of valid requests for
random JSON values of every type; each answer must be a 2xx or a 4xx in the one
error shape, and the server must keep serving the index afterwards.
"""

from __future__ import annotations

import json
import random
from typing import Any

from .conftest import Rest
from .test_rest import ERROR_KEYS

D = 4


def random_value(rng: random.Random, depth: int = 0) -> Any:
    kinds = ["int", "float", "str", "bool", "null", "bigint", "list", "dict", "numlist", "nested"]
    if depth > 2:
        kinds = kinds[:6]
    kind = rng.choice(kinds)
    if kind == "int":
        return rng.randint(-5, 5)
    if kind == "float":
        return rng.choice([0.5, -1e30, 1e308, float("nan"), float("inf"), 3.25])
    if kind == "str":
        return rng.choice(["", "a", "jazz", "$in", "../x", "\u0000", "x" * 600, "1,2,3,4", "AAAA"])
    if kind == "bool":
        return rng.random() < 0.5
    if kind == "null":
        return None
    if kind == "bigint":
        return rng.choice([2**63, -(2**63) - 1, 10**30])
    if kind == "numlist":
        return [rng.random() for _ in range(rng.choice([0, 1, D - 1, D, D + 1]))]
    if kind == "nested":
        return [[rng.random() for _ in range(D)] for _ in range(rng.randint(0, 3))]
    if kind == "list":
        return [random_value(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    keys = ["id", "values", "values_b64", "metadata", "$in", "$gt", "$or", "k", "vector", "genre"]
    return {rng.choice(keys): random_value(rng, depth + 1) for _ in range(rng.randint(0, 3))}


def mutate(rng: random.Random, body: dict[str, Any]) -> dict[str, Any]:
    out = json.loads(json.dumps(body))
    for _ in range(rng.randint(1, 3)):
        target = out
        if "vectors" in out and isinstance(out["vectors"], list) and out["vectors"] and rng.random() < 0.5:
            item = rng.choice(out["vectors"])
            target = item if isinstance(item, dict) else out
        keys = [*target, "extra"] if target else ["extra"]
        target[rng.choice(keys)] = random_value(rng)
    return out


VALID: list[tuple[str, str, dict[str, Any]]] = [
    ("POST", "/v1/index", {"name": "n", "dimension": D, "index_type": "IndexFlatL2", "metric": "L2"}),
    ("POST", "/v1/index/fz/vectors", {"vectors": [{"id": "a", "values": [0.1] * D, "metadata": {"genre": "x"}}]}),
    ("POST", "/v1/index/fz/search", {"vector": [0.1] * D, "k": 3, "filter": {"genre": "x"}, "include": ["metadata"]}),
    ("POST", "/v1/index/fz/search", {"vectors": [[0.1] * D], "k": 2, "params": {"efSearch": 8}}),
    ("POST", "/v1/index/fz/train", {"vectors": [[0.1] * D]}),
    ("POST", "/v1/index/fz/specialized_search", {"operation": "range_search", "vector": [0.1] * D, "radius": 1.0}),
    ("POST", "/v1/index/fz/specialized_search", {"operation": "reconstruct", "id": "a"}),
]


def test_random_bodies_never_give_5xx(rest: Rest) -> None:
    assert rest.post("/v1/index", {"name": "fz", "dimension": D, "index_type": "HNSW8"})[0] == 201
    rest.post("/v1/index/fz/vectors", {"vectors": [{"id": str(i), "values": [i * 0.1] * D} for i in range(20)]})
    rng = random.Random(20261122)
    seen: set[int] = set()
    for round_ in range(60):
        for method, path, valid in VALID:
            body = mutate(rng, valid)
            raw = json.dumps(body).encode()  # allow_nan: NaN/Infinity literals too
            status, reply = rest.call(method, path, raw=raw)
            seen.add(status)
            assert status < 500, (round_, path, body, reply)
            if status >= 400:
                assert isinstance(reply, dict) and set(reply) == {"error"} and set(reply["error"]) == ERROR_KEYS
    for query in ["vector=1,2,3,4&k=x", "vector=&k=1", "filter={", "k=99999999999999999999", "vector=nan,1,1,1"]:
        status, reply = rest.get(f"/v1/index/fz/search?{query}")
        assert 400 <= status < 500, (query, reply)
    assert seen & {200, 201} and 400 in seen
    status, body = rest.post("/v1/index/fz/search", {"vector": [0.1] * D, "k": 1})
    assert status == 200 and len(body["results"]) == 1

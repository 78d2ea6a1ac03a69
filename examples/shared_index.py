"""Several processes sharing one named index: one writer, several readers.

A *named index* (``faiss_proxy.create_index`` / ``open_index``) belongs to the tenant, not
to one connection: every process with the tenant's key opens the same live FAISS object,
and every change is in the write-ahead log before the call returns.  Here a writer
process adds batches of vectors while reader processes (each with its own connection)
search the same index:

* round by round, each reader sees every batch the writer was told is stored;
* while the writer adds without pausing, readers never see half a batch: the index's
  reader-writer lock makes each ``add_with_ids`` atomic for them.

    faiss-proxy serve &
    faiss-proxy tenant create demo
    export FAISS_PROXY_URL=http://127.0.0.1:8000
    export FAISS_PROXY_API_KEY=$(faiss-proxy key create demo | tail -1)
    python examples/shared_index.py [--readers 3]

Each child process opens its own connection (``spawn`` here; after a ``fork`` the client
opens a new connection too) and reaches the index *by name*: objects created in another
session, like a plain ``faiss.IndexFlatL2``, are private to that session.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import time
from typing import Any

import numpy as np

import faiss_proxy as faiss

NAME = "shared-demo"
DIM = 16
BATCH = 200
ROUNDS = 3  # batches added in lock-step with the readers
STREAM = 5  # batches added afterwards while the readers search without waiting


def batch(b: int) -> tuple[np.ndarray, np.ndarray]:
    """Batch ``b``: ids b*1000 .. b*1000+BATCH-1 and their (reproducible) vectors."""
    rs = np.random.RandomState(b)
    return rs.rand(BATCH, DIM).astype("float32"), np.arange(b * 1000, b * 1000 + BATCH, dtype="int64")


def log(who: str, message: str) -> None:
    print(f"[{who:8}] {message}", flush=True)


def writer(barrier: Any) -> None:
    faiss.configure()  # each process connects on its own (FAISS_PROXY_URL / FAISS_PROXY_API_KEY)
    index = faiss.open_index(NAME)
    for b in range(ROUNDS):
        x, ids = batch(b)
        index.add_with_ids(x, ids)  # durable when it returns
        log("writer", f"round {b}: added ids {ids[0]}..{ids[-1]}, ntotal={index.ntotal}")
        barrier.wait()  # readers may look now
        barrier.wait()  # all readers have looked
    for b in range(ROUNDS, ROUNDS + STREAM):
        x, ids = batch(b)
        index.add_with_ids(x, ids)
    log("writer", f"streamed {STREAM} more batches without waiting, ntotal={index.ntotal}")


def reader(n: int, barrier: Any) -> None:
    faiss.configure()
    index = faiss.open_index(NAME)
    who = f"reader-{n}"
    for b in range(ROUNDS):
        barrier.wait()
        x, ids = batch(b)
        D, I = index.search(x[:5], 1)  # the first vectors of the batch just added
        found = bool((I[:, 0] == ids[:5]).all() and np.allclose(D[:, 0], 0, atol=1e-5))
        log(who, f"round {b}: ntotal={index.ntotal}, batch {b} found by search: {found}")
        barrier.wait()
    # The writer now adds STREAM batches without waiting; sample ntotal as it grows.
    final = (ROUNDS + STREAM) * BATCH
    seen = set()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ntotal = index.ntotal
        seen.add(ntotal)
        if ntotal >= final:
            break
    whole = all(t % BATCH == 0 for t in seen)
    log(who, f"while streaming saw ntotal in {sorted(seen)}; only whole batches: {whole}")
    x, ids = batch(ROUNDS + STREAM - 1)
    _, I = index.search(x[-1:], 1)
    log(who, f"final ntotal={index.ntotal}, last id found: {int(I[0, 0]) == int(ids[-1])}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--readers", type=int, default=3)
    parser.add_argument("--keep", action="store_true", help="keep the index afterwards (default: drop it)")
    args = parser.parse_args()
    if not (os.environ.get("FAISS_PROXY_URL") and os.environ.get("FAISS_PROXY_API_KEY")):
        print(
            "Set FAISS_PROXY_URL (e.g. http://127.0.0.1:8000) and FAISS_PROXY_API_KEY "
            "(faiss-proxy key create TENANT | tail -1): named indexes live on a faiss-proxy server.",
            file=sys.stderr,
        )
        return 2

    faiss.configure()
    if any(info["name"] == NAME for info in faiss.list_indexes()):
        faiss.drop_index(NAME)  # left over from an earlier run
    faiss.create_index(NAME, DIM, "Flat", metric="L2")
    log("main", f"created named index {NAME!r} (dimension {DIM}); starting 1 writer and {args.readers} readers")

    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(args.readers + 1)
    procs = [ctx.Process(target=writer, args=(barrier,), name="writer")]
    procs += [ctx.Process(target=reader, args=(n, barrier), name=f"reader-{n}") for n in range(1, args.readers + 1)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    failed = [p.name for p in procs if p.exitcode != 0]
    if failed:
        for p in procs:
            if p.is_alive():
                p.terminate()
        log("main", f"failed: {failed}")
        return 1

    index = faiss.open_index(NAME)
    info = next(i for i in faiss.list_indexes() if i["name"] == NAME)
    log("main", f"all processes done: ntotal={index.ntotal}, type={info['type']}")
    if not args.keep:
        faiss.drop_index(NAME)
        log("main", f"dropped {NAME!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

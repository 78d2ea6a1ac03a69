"""Train an IVF-PQ index on a large synthetic set, with progress output.

200,000 vectors of dimension 64 (clustered, like real embeddings) are compressed to
16 bytes each by an ``IndexIVFPQ`` on the server: training (one call) prints a line every
2 s while it runs and its time at the end, the
vectors are added in chunks with one progress line per chunk, and recall is measured
against an exact ``IndexFlatL2`` search for several ``nprobe`` values, each passed per
call (``SearchParametersIVF``) so the index itself is never changed.

    faiss-proxy serve &
    faiss-proxy tenant create demo
    export FAISS_PROXY_URL=http://127.0.0.1:8000
    export FAISS_PROXY_API_KEY=$(faiss-proxy key create demo | tail -1)
    python examples/train_ivfpq.py [--nb 200000] [--chunk 25000]

The whole run takes about 10-30 s on a 2-core machine.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import threading
import time
from collections.abc import Iterator

import numpy as np

import faiss_proxy as faiss


@contextlib.contextmanager
def heartbeat(what: str, every: float = 2.0) -> Iterator[None]:
    """Print ``what: running, N s`` every ``every`` seconds until the block ends."""
    stop = threading.Event()
    started = time.perf_counter()

    def tick() -> None:
        while not stop.wait(every):
            print(f"{what}: running, {time.perf_counter() - started:.0f} s", flush=True)

    thread = threading.Thread(target=tick, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def make_data(n: int, d: int, rs: np.random.RandomState) -> np.ndarray:
    """``n`` points from a mixture of 100 flat 8-dimensional gaussians in ``d`` dimensions.

    Real embeddings have structure (clusters, a low intrinsic dimension); with uniform or
    isotropic noise any approximate index looks bad.  Mixture parameters are fixed
    (seeded), so training, database and query sets come from the same distribution."""
    model = np.random.RandomState(7)
    centers = model.rand(100, d).astype("float32") * 10
    bases = model.randn(100, 8, d).astype("float32")
    assign = rs.randint(0, 100, n)
    x = centers[assign] + np.einsum("nk,nkd->nd", rs.randn(n, 8).astype("float32"), bases[assign])
    return (x + rs.randn(n, d).astype("float32") * 0.1).astype("float32")


def recall_at(I: np.ndarray, gt: np.ndarray, k: int) -> float:
    """1-recall@k: the fraction of queries whose true nearest neighbor is in the first k results."""
    return float(np.mean([gt[i, 0] in I[i, :k] for i in range(len(gt))]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nb", type=int, default=200_000, help="vectors in the index")
    parser.add_argument("--nt", type=int, default=50_000, help="training vectors")
    parser.add_argument("--nq", type=int, default=500, help="queries")
    parser.add_argument("--d", type=int, default=64, help="dimension")
    parser.add_argument("--nlist", type=int, default=1024, help="IVF lists")
    parser.add_argument("--m", type=int, default=16, help="PQ sub-quantizers (bytes per vector)")
    parser.add_argument("--chunk", type=int, default=25_000, help="vectors per add call")
    args = parser.parse_args()
    if not (os.environ.get("FAISS_PROXY_URL") and os.environ.get("FAISS_PROXY_API_KEY")):
        print(
            "Set FAISS_PROXY_URL (e.g. http://127.0.0.1:8000) and FAISS_PROXY_API_KEY "
            "(faiss-proxy key create TENANT | tail -1) to train on a faiss-proxy server.",
            file=sys.stderr,
        )
        return 2
    faiss.configure()
    d, k = args.d, 10

    t0 = time.perf_counter()
    rs = np.random.RandomState(2024)
    xt, xb, xq = make_data(args.nt, d, rs), make_data(args.nb, d, rs), make_data(args.nq, d, rs)
    print(f"data: {args.nb} x {d} database, {args.nt} training, {args.nq} queries ({time.perf_counter() - t0:.1f} s)")

    # The ground truth, by exact search on the server.
    t0 = time.perf_counter()
    exact = faiss.IndexFlatL2(d)
    exact.add(xb)
    _, gt = exact.search(xq, k)
    exact_s = time.perf_counter() - t0
    print(f"exact: IndexFlatL2 add + search in {exact_s:.1f} s")
    del exact  # frees it on the server

    quantizer = faiss.IndexFlatL2(d)
    index = faiss.IndexIVFPQ(quantizer, d, args.nlist, args.m, 8)
    print(f"train: IndexIVFPQ(nlist={args.nlist}, m={args.m}, nbits=8) on {args.nt} vectors ...", flush=True)
    t0 = time.perf_counter()
    with heartbeat("train"):  # one blocking call on the server: say it is still running
        index.train(xt)
    print(f"train: done in {time.perf_counter() - t0:.1f} s, is_trained={index.is_trained}")

    t_add = time.perf_counter()
    for start in range(0, args.nb, args.chunk):
        t0 = time.perf_counter()
        index.add(xb[start : start + args.chunk])
        dt = time.perf_counter() - t0
        done = min(start + args.chunk, args.nb)
        rate = (done - start) / max(dt, 1e-9)
        percent = 100 * done / args.nb
        print(f"add: {done:>7}/{args.nb} ({percent:3.0f}%)  {dt:5.2f} s  {rate:9,.0f} vectors/s", flush=True)
    add_s = time.perf_counter() - t_add
    print(
        f"add: ntotal={index.ntotal} in {add_s:.1f} s; codes take {index.ntotal * args.m / 2**20:.1f} MiB "
        f"instead of {xb.nbytes / 2**20:.1f} MiB"
    )

    print("search: nprobe  R@1    R@10   ms/query   (R@k: true nearest neighbor among the first k results)")
    for nprobe in (1, 4, 16, 64):
        params = faiss.SearchParametersIVF(nprobe=nprobe)  # for this call only
        t0 = time.perf_counter()
        _, I = index.search(xq, k, params=params)
        ms = 1000 * (time.perf_counter() - t0) / args.nq
        print(f"search: {nprobe:>6}  {recall_at(I, gt, 1):.3f}  {recall_at(I, gt, 10):.3f}  {ms:8.3f}")
    print(f"index nprobe unchanged: {index.nprobe}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

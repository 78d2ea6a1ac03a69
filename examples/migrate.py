"""Migrating a FAISS script: an ordinary FAISS program, made remote by two lines.

This file was a plain FAISS script.  The whole migration is this diff::

    -import faiss
    +import faiss_proxy as faiss
    +
    +faiss.configure()  # FAISS_PROXY_URL / FAISS_PROXY_API_KEY, or configure(api_url=..., api_key=...)

Everything below the import is unchanged FAISS code: ``index_factory``, training,
``nprobe``, per-call ``SearchParametersIVF`` with an ``IDSelector``, in-place
``normalize_L2``, ``range_search``, ``reconstruct``, ``remove_ids``, HNSW
parameters, ``Kmeans`` and ``write_index``/``read_index`` on a local file.  The
objects live on the server; arrays travel by value; results are the same numbers.

    faiss-proxy serve &
    faiss-proxy tenant create demo
    export FAISS_PROXY_URL=http://127.0.0.1:8000
    export FAISS_PROXY_API_KEY=$(faiss-proxy key create demo | tail -1)
    python examples/migrate.py

Without FAISS_PROXY_URL the same script runs on the local faiss package (the test suite
runs it both ways and compares the output line by line).
"""

import os
import sys
import tempfile

import numpy as np

import faiss_proxy as faiss

faiss.configure()  # FAISS_PROXY_URL / FAISS_PROXY_API_KEY, or configure(api_url=..., api_key=...)

# (not part of the migration: say where this run goes; faiss_proxy.is_remote() is no FAISS API)
if not faiss.is_remote():
    print("FAISS_PROXY_URL is not set: running on the local faiss package", file=sys.stderr)
else:
    print(f"running on the faiss-proxy server at {os.environ['FAISS_PROXY_URL']}", file=sys.stderr)

# ---- from here on: the original FAISS script, unchanged ------------------------------

d = 32
rs = np.random.RandomState(123)
centers = rs.rand(40, d).astype("float32") * 4


def sample(n: int) -> np.ndarray:
    """Clustered vectors (40 clusters), like real embeddings rather than uniform noise."""
    return (centers[rs.randint(0, 40, n)] + rs.randn(n, d).astype("float32") * 0.3).astype("float32")


xt, xb, xq = sample(5000), sample(20000), sample(50)
k = 10

# 1. exact search: the ground truth
flat = faiss.IndexFlatL2(d)
flat.add(xb)
D_ref, I_ref = flat.search(xq, k)
print(f"flat: ntotal={flat.ntotal} first hits={I_ref[0, :4].tolist()}")

# 2. an IVF index with scalar-quantized codes, from a factory string: train, add, nprobe
index = faiss.index_factory(d, "IVF64,SQ8")
index.train(xt)
index.add(xb)
index.nprobe = 8
D, I = index.search(xq, k)
recall = np.mean([len(set(I[i]) & set(I_ref[i])) / k for i in range(len(xq))])
print(f"ivf-sq8: is_trained={index.is_trained} nprobe={index.nprobe} recall@10={recall:.2f}")

# 3. per-call search parameters: restrict to ids 0..999, probe more lists, only for this call
params = faiss.SearchParametersIVF(sel=faiss.IDSelectorRange(0, 1000), nprobe=16)
D_sel, I_sel = index.search(xq, 5, params=params)
print(f"selector: every id < 1000: {bool(((I_sel >= 0) & (I_sel < 1000)).all())}; index nprobe still {index.nprobe}")

# 4. cosine similarity: normalize in place, inner-product index
xn = xb.copy()
faiss.normalize_L2(xn)  # changes xn, as with local faiss
norms = np.linalg.norm(xn, axis=1)
ip = faiss.IndexFlatIP(d)
ip.add(xn)
qn = xq[:3].copy()
faiss.normalize_L2(qn)
S, J = ip.search(qn, 3)
print(f"cosine: norms 1.0: {bool(np.allclose(norms, 1, atol=1e-5))} top similarity={S[0, 0]:.3f}")

# 5. range search and reconstruct
radius = float(np.median(D_ref[:, 0])) * 2
lims, RD, RI = flat.range_search(xq[:3], radius)
print(f"range_search: radius={radius:.3f} hits per query={np.diff(lims).tolist()}")
v = flat.reconstruct(int(I_ref[0, 0]))
print(f"reconstruct: equal to xb row: {bool(np.array_equal(v, xb[I_ref[0, 0]]))}")

# 6. remove_ids on an IDMap index
idmap = faiss.IndexIDMap(faiss.IndexFlatL2(d))
idmap.add_with_ids(xb[:100], np.arange(1000, 1100, dtype="int64"))
removed = idmap.remove_ids(np.arange(1000, 1050, dtype="int64"))
print(f"remove_ids: removed={removed} ntotal={idmap.ntotal}")

# 7. HNSW with its search-time parameter
hnsw = faiss.IndexHNSWFlat(d, 16)
hnsw.hnsw.efConstruction = 40
hnsw.add(xb)
hnsw.hnsw.efSearch = 64
_, I_h = hnsw.search(xq, k)
recall_h = np.mean([len(set(I_h[i]) & set(I_ref[i])) / k for i in range(len(xq))])
print(f"hnsw: efSearch={hnsw.hnsw.efSearch} recall@10={recall_h:.2f}")

# 8. k-means
km = faiss.Kmeans(d, 20, niter=10, seed=1)
km.train(xt)
_, assign = km.index.search(xb[:1000], 1)
print(f"kmeans: centroids {km.centroids.shape} clusters used={len(np.unique(assign))}")

# 9. save to a local file and load it back
with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, "ivf.index")
    faiss.write_index(index, path)
    size = os.path.getsize(path)
    index2 = faiss.read_index(path)
    index2.nprobe = 8
    _, I2 = index2.search(xq, k)
print(f"write/read_index: file of {size} bytes, same results: {bool(np.array_equal(I, I2))}")

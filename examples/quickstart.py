"""Quick start: an existing FAISS script, changed only in its import and a configure call.

faiss-proxy serve &
faiss-proxy tenant create demo && export FAISS_PROXY_API_KEY=$(faiss-proxy key create demo | tail -1)
FAISS_PROXY_URL=http://127.0.0.1:8000 python examples/quickstart.py
"""

import numpy as np

import faiss_proxy as faiss

faiss.configure()  # reads FAISS_PROXY_URL / FAISS_PROXY_API_KEY; local faiss if unset

d = 64
rs = np.random.RandomState(1234)
xb = rs.random((20000, d)).astype("float32")
xq = rs.random((5, d)).astype("float32")

quantizer = faiss.IndexFlatL2(d)
index = faiss.IndexIVFFlat(quantizer, d, 100)
index.train(xb)
index.add(xb)
index.nprobe = 10
D, I = index.search(xq, 4)
print("remote" if faiss.is_remote() else "local", "search, ntotal =", index.ntotal)
print(I)

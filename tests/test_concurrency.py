"""Several threads of one process share remote indexes; calls run in parallel on the server."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from faiss_proxy._client import Client
from faiss_proxy_server.supervisor import with_huge_pages, worker_environment

from .conftest import Dataset, LiveServer, start_server
from .test_faults import cpu_seconds


def test_threads_share_one_remote_index(remote: ModuleType, local_faiss: ModuleType, dataset: Dataset) -> None:
    r = remote.IndexFlatL2(dataset.d)
    r.add(dataset.xb)
    lo = local_faiss.IndexFlatL2(dataset.d)
    lo.add(dataset.xb)
    _, expected = lo.search(dataset.xq, 5)

    def worker(seed: int) -> int:
        rs = np.random.RandomState(seed)
        for _ in range(40):
            q = rs.randint(0, len(dataset.xq), 3)
            _D, I = r.search(dataset.xq[q], 5)
            np.testing.assert_array_equal(I, expected[q])
            assert r.ntotal == len(dataset.xb)
        return seed

    with ThreadPoolExecutor(8) as pool:
        assert sorted(pool.map(worker, range(8))) == list(range(8))
    assert len({id(remote.client().connection())}) == 1


def test_threads_building_their_own_indexes(remote: ModuleType, dataset: Dataset) -> None:
    def build(i: int) -> int:
        index = remote.IndexFlatIP(dataset.d)
        index.add(dataset.xb[i * 100 : (i + 1) * 100])
        x = dataset.xq.copy()
        remote.normalize_L2(x)
        np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, rtol=1e-5)
        return int(index.ntotal)

    with ThreadPoolExecutor(6) as pool:
        assert list(pool.map(build, range(12))) == [100] * 12


def test_calls_from_different_threads_run_in_parallel_on_the_server(remote: ModuleType) -> None:
    """A short call from one thread completes while a long call of another thread,
    on the same connection, is still running on the server."""
    rs = np.random.RandomState(0)
    x = rs.rand(20000, 32).astype("float32")
    long_done = threading.Event()
    kmeans = remote.Kmeans(32, 256, niter=25, seed=1)

    def long_call() -> None:
        kmeans.train(x)
        long_done.set()

    probe = remote.IndexFlatL2(8)
    t = threading.Thread(target=long_call)
    start = time.monotonic()
    t.start()
    time.sleep(0.05)
    quick_finished_during_long = 0
    while not long_done.is_set() and time.monotonic() - start < 60:
        assert probe.ntotal == 0
        if not long_done.is_set():
            quick_finished_during_long += 1
    t.join(60)
    assert long_done.is_set()
    assert quick_finished_during_long > 0, "the quick calls waited for the long one"
    assert kmeans.centroids.shape == (256, 32)


def test_session_spin_follows_the_client(tmp_path: Path, local_faiss: ModuleType, dataset: Dataset) -> None:
    """The worker busy-waits for a client's next call only while that client calls
    back quickly: a client that pauses between calls costs the worker no spinning
    (with a 20 ms spin, spinning after each of 25 calls would burn 0.5 s of CPU),
    and a client in a tight loop gets correct answers from the spinning worker."""
    live = start_server(tmp_path, session_spin_us=20_000.0)
    try:
        tenant, key = live.new_tenant("spin")
        client = Client(live.url, key, timeout=60)
        conn = client.connection()
        index = conn.new("IndexFlatL2", (dataset.d,), {})
        index.add(dataset.xb)
        lo = local_faiss.IndexFlatL2(dataset.d)
        lo.add(dataset.xb)
        D_ref, I_ref = lo.search(dataset.xq, 5)
        for i in range(200):  # tight loop: the worker spins between these calls
            D, I = index.search(dataset.xq[i % 40 : i % 40 + 1], 5)
            np.testing.assert_array_equal(I, I_ref[i % 40 : i % 40 + 1])
        pid = live.worker_pid(tenant)
        assert pid is not None
        before = cpu_seconds(pid)
        for i in range(25):  # a client that pauses: no spinning after the first pause
            time.sleep(0.06)
            D, I = index.search(dataset.xq[i : i + 1], 5)
            np.testing.assert_array_equal(I, I_ref[i : i + 1])
            np.testing.assert_allclose(D, D_ref[i : i + 1], rtol=1e-5)
        used = cpu_seconds(pid) - before
        assert used < 0.25, f"the worker used {used:.2f} s of CPU while its client paused 25 times"
        client.close()
    finally:
        live.stop()


def _anon_huge_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/smaps_rollup") as f:
        return sum(int(line.split()[1]) * 1024 for line in f if line.startswith("AnonHugePages:"))


def test_workers_keep_large_indexes_on_huge_pages(
    server: LiveServer, tenant: tuple[str, str], remote: ModuleType
) -> None:
    """A worker asks glibc to madvise its large allocations for transparent huge pages,
    so an index's storage sits on 2 MB pages (a scan of 100k x 128 floats: 1.9 ->
    1.7 ms).  Without the tunable only numpy's own arrays (the receive buffer) get
    them, about half of what is checked here; the operator's own tunables are kept."""
    assert with_huge_pages({}) == {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}
    assert with_huge_pages({"GLIBC_TUNABLES": "glibc.rtld.nns=2"}) == {
        "GLIBC_TUNABLES": "glibc.rtld.nns=2:glibc.malloc.hugetlb=1"
    }
    assert with_huge_pages({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}) == {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}
    assert worker_environment({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}) == {
        "GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"
    }

    index = remote.IndexFlatL2(128)
    assert index.ntotal == 0  # the worker runs
    pid = server.worker_pid(tenant[0])
    assert pid is not None
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    assert b"GLIBC_TUNABLES=glibc.malloc.hugetlb=1" in environ
    mode = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    if not mode.exists() or "[never]" in mode.read_text():
        pytest.skip("transparent huge pages are off in this kernel")
    before = _anon_huge_bytes(pid)
    x = np.random.default_rng(0).random((40_000, 128), dtype=np.float32)  # 20 MB
    index.add(x)
    grown = _anon_huge_bytes(pid) - before
    assert grown >= 1.5 * x.nbytes, f"huge pages grew by {grown >> 20} MiB for a {x.nbytes >> 20} MiB add"


def test_client_spin_is_skipped_after_a_long_call(remote: ModuleType, dataset: Dataset) -> None:
    """The client busy-waits for a reply only while calls come back within its spin:
    after one that outlasted it, the next call sleeps at once (a client of long calls
    does not burn a spin of CPU on each); a quick answer turns the spin back on."""
    client = Client(remote.client().url, remote.client().api_key, timeout=60, spin_us=20_000)
    try:
        conn = client.connection()
        channel = conn.rpc._channel
        index = conn.new("IndexFlatL2", (dataset.d,), {})
        big = np.tile(dataset.xb, (20, 1))
        index.add(big)
        assert index.ntotal == len(big)  # a quick answer
        assert channel.brisk
        started = time.monotonic()
        index.search(big[:5000], 10)  # 32 GFLOP: far beyond the 20 ms spin
        assert time.monotonic() - started > 0.02
        assert not channel.brisk
        assert index.ntotal == len(big)  # a quick answer
        assert channel.brisk
    finally:
        client.close()

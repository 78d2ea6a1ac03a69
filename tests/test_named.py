"""Named indexes: shared by RPC and REST, durable across crashes, guarded by locks."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import faiss
import numpy as np
import pytest

import faiss_proxy
from faiss_proxy_server.storage import WriteAheadLog, encode_record, read_log

from .conftest import Dataset, LiveServer, Rest, launch_cli_server, run_cli, start_server, vector_items


def kill_worker(server: LiveServer, tenant: str) -> None:
    """SIGKILL the tenant's worker and wait until the gateway has noticed."""
    pid = server.worker_pid(tenant)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while server.worker_pid(tenant) is not None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.worker_pid(tenant) is None


@pytest.fixture
def both(server: LiveServer) -> Iterator[tuple[ModuleType, Rest, str]]:
    """``faiss_proxy`` and a REST client for the same fresh tenant."""
    name, key = server.new_tenant()
    faiss_proxy.configure(api_url=server.url, api_key=key, timeout=120)
    yield faiss_proxy, Rest(server.url, key), name
    faiss_proxy.configure(api_url="", api_key="")


# --- one index, two APIs -----------------------------------------------------------------
def test_rpc_and_rest_share_one_named_index(both: tuple[ModuleType, Rest, str], dataset: Dataset) -> None:
    fp, rest, _ = both
    index = fp.create_index("docs", dataset.d, "Flat")
    assert isinstance(index, fp.IndexIDMap2)
    ids = np.arange(1000, dtype="int64")
    index.add_with_ids(dataset.xb[:1000], ids)
    # REST sees the RPC vectors, live, under their decimal ids
    assert rest.get("/v1/index/docs/ntotal") == (200, {"ntotal": 1000})
    status, body = rest.get("/v1/index/docs/vectors/42")
    np.testing.assert_array_equal(np.array(body["values"], dtype="float32"), dataset.xb[42])
    # RPC sees REST vectors
    rest.post("/v1/index/docs/vectors", {"vectors": vector_items(dataset.xb[1000:1010], [f"r{i}" for i in range(10)])})
    assert index.ntotal == 1010
    ref = faiss.IndexFlatL2(dataset.d)
    ref.add(dataset.xb[:1010])
    D, I = index.search(dataset.xq, 5)
    D0, I0 = ref.search(dataset.xq, 5)
    np.testing.assert_array_equal(I[I0 < 1000], I0[I0 < 1000])
    np.testing.assert_allclose(D, D0, rtol=1e-5)
    # a second session opens the same object state
    again = fp.open_index("docs")
    assert again.ntotal == 1010
    infos = fp.list_indexes()
    assert [i["name"] for i in infos] == ["docs"] and infos[0]["ntotal"] == 1010


def test_named_index_errors_are_python_errors(both: tuple[ModuleType, Rest, str]) -> None:
    fp, rest, _ = both
    with pytest.raises(KeyError, match="no named index 'missing'"):
        fp.open_index("missing")
    fp.create_index("one", 8)
    with pytest.raises(ValueError, match="already exists"):
        fp.create_index("one", 8)
    with pytest.raises(ValueError, match="index names"):
        fp.create_index("../escape", 8)
    with pytest.raises(ValueError, match="index_factory"):
        fp.create_index("two", 8, "NoSuchType")
    held = fp.open_index("one")
    fp.drop_index("one")
    with pytest.raises(KeyError):
        fp.open_index("one")
    with pytest.raises(KeyError, match="dropped"):
        held.search(np.zeros((1, 8), "float32"), 1)
    assert rest.get("/v1/index")[1] == {"indexes": []}


def test_repeated_reads_and_writes_of_a_named_index(
    server: LiveServer, both: tuple[ModuleType, Rest, str], dataset: Dataset
) -> None:
    """The worker answers a repeated search of a named index from a plan, under the
    index's read lock: it sees every change made meanwhile (over REST too), and a
    dropped index refuses it as the first search.  Repeated writes are never planned:
    each is logged, so a new worker replays all of them."""
    fp, rest, tenant = both
    index = fp.create_index("planned", dataset.d)
    local = faiss.IndexFlatL2(dataset.d)
    q = dataset.xq[:2]
    for i in range(3):
        rows = dataset.xb[i * 100 : (i + 1) * 100]
        index.add_with_ids(rows, np.arange(i * 100, (i + 1) * 100, dtype="int64"))
        local.add(rows)
        D, I = index.search(q, 5)  # planned from the second time round
        Dl, Il = local.search(q, 5)
        np.testing.assert_array_equal(I, Il)
        np.testing.assert_allclose(D, Dl, rtol=1e-5)
    rest.post("/v1/index/planned/vectors", {"vectors": vector_items(q, ["near-0", "near-1"])})
    D, I = index.search(q, 1)  # the REST vectors are the nearest now
    assert (D[:, 0] == 0).all() and index.ntotal == 302
    before = index.search(q, 5)
    kill_worker(server, tenant)
    fp.configure(api_url=server.url, api_key=rest.key, timeout=120)  # a new session ...
    again = fp.open_index("planned")  # ... and a new worker, from the log
    assert again.ntotal == 302
    for _ in range(2):
        D, I = again.search(q, 5)
        np.testing.assert_array_equal(I, before[1])
        np.testing.assert_allclose(D, before[0], rtol=1e-5)
    fp.drop_index("planned")
    for _ in range(2):
        with pytest.raises(KeyError, match="dropped"):
            again.search(q, 5)


def test_named_index_cannot_escape_the_log(both: tuple[ModuleType, Rest, str], dataset: Dataset) -> None:
    fp, rest, _ = both
    index = fp.create_index("guarded", dataset.d)
    index.add_with_ids(dataset.xb[:10], np.arange(10, dtype="int64"))
    with pytest.raises(ValueError, match="clone_index"):
        fp.IndexIDMap(index)
    with pytest.raises(ValueError, match="clone_index"):
        fp.IndexShards(dataset.d).add_shard(index)
    with pytest.raises(TypeError, match="arrays and numbers"):
        index.remove_ids(fp.IDSelectorRange(0, 5))
    # reads of a named index and private clones are fine
    private = fp.clone_index(index)
    private.reset()
    assert index.ntotal == 10
    assert index.remove_ids(np.array([1, 2], dtype="int64")) == 2
    assert_error_status = rest.get("/v1/index/guarded/vectors/1")[0]
    assert assert_error_status == 404 and rest.get("/v1/index/guarded/ntotal")[1] == {"ntotal": 8}


def test_per_call_search_parameters_over_rpc(both: tuple[ModuleType, Rest, str], dataset: Dataset) -> None:
    fp, _, _ = both
    index = fp.create_index("ivf", dataset.d, "IVF32,Flat")
    index.train(dataset.xt)
    index.add_with_ids(dataset.xb, np.arange(len(dataset.xb), dtype="int64"))
    ref = faiss.index_factory(dataset.d, "IVF32,Flat")
    ref.train(dataset.xt)
    ref.add(dataset.xb)
    for nprobe in (1, 8):
        D, I = index.search(dataset.xq, 5, params=fp.SearchParametersIVF(nprobe=nprobe))
        D0, I0 = ref.search(dataset.xq, 5, params=faiss.SearchParametersIVF(nprobe=nprobe))
        np.testing.assert_array_equal(I, I0)
    assert index.nprobe == 1  # the shared index was not touched


def test_concurrent_searches_and_adds(both: tuple[ModuleType, Rest, str], dataset: Dataset) -> None:
    fp, rest, _ = both
    index = fp.create_index("busy", dataset.d, "HNSW16")
    index.add_with_ids(dataset.xb[:1000], np.arange(1000, dtype="int64"))
    errors: list[BaseException] = []
    stop = threading.Event()

    def searcher() -> None:
        try:
            while not stop.is_set():
                D, I = index.search(dataset.xq, 5)
                assert (I >= 0).all()
                status, _ = rest.post("/v1/index/busy/search", {"vector": dataset.xq[0].tolist(), "k": 3})
                assert status == 200
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=searcher) for _ in range(3)]
    for t in threads:
        t.start()
    for lo in range(1000, 3000, 200):
        index.add_with_ids(dataset.xb[lo : lo + 200], np.arange(lo, lo + 200, dtype="int64"))
    stop.set()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert index.ntotal == 3000


# --- durability --------------------------------------------------------------------------
def test_changes_survive_worker_crash_and_restart(server: LiveServer, dataset: Dataset) -> None:
    tenant, key = server.new_tenant()
    rest = Rest(server.url, key)
    faiss_proxy.configure(api_url=server.url, api_key=key, timeout=120)
    try:
        ivf = faiss_proxy.create_index("ivf", dataset.d, "IVF16,Flat")
        ivf.train(dataset.xt)
        ivf.add_with_ids(dataset.xb[:500], np.arange(500, dtype="int64"))
        ivf.nprobe = 7
        hnsw = faiss_proxy.create_index("hnsw", dataset.d, "HNSW16")
        faiss_proxy.downcast_index(hnsw.index).hnsw.efSearch = 77
        metas = [{"i": i} for i in range(100)]
        rest.post(
            "/v1/index/hnsw/vectors", {"vectors": vector_items(dataset.xb[:100], [f"h{i}" for i in range(100)], metas)}
        )
        rest.delete("/v1/index/hnsw/vectors/h3")
        expected = rest.post("/v1/index/ivf/search", {"vectors": dataset.xq.tolist(), "k": 5})[1]
        kill_worker(server, tenant)

        faiss_proxy.configure(api_url=server.url, api_key=key, timeout=120)
        ivf = faiss_proxy.open_index("ivf")
        assert ivf.ntotal == 500 and ivf.nprobe == 7 and ivf.is_trained
        assert rest.post("/v1/index/ivf/search", {"vectors": dataset.xq.tolist(), "k": 5})[1] == expected
        hnsw = faiss_proxy.open_index("hnsw")
        assert faiss_proxy.downcast_index(hnsw.index).hnsw.efSearch == 77
        assert rest.get("/v1/index/hnsw/ntotal")[1] == {"ntotal": 99}
        assert rest.get("/v1/index/hnsw/vectors/h3")[0] == 404
        assert rest.get("/v1/index/hnsw/vectors/h4")[1]["metadata"] == {"i": 4}
    finally:
        faiss_proxy.configure(api_url="", api_key="")


def test_wal_replay_truncates_a_torn_tail(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    wal = WriteAheadLog(tmp_path)
    wal.open()
    for i in range(3):
        wal.append({"op": "x", "i": i}, bytes([i]) * 10)
    wal.close()
    (path,) = tmp_path.glob("wal-*.log")
    good = path.stat().st_size
    with open(path, "ab") as fh:
        fh.write(encode_record(4, {"op": "x"}, b"y" * 100)[0] + b"torn")
    with caplog.at_level("WARNING", logger="faiss_proxy.storage"):
        records = list(WriteAheadLog(tmp_path).replay(after=1))
    assert [(r.seq, r.header["i"], bytes(r.blob)) for r in records] == [(2, 1, b"\x01" * 10), (3, 2, b"\x02" * 10)]
    assert "truncating" in caplog.text and path.stat().st_size == good
    # a flipped bit in a record's payload is caught by its checksum
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF
    path.write_bytes(bytes(data))
    assert len(list(WriteAheadLog(tmp_path).replay(after=0))) == 2


def _two_log_files(directory: Path) -> tuple[Path, Path]:
    """Records 1-3 in one log file and 4-6 in the next, as after a restart."""
    wal = WriteAheadLog(directory)
    wal.open()
    for i in range(3):
        wal.append({"op": "x", "i": i}, bytes([i]) * 10)
    wal.close()
    wal = WriteAheadLog(directory)
    assert len(list(wal.replay(after=0))) == 3
    wal.open()
    for i in range(3, 6):
        wal.append({"op": "x", "i": i}, bytes([i]) * 10)
    wal.close()
    first, second = sorted(directory.glob("wal-*.log"))
    return first, second


def test_wal_damage_before_the_end_stops_the_replay_there(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Damage inside an older log file is not a torn tail: replaying later records on top of the
    hole would apply changes out of order, so the replay stops at the damage, the later files are
    set aside (``*.damaged``), and new appends start right after the last record applied."""
    first, second = _two_log_files(tmp_path)
    data = bytearray(first.read_bytes())
    data[len(data) // 2] ^= 0xFF  # inside record 2
    first.write_bytes(bytes(data))
    wal = WriteAheadLog(tmp_path)
    with caplog.at_level("WARNING", logger="faiss_proxy.storage"):
        assert [r.seq for r in wal.replay(after=0)] == [1]
    assert "set aside 1 later file" in caplog.text
    assert not second.exists() and second.with_name(second.name + ".damaged").exists()
    assert first.with_name(first.name + ".damaged").read_bytes() == bytes(data)  # the evidence is kept
    wal.open()
    assert wal.append({"op": "x", "i": 9}) == 2  # continues the consistent prefix
    wal.close()
    assert [r.seq for r in WriteAheadLog(tmp_path).replay(after=0)] == [1, 2]  # and stays so


def test_wal_gap_in_sequence_stops_the_replay_there(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A record missing in the middle (its file lost, or a record cut out) ends the replay
    before the gap; the file holding the jump keeps only what came before it."""
    first, second = _two_log_files(tmp_path)
    records, _, _ = read_log(second)
    with open(second, "wb") as fh:  # record 5 is gone: 4, 6
        for r in (records[0], records[2]):
            fh.write(b"".join(bytes(part) for part in encode_record(r.seq, r.header, r.blob)))
    wal = WriteAheadLog(tmp_path)
    with caplog.at_level("WARNING", logger="faiss_proxy.storage"):
        assert [r.seq for r in wal.replay(after=0)] == [1, 2, 3, 4]
    assert "jumps from record 4 to 6" in caplog.text
    assert second.with_name(second.name + ".damaged").exists()
    wal.open()
    assert wal.append({"op": "x", "i": 9}) == 5
    wal.close()
    assert [r.seq for r in WriteAheadLog(tmp_path).replay(after=0)] == [1, 2, 3, 4, 5]


def test_corrupt_log_tail_is_truncated_on_load(tmp_path: Path, dataset: Dataset) -> None:
    live = start_server(tmp_path)
    try:
        tenant, key = live.new_tenant()
        rest = Rest(live.url, key)
        rest.post("/v1/index", {"name": "c", "dimension": dataset.d})
        for b in range(3):
            ids = [f"{b}-{j}" for j in range(10)]
            assert rest.post("/v1/index/c/vectors", {"vectors": vector_items(dataset.xb[:10] + b, ids)})[0] == 200
        kill_worker(live, tenant)
        directory = tmp_path / "tenants" / tenant / "indexes" / "c"
        logs = sorted(directory.glob("wal-*.log"))
        assert logs and logs[-1].stat().st_size > 0
        with open(logs[-1], "ab") as fh:
            fh.write(b"\x00\x00\x10\x00garbage: a torn record")
        size_with_garbage = logs[-1].stat().st_size
        assert rest.get("/v1/index/c/ntotal") == (200, {"ntotal": 30})
        assert logs[-1].stat().st_size < size_with_garbage
        # the index keeps working and the next crash loses nothing either
        rest.post("/v1/index/c/vectors", {"vectors": vector_items(dataset.xb[:1], ["after"])})
        kill_worker(live, tenant)
        assert rest.get("/v1/index/c/ntotal") == (200, {"ntotal": 31})
        assert rest.get("/v1/index/c/vectors/after")[0] == 200
    finally:
        live.stop()


def test_snapshots_compact_the_log(tmp_path: Path, dataset: Dataset) -> None:
    live = start_server(tmp_path, snapshot_wal_mb=0.01, snapshot_interval=0.5)
    try:
        tenant, key = live.new_tenant()
        rest = Rest(live.url, key)
        rest.post("/v1/index", {"name": "s", "dimension": dataset.d})
        for b in range(20):
            ids = [f"{b}-{j}" for j in range(50)]
            rest.post("/v1/index/s/vectors", {"vectors": vector_items(dataset.xb[b * 50 : (b + 1) * 50], ids)})
        directory = tmp_path / "tenants" / tenant / "indexes" / "s"
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and rest.get("/v1/index/s")[1]["wal_bytes"]:
            time.sleep(0.1)
        assert rest.get("/v1/index/s")[1]["wal_bytes"] == 0
        assert sum(p.stat().st_size for p in directory.glob("wal-*.log")) == 0
        kill_worker(live, tenant)
        assert rest.get("/v1/index/s/ntotal") == (200, {"ntotal": 1000})
        assert rest.get("/v1/index/s/vectors/19-49")[0] == 200
    finally:
        live.stop()


def _children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        out += [int(p) for p in text]
    return out


def _wait_gone(pids: list[int]) -> None:
    deadline = time.monotonic() + 10
    for pid in pids:
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass
            time.sleep(0.05)


def test_sigkill_server_during_acknowledged_adds_loses_nothing(tmp_path: Path, dataset: Dataset) -> None:
    """The real server, SIGKILLed while REST and RPC clients stream adds: after a
    restart every acknowledged vector is there, and no batch is half there."""
    data_dir = tmp_path / "data"
    live = launch_cli_server(data_dir)
    run_cli("tenant", "create", "acme", "--data-dir", str(data_dir))
    key = run_cli("key", "create", "acme", "--data-dir", str(data_dir)).stdout.strip().splitlines()[-1]
    rest = Rest(live.url, key)
    assert rest.post("/v1/index", {"name": "rest", "dimension": dataset.d})[0] == 201
    batch = 20
    acked_rest: list[int] = []
    acked_rpc: list[int] = []
    sent_rest: list[int] = []
    stop = threading.Event()

    def rest_stream() -> None:
        b = 0
        while not stop.is_set():
            ids = [f"b{b}-{j}" for j in range(batch)]
            metas = [{"batch": b}] * batch
            sent_rest.append(b)
            try:
                status, _ = rest.post(
                    "/v1/index/rest/vectors", {"vectors": vector_items(dataset.xb[:batch], ids, metas)}
                )
            except OSError:
                return
            if status != 200:
                return
            acked_rest.append(b)
            b += 1

    faiss_proxy.configure(api_url=live.url, api_key=key, timeout=30)
    index = faiss_proxy.create_index("rpc", dataset.d, "Flat")

    def rpc_stream() -> None:
        b = 0
        while not stop.is_set():
            try:
                index.add_with_ids(dataset.xb[:batch], np.arange(b * batch, (b + 1) * batch, dtype="int64"))
            except Exception:
                return
            acked_rpc.append(b)
            b += 1

    threads = [threading.Thread(target=rest_stream), threading.Thread(target=rpc_stream)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 20
    while (len(acked_rest) < 30 or len(acked_rpc) < 30) and time.monotonic() < deadline:
        time.sleep(0.05)
    workers = _children(live.proc.pid)
    live.proc.kill()
    live.proc.wait(10)
    stop.set()
    _wait_gone(workers)
    for t in threads:
        t.join(30)
    faiss_proxy.configure(api_url="", api_key="")
    assert len(acked_rest) >= 30 and len(acked_rpc) >= 30

    again = launch_cli_server(data_dir)
    try:
        rest = Rest(again.url, key)
        present = 0
        for b in sent_rest:
            status, body = rest.post(
                "/v1/index/rest/search", {"vector": dataset.xb[0].tolist(), "k": 50, "filter": {"batch": b}}
            )
            n = len(body["results"])
            assert n in (0, batch), f"batch {b} is half applied: {n} of {batch}"
            if b in acked_rest:
                assert n == batch, f"acknowledged batch {b} was lost"
            present += n
        assert rest.get("/v1/index/rest/ntotal")[1]["ntotal"] == present
        faiss_proxy.configure(api_url=again.url, api_key=key, timeout=60)
        rpc = faiss_proxy.open_index("rpc")
        assert rpc.ntotal >= len(acked_rpc) * batch
        assert rpc.ntotal % batch == 0
        for b in acked_rpc:
            np.testing.assert_array_equal(rpc.reconstruct(b * batch + 3), dataset.xb[3])
    finally:
        faiss_proxy.configure(api_url="", api_key="")
        again.proc.terminate()
        again.proc.wait(30)


def test_build_parameters(both: tuple[ModuleType, Rest, str]) -> None:
    fp, rest, _ = both
    by_class = fp.create_index("c", 8, "IndexHNSWFlat", params={"M": 8})
    hnsw = fp.downcast_index(by_class.index).hnsw
    assert (hnsw.efConstruction, hnsw.efSearch) == (80, 32)  # class names: defaults tuned for batched ingest
    by_factory = fp.create_index("f", 8, "HNSW8")
    hnsw = fp.downcast_index(by_factory.index).hnsw
    assert (hnsw.efConstruction, hnsw.efSearch) == (40, 16)  # factory strings: FAISS's own defaults
    tuned = fp.create_index("t", 8, "HNSW8", params={"efConstruction": 120, "efSearch": 50})
    assert fp.downcast_index(tuned.index).hnsw.efConstruction == 120
    ivf = fp.create_index("i", 8, "IVF4,Flat", params={"nprobe": 3})
    assert ivf.nprobe == 3


def test_named_index_info_over_rpc_lists_sizes(both: tuple[ModuleType, Rest, str]) -> None:
    fp, _, _ = both
    fp.create_index("a", 4, "IndexHNSWFlat", params={"M": 8})
    info: dict[str, Any] = fp.list_indexes()[0]
    assert info["factory"] == "HNSW8" and info["type"] == "IndexIDMap2" and info["size_bytes"] > 0


def test_a_change_that_cannot_be_logged_changes_nothing(tmp_path: Path, dataset: Dataset) -> None:
    """Disk full while logging: the caller gets an error and the index is reloaded
    from disk, so it holds exactly what was acknowledged."""
    import errno

    from faiss_proxy_server.errors import StorageError
    from faiss_proxy_server.named import NamedIndexStore

    store = NamedIndexStore(faiss, tmp_path, lambda *a: None)
    named = store.create("x", dataset.d)
    ids = np.arange(10, dtype="<i8")
    header = {"op": "upsert", "n": 10, "labels": [None] * 10, "meta": [None] * 10}
    named.write(header, ids.tobytes() + dataset.xb[:10].tobytes())

    def full(*args: Any) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    named.wal.append = full  # type: ignore[method-assign]
    header2 = {"op": "upsert", "n": 10, "labels": [None] * 10, "meta": [None] * 10}
    with pytest.raises(StorageError, match="No space left"):
        named.write(header2, (ids + 100).tobytes() + dataset.xb[10:20].tobytes())
    with pytest.raises(Exception, match="open it again"):
        named.info()
    again = store.open("x")
    assert again is not named and again.index.ntotal == 10 and sorted(again.registry.ids()) == list(range(10))
    store.close()


def test_searches_go_on_while_a_snapshot_is_written(tmp_path: Path, dataset: Dataset) -> None:
    """A snapshot serializes under the read lock: a search during it answers, a change
    waits for it, and the snapshot covers exactly what was logged before it."""
    from faiss_proxy_server.named import NamedIndexStore

    slow, serializing, release = threading.Event(), threading.Event(), threading.Event()

    class SlowSerialize(ModuleType):
        def __getattr__(self, name: str) -> Any:
            return getattr(faiss, name)

        @staticmethod
        def serialize_index(index: Any) -> Any:
            if slow.is_set():
                serializing.set()
                assert release.wait(30)
            return faiss.serialize_index(index)

    store = NamedIndexStore(SlowSerialize("faiss"), tmp_path, lambda *a: None)
    named = store.create("x", dataset.d)
    ids = np.arange(20, dtype="<i8")
    header = {"op": "upsert", "n": 20, "labels": [None] * 20, "meta": [None] * 20}
    named.write(header, ids.tobytes() + dataset.xb[:20].tobytes())

    slow.set()
    snap = threading.Thread(target=named.snapshot)
    snap.start()
    assert serializing.wait(30)
    with named.reading() as index:  # would block for good under a write lock
        _, labels = index.search(dataset.xq[:1], 5)
    assert (labels >= 0).all()

    changed = threading.Event()

    def change() -> None:
        more = {"op": "upsert", "n": 5, "labels": [None] * 5, "meta": [None] * 5}
        named.write(more, (ids[:5] + 100).tobytes() + dataset.xb[20:25].tobytes())
        changed.set()

    writer = threading.Thread(target=change)
    writer.start()
    assert not changed.wait(0.3), "a change went through while the snapshot was being written"
    release.set()
    snap.join(30)
    writer.join(30)
    assert changed.is_set()
    store.close()

    again = NamedIndexStore(faiss, tmp_path, lambda *a: None).open("x")
    assert again.index.ntotal == 25 and sorted(again.registry.ids()) == [*range(20), *range(100, 105)]


@pytest.mark.parametrize("failure", [MemoryError, RuntimeError])
def test_a_change_that_fails_halfway_leaves_what_was_acknowledged(
    tmp_path: Path, dataset: Dataset, failure: type[Exception]
) -> None:
    """An upsert that replaces vectors removes them first; if the add then fails (out of
    memory, a FAISS error), the in-memory index would have lost them: it is reloaded from
    disk instead, so it holds exactly what was acknowledged, and the error says so."""
    from faiss_proxy_server.named import NamedIndexStore

    store = NamedIndexStore(faiss, tmp_path, lambda *a: None)
    named = store.create("x", dataset.d)
    ids = np.arange(10, dtype="<i8")
    header = {"op": "upsert", "n": 10, "labels": [None] * 10, "meta": [None] * 10}
    named.write(header, ids.tobytes() + dataset.xb[:10].tobytes())

    class Failing:
        """The index, whose add fails (as under the memory limit)."""

        def __init__(self, index: Any) -> None:
            self._index = index

        def add_with_ids(self, *args: Any) -> None:
            raise failure("no memory for 5 vectors")

        def __getattr__(self, name: str) -> Any:
            return getattr(self._index, name)

    named.index = Failing(named.index)
    replace_half = {"op": "upsert", "n": 5, "labels": [None] * 5, "meta": [None] * 5}
    with pytest.raises(failure):
        named.write(replace_half, ids[:5].tobytes() + dataset.xb[20:25].tobytes())
    with pytest.raises(Exception, match="open it again"):
        named.info()
    again = store.open("x")
    assert again is not named and again.index.ntotal == 10 and sorted(again.registry.ids()) == list(range(10))
    np.testing.assert_array_equal(again.index.reconstruct_batch(ids), dataset.xb[:10])
    store.close()


def test_a_refused_change_keeps_the_loaded_index(tmp_path: Path, dataset: Dataset) -> None:
    """A change refused before anything was touched (a training set whose size is not a multiple
    of the dimension) is an error and nothing more: the loaded index stays."""
    from faiss_proxy_server.named import NamedIndexStore

    store = NamedIndexStore(faiss, tmp_path, lambda *a: None)
    named = store.create("x", dataset.d)
    with pytest.raises((RuntimeError, ValueError, AssertionError)):
        named.write({"op": "train", "n": 1}, b"\0" * 12)
    assert store.open("x") is named
    store.close()


def test_concurrent_adds_to_two_indexes_cannot_both_pass_the_vector_limit(tmp_path: Path, dataset: Dataset) -> None:
    """The limit counts all named indexes of the tenant: two adds to different indexes at the
    same moment, each within the limit alone, are not both accepted."""
    from faiss_proxy_server.errors import LimitExceeded
    from faiss_proxy_server.named import NamedIndexStore

    store = NamedIndexStore(faiss, tmp_path, lambda *a: None, max_vectors=100)
    indexes = [store.create(name, dataset.d) for name in ("a", "b")]
    for attempt in range(5):
        for named in indexes:
            named.write({"op": "reset"})
        barrier = threading.Barrier(2)
        outcomes: list[str] = []

        def slow_check() -> None:
            store.check_vectors(60)
            time.sleep(0.01)  # widen the window between the check and the change

        def add(named: Any, first: int, barrier: threading.Barrier = barrier, outcomes: list[str] = outcomes) -> None:
            ids = np.arange(first, first + 60, dtype="<i8")
            header = {"op": "upsert", "n": 60, "labels": [None] * 60, "meta": [None] * 60}
            barrier.wait()
            try:
                named.write(header, ids.tobytes() + dataset.xb[:60].tobytes(), check=slow_check)
                outcomes.append("ok")
            except LimitExceeded:
                outcomes.append("refused")

        threads = [threading.Thread(target=add, args=(named, 1000 * i)) for i, named in enumerate(indexes)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(outcomes) == ["ok", "refused"], (attempt, outcomes)
        assert sum(int(n.index.ntotal) for n in indexes) == 60
    store.close()


def test_read_only_key_over_rpc_reads_but_never_changes(server: LiveServer, dataset: Dataset) -> None:
    tenant, key = server.new_tenant()
    faiss_proxy.configure(api_url=server.url, api_key=key, timeout=60)
    index = faiss_proxy.create_index("shared", dataset.d, "IVF8,Flat")
    index.train(dataset.xt)
    index.add_with_ids(dataset.xb[:100], np.arange(100, dtype="int64"))
    _, ro_key = server.catalog.create_key(tenant, read_only=True)
    faiss_proxy.configure(api_url=server.url, api_key=ro_key, timeout=60)
    try:
        ro = faiss_proxy.open_index("shared")
        D, I = ro.search(dataset.xq[:2], 3)
        assert (I >= 0).all() and ro.nprobe == 1
        assert faiss_proxy.list_indexes()[0]["ntotal"] == 100
        for attempt in (
            lambda: ro.add_with_ids(dataset.xb[:1], np.array([7], dtype="int64")),
            lambda: ro.remove_ids(np.array([1], dtype="int64")),
            lambda: ro.reset(),
            lambda: setattr(ro, "nprobe", 4),
            lambda: faiss_proxy.create_index("new", 4),
            lambda: faiss_proxy.drop_index("shared"),
        ):
            with pytest.raises(PermissionError, match="read-only"):
                attempt()
        private = faiss_proxy.IndexFlatL2(4)  # the session's own objects are its own
        private.add(np.ones((2, 4), "float32"))
        assert ro.ntotal == 100 and ro.nprobe == 1
    finally:
        faiss_proxy.configure(api_url="", api_key="")


def test_rwlock_readers_share_and_a_writer_excludes() -> None:
    """Two readers hold the lock at once; a writer waits for both to leave and, while it
    waits, keeps new readers out (no starvation); after it, readers go on."""
    from faiss_proxy_server.named import RWLock

    lock = RWLock()
    lock.acquire_read()
    lock.acquire_read()  # a second reader does not wait
    order: list[str] = []
    writer_in = threading.Event()

    def writer() -> None:
        with lock.write():
            writer_in.set()
            order.append("writer")
            time.sleep(0.1)

    def late_reader() -> None:
        lock.acquire_read()
        order.append("reader")
        lock.release_read()

    w = threading.Thread(target=writer)
    w.start()
    time.sleep(0.1)
    r = threading.Thread(target=late_reader)
    r.start()
    time.sleep(0.1)
    assert not writer_in.is_set() and order == []  # two readers still hold it
    lock.release_read()
    assert not writer_in.wait(0.1)  # one reader still holds it
    lock.release_read()
    w.join(5)
    r.join(5)
    assert order == ["writer", "reader"]  # the late reader waited for the waiting writer

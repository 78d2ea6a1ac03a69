"""One OS process per tenant: crashes, memory limits and process globals stay inside it."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from faiss_proxy._client import Client

from .conftest import LiveServer, start_server


def _wait_for(predicate, timeout: float = 10.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def _pid_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # a zombie until the supervisor reaps it
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] == "Z"
    except FileNotFoundError:
        return True


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGSEGV, signal.SIGABRT])
def test_worker_crash_fails_only_its_tenant(server: LiveServer, sig: signal.Signals) -> None:
    name_a, key_a = server.new_tenant("crash")
    name_b, key_b = server.new_tenant("bystander")
    a, b = Client(server.url, key_a, timeout=30), Client(server.url, key_b, timeout=30)
    xb = np.random.RandomState(0).rand(500, 16).astype("float32")
    index_a = a.lookup("IndexFlatL2")(16)
    index_b = b.lookup("IndexFlatL2")(16)
    index_a.add(xb)
    index_b.add(xb)
    pid_a, pid_b = server.worker_pid(name_a), server.worker_pid(name_b)
    assert pid_a and pid_b and pid_a != pid_b

    os.kill(pid_a, sig)
    with pytest.raises(ConnectionError):
        for _ in range(100):  # the first call may race the kill
            index_a.search(xb[:1], 1)
            time.sleep(0.02)
    # the other tenant saw nothing
    for _ in range(20):
        assert index_b.search(xb[:2], 1)[1][:, 0].tolist() == [0, 1]
    assert server.worker_pid(name_b) == pid_b
    # the crashed tenant's next connection gets a fresh worker
    fresh = a.lookup("IndexFlatL2")(16)
    assert fresh.ntotal == 0
    new_pid = server.worker_pid(name_a)
    assert new_pid is not None and new_pid != pid_a
    with pytest.raises(ConnectionError):
        index_a.ntotal  # objects of the dead session stay dead  # noqa: B018
    a.close()
    b.close()


@pytest.fixture(scope="module")
def limited_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    live = start_server(Path(tmp_path_factory.mktemp("limited")), worker_memory_limit_mb=700, worker_idle_timeout=1.0)
    yield live
    live.stop()


def test_memory_limit_gives_memory_error_not_a_dead_server(limited_server: LiveServer) -> None:
    name, key = limited_server.new_tenant("mem")
    other_name, other_key = limited_server.new_tenant("memother")
    c = Client(limited_server.url, key, timeout=60)
    with pytest.raises(MemoryError):
        c.lookup("rand")(10**9)  # 4 GB numpy allocation
    quantizer = c.lookup("IndexFlatL2")(8)
    with pytest.raises(MemoryError):
        c.lookup("IndexIVFFlat")(quantizer, 8, 10**9)  # C++ std::bad_alloc
    pid = limited_server.worker_pid(name)
    assert c.lookup("IndexFlatL2")(8).ntotal == 0  # same worker, still serving
    assert limited_server.worker_pid(name) == pid
    # another tenant, whose session was open all along, is untouched
    other = Client(limited_server.url, other_key, timeout=60)
    kept = other.lookup("IndexFlatL2")(8)
    kept.add(np.ones((5, 8), dtype="float32"))
    with pytest.raises(MemoryError):
        c.lookup("rand")(10**9)
    assert kept.ntotal == 5 and limited_server.worker_pid(other_name) not in (None, pid)
    other.close()
    c.close()


def test_idle_worker_is_stopped_and_restarted_on_demand(limited_server: LiveServer) -> None:
    name, key = limited_server.new_tenant("idle")
    c = Client(limited_server.url, key, timeout=30)
    assert c.lookup("IndexFlatL2")(8).ntotal == 0
    pid = limited_server.worker_pid(name)
    assert pid is not None
    time.sleep(1.5)
    assert limited_server.worker_pid(name) == pid, "a worker with an open session is not idle"
    c.close()
    assert _wait_for(lambda: limited_server.worker_pid(name) is None, 15)
    assert _wait_for(lambda: _pid_gone(pid), 5)
    c2 = Client(limited_server.url, key, timeout=30)
    assert c2.lookup("IndexFlatL2")(8).ntotal == 0
    assert limited_server.worker_pid(name) not in (None, pid)
    c2.close()


def test_omp_settings_touch_only_the_callers_worker(server: LiveServer) -> None:
    name_a, key_a = server.new_tenant("omp")
    name_b, key_b = server.new_tenant("omp")
    a, b = Client(server.url, key_a), Client(server.url, key_b)
    before = b.lookup("omp_get_max_threads")()
    a.lookup("omp_set_num_threads")(1)
    assert a.lookup("omp_get_max_threads")() == 1
    assert b.lookup("omp_get_max_threads")() == before == (os.cpu_count() or 1)
    a.close()
    b.close()


def test_tenants_get_separate_processes(server: LiveServer) -> None:
    pids = set()
    clients = []
    for _ in range(3):
        name, key = server.new_tenant("proc")
        c = Client(server.url, key)
        c.lookup("IndexFlatL2")(4)
        pids.add(server.worker_pid(name))
        clients.append(c)
    assert len(pids) == 3 and os.getpid() not in pids
    for c in clients:
        c.close()


def test_worker_that_cannot_start_is_a_clear_503(tmp_path: Path) -> None:
    # 64 MiB of data segment is not enough to import faiss: the worker dies at start.
    live = start_server(tmp_path, worker_memory_limit_mb=64, worker_start_timeout=20.0)
    try:
        name, key = live.new_tenant("nostart")
        c = Client(live.url, key, timeout=30)
        with pytest.raises(ConnectionError, match=r"HTTP 503.*failed to start"):
            c.lookup("IndexFlatL2")
        assert live.worker_pid(name) is None
    finally:
        live.stop()


def test_a_new_worker_waits_for_the_stopping_one(server: LiveServer) -> None:
    """A worker told to stop finishes its in-flight calls and snapshots before it exits; a
    request meanwhile starts the tenant's next worker only once the old one is gone, so two
    processes never work on one tenant's files at once."""
    import threading

    from .conftest import Rest

    name, key = server.new_tenant("overlap")
    rest = Rest(server.url, key)
    assert rest.post("/v1/index", {"name": "docs", "dimension": 4})[0] == 201
    c = Client(server.url, key, timeout=120)
    x = np.random.RandomState(0).rand(60000, 64).astype("float32")
    kmeans = c.lookup("Kmeans")(64, 512, niter=25, seed=1)
    old = server.worker_pid(name)
    assert old is not None
    busy = threading.Thread(target=lambda: _ignore_errors(lambda: kmeans.train(x)))
    busy.start()
    time.sleep(0.5)  # the training call is running in the worker
    started = time.monotonic()
    server.run(lambda: server.supervisor.request_stop(name, "test"))
    assert rest.get("/v1/index")[0] == 200  # served by the next worker ...
    assert _pid_gone(old), "the new worker served while the old one still ran"  # ... after the old one exited
    assert server.worker_pid(name) not in (None, old)
    assert time.monotonic() - started > 0.2  # it did wait for the call to finish
    busy.join(120)
    c.close()


def _ignore_errors(fn) -> None:  # type: ignore[no-untyped-def]
    try:
        fn()
    except Exception:
        pass

"""Faults: a tenant's worker SIGKILLed under load, a client that vanishes mid-call, a data
dir that cannot take writes (full, read-only).

(The server SIGKILLed during ingest is ``test_named.py::test_sigkill_server_during_acknowledged_adds_loses_nothing``.)
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from faiss_proxy._client import Client

from .conftest import LiveServer, Rest, start_server, vector_items

D = 16
INITIAL = 300  # vectors in each tenant's named index before the load starts


# ----------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------
def wait_for(condition: Callable[[], bool], timeout: float, what: str, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


def kill_worker(live: LiveServer, tenant: str) -> int:
    """SIGKILL the tenant's worker and wait until the gateway has noticed; return its pid."""
    pid = live.worker_pid(tenant)
    assert pid is not None, f"tenant {tenant} has no worker"
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: live.worker_pid(tenant) != pid, 30, "the gateway to notice the dead worker")
    return pid


def open_named(live: LiveServer, key: str, name: str = "docs", timeout: float = 30.0) -> tuple[Client, Any]:
    """A new RPC session (the load clients' own, not ``faiss_proxy.configure``) and the named index."""
    client = Client(live.url, key, timeout=timeout, spin_us=0)
    try:
        return client, client.connection().named("open", (name,), {})
    except BaseException:
        client.close()
        raise


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for {pid}")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def sessions(live: LiveServer, tenant: str) -> int | None:
    def count() -> int | None:
        worker = live.supervisor.workers.get(tenant)
        return None if worker is None else int(worker.sessions)

    result: int | None = live.run(count)
    return result


def metric(live: LiveServer, name: str, tenant: str) -> float | None:
    with urllib.request.urlopen(live.url + "/v1/metrics", timeout=30) as resp:
        text = resp.read().decode()
    m = re.search(rf'^{name}{{tenant="{re.escape(tenant)}"}} (\S+)$', text, re.M)
    return float(m.group(1)) if m else None


def error_shape(body: Any) -> tuple[str, str]:
    """The one REST error shape: ``{"error": {"code": ..., "message": ...}}``."""
    assert isinstance(body, dict) and set(body) == {"error"}, body
    assert set(body["error"]) == {"code", "message"} and body["error"]["message"], body
    return body["error"]["code"], body["error"]["message"]


def check_contents(live: LiveServer, key: str, acked: list[tuple[np.ndarray, np.ndarray]], low: int, high: int) -> int:
    """A fresh session sees ``low <= ntotal <= high`` and every acknowledged vector, exactly."""
    client, index = open_named(live, key)
    try:
        ntotal = int(index.ntotal)
        assert low <= ntotal <= high, f"ntotal {ntotal} not in [{low}, {high}]"
        if acked:
            ids = np.concatenate([i for i, _ in acked])
            x = np.concatenate([v for _, v in acked])
            np.testing.assert_array_equal(index.reconstruct_batch(ids), x)  # raises if an id is missing
        return ntotal
    finally:
        client.close()


def new_index(live: LiveServer, rng: np.random.RandomState) -> tuple[str, str, Rest]:
    tenant, key = live.new_tenant("fault")
    rest = Rest(live.url, key)
    assert rest.post("/v1/index", {"name": "docs", "dimension": D, "index_type": "IndexFlatL2"})[0] == 201
    x = rng.rand(INITIAL, D).astype("float32")
    status, body = rest.post("/v1/index/docs/vectors", {"vectors": vector_items(x, [str(i) for i in range(INITIAL)])})
    assert status == 200 and body["ntotal"] == INITIAL, body
    return tenant, key, rest


# ----------------------------------------------------------------------------------
# SIGKILL a tenant's worker under load
# ----------------------------------------------------------------------------------
@dataclass
class Traffic:
    """What the clients of one tenant did."""

    tenant: str
    key: str
    acked: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)  # (ids, vectors) answered OK
    uncertain: int = 0  # vectors of adds that failed: applied or not, never half
    ok: dict[str, int] = field(default_factory=lambda: {"rpc": 0, "rest": 0})
    ok_after_kill: dict[str, int] = field(default_factory=lambda: {"rpc": 0, "rest": 0})
    errors: list[tuple[str, Any]] = field(default_factory=list)  # (api, exception or (status, body))
    slowest: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def done(self, api: str, killed: bool, seconds: float) -> None:
        with self.lock:
            self.ok[api] += 1
            if killed:
                self.ok_after_kill[api] += 1
            self.slowest = max(self.slowest, seconds)

    def failed(self, api: str, error: Any, vectors: int, seconds: float) -> None:
        with self.lock:
            self.errors.append((api, error))
            self.uncertain += vectors
            self.slowest = max(self.slowest, seconds)


def rpc_client(live: LiveServer, t: Traffic, seed: int, stop: threading.Event, killed: threading.Event) -> None:
    rng = np.random.RandomState(seed)
    next_id = 1_000_000 * seed
    query = rng.rand(1, D).astype("float32")
    client: Client | None = None
    index: Any = None
    while not stop.is_set():
        if index is None:  # (re)connect: a new session, on a new worker if the old one died
            try:
                client, index = open_named(live, t.key)
            except Exception as exc:
                t.failed("rpc", exc, 0, 0.0)
                time.sleep(0.1)
                continue
        add = rng.rand() < 0.2
        if add:
            ids = np.arange(next_id, next_id + 5, dtype="int64")
            x = rng.rand(5, D).astype("float32")
            next_id += 5
        was_killed = killed.is_set()
        started = time.monotonic()
        try:
            if add:
                index.add_with_ids(x, ids)
                t.acked.append((ids, x))
            else:
                _, I = index.search(query, 5)
                assert (I >= 0).all(), I
        except Exception as exc:
            t.failed("rpc", exc, 5 if add else 0, time.monotonic() - started)
            if client is not None:
                client.close()
            client = index = None
            continue
        t.done("rpc", was_killed, time.monotonic() - started)
    if client is not None:
        client.close()


def rest_client(live: LiveServer, t: Traffic, seed: int, stop: threading.Event, killed: threading.Event) -> None:
    rng = np.random.RandomState(seed)
    rest = Rest(live.url, t.key)
    next_id = 1_000_000 * seed
    query = rng.rand(D).astype("float32").tolist()
    while not stop.is_set():
        add = rng.rand() < 0.2
        was_killed = killed.is_set()
        started = time.monotonic()
        try:
            if add:
                ids = np.arange(next_id, next_id + 5, dtype="int64")
                x = rng.rand(5, D).astype("float32")
                next_id += 5
                status, body = rest.post("/v1/index/docs/vectors", {"vectors": vector_items(x, [str(i) for i in ids])})
            else:
                status, body = rest.post("/v1/index/docs/search", {"vector": query, "k": 5})
        except Exception as exc:  # below HTTP: the gateway itself must never fail
            t.failed("rest", exc, 5 if add else 0, time.monotonic() - started)
            continue
        seconds = time.monotonic() - started
        if status == 200:
            if add:
                t.acked.append((ids, x))
            t.done("rest", was_killed, seconds)
        else:
            t.failed("rest", (status, body), 5 if add else 0, seconds)


def test_sigkill_one_tenant_worker_under_load(tmp_path: Path) -> None:
    """Three tenants busy with RPC and REST searches and adds; one tenant's worker is
    SIGKILLed.  The others see no error at all; the victim's clients get
    ConnectionError / 503 (quickly, no hang) and carry on with a new session on a new
    worker; every add that was acknowledged, on any tenant, is there afterwards."""
    live = start_server(tmp_path, worker_idle_timeout=600.0)
    stop, killed = threading.Event(), threading.Event()
    threads: list[threading.Thread] = []
    try:
        rng = np.random.RandomState(7)
        traffic = []
        for _ in range(3):
            tenant, key, _rest = new_index(live, rng)
            traffic.append(Traffic(tenant, key))
        victim, others = traffic[0], traffic[1:]
        for n, t in enumerate(traffic):
            for fn in (rpc_client, rest_client):
                seed = 10 * (n + 1) + len(threads) % 2 + 1
                th = threading.Thread(target=fn, args=(live, t, seed, stop, killed), daemon=True)
                threads.append(th)
                th.start()
        wait_for(lambda: all(min(t.ok.values()) >= 30 for t in traffic), 90, "every client to get going")

        old_pid = kill_worker(live, victim.tenant)
        killed.set()
        kill_time = time.monotonic()
        wait_for(
            lambda: time.monotonic() - kill_time > 3 and all(min(t.ok_after_kill.values()) >= 30 for t in traffic),
            90,
            f"clients to go on after the kill: {[(t.tenant, t.ok_after_kill, t.errors[-1:]) for t in traffic]}",
        )
        stop.set()
        for th in threads:
            th.join(60)
            assert not th.is_alive(), "a client thread hung"

        for t in traffic:
            kinds = sorted({f"{api}:{type(e).__name__ if not isinstance(e, tuple) else e[0]}" for api, e in t.errors})
            print(f"{t.tenant}: ok {t.ok}, after the kill {t.ok_after_kill}, errors {len(t.errors)} {kinds}")
        # other tenants: not one error
        for t in others:
            assert t.errors == [], f"{t.tenant} saw errors: {t.errors[:5]}"
            assert t.uncertain == 0
        # the victim: clear errors only, quickly
        rpc_errors = [e for api, e in victim.errors if api == "rpc"]
        assert rpc_errors, "the victim's RPC session outlived its worker?"
        for exc in rpc_errors:
            assert isinstance(exc, ConnectionError), f"not a ConnectionError: {type(exc).__name__}: {exc}"
        for api, err in victim.errors:
            if api == "rest":
                assert isinstance(err, tuple), f"REST request failed below HTTP: {err!r}"
                status, body = err
                assert status == 503 and error_shape(body)[0] == "unavailable", err
        for t in traffic:
            assert t.slowest < 20, f"{t.tenant}: a call took {t.slowest:.1f} s"
        # the victim recovered on a fresh worker
        new_pid = live.worker_pid(victim.tenant)
        assert new_pid is not None and new_pid != old_pid
        # nothing acknowledged was lost, anywhere
        for t in traffic:
            acked = sum(len(ids) for ids, _ in t.acked)
            ntotal = check_contents(live, t.key, t.acked, INITIAL + acked, INITIAL + acked + t.uncertain)
            status, body = Rest(live.url, t.key).get("/v1/index/docs/ntotal")
            assert (status, body) == (200, {"ntotal": ntotal})
    finally:
        stop.set()
        for th in threads:
            th.join(30)
        live.stop()


# ----------------------------------------------------------------------------------
# a client that vanishes mid-call
# ----------------------------------------------------------------------------------
VANISHING_CLIENT = r"""
import sys
import numpy as np
import faiss_proxy as faiss

faiss.configure(api_url=sys.argv[1], api_key=sys.argv[2], timeout=600)
rs = np.random.RandomState(0)
index = faiss.IndexFlatL2(64)
# 300k x 64 float32 = 77 MB: larger than glibc's biggest mmap threshold (32 MiB), so
# freeing the index gives the memory back to the system.
index.add(rs.rand(300_000, 64).astype("float32"))
xq = rs.rand(int(sys.argv[3]), 64).astype("float32")
print("searching", flush=True)
index.search(xq, 10)  # a few seconds on 2 cores; the client is SIGKILLed meanwhile
print("finished", flush=True)
"""


def test_client_vanishing_mid_call_frees_its_session(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    live = start_server(tmp_path, worker_idle_timeout=600.0)
    proc: subprocess.Popen[str] | None = None
    try:
        rng = np.random.RandomState(3)
        tenant, key, rest = new_index(live, rng)
        other, named = open_named(live, key, timeout=120)  # another client of the tenant, connected throughout
        private = other.lookup("IndexFlatL2")(D)
        private.add(rng.rand(100, D).astype("float32"))
        worker = live.worker_pid(tenant)
        assert worker is not None
        rss_before = rss_mb(worker)
        assert sessions(live, tenant) == 1

        proc = subprocess.Popen(
            # about 40 GFLOP per 2 cores: seconds of work, whatever the machine
            [sys.executable, "-c", VANISHING_CLIENT, live.url, key, str(500 * (os.cpu_count() or 2))],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.strip() == "searching", line
        # mid-call: the worker is burning CPU on the search
        cpu0 = cpu_seconds(worker)
        wait_for(lambda: cpu_seconds(worker) - cpu0 > 0.3, 60, "the worker to be busy with the search")
        assert sessions(live, tenant) == 2
        rss_busy = rss_mb(worker)
        assert rss_busy > rss_before + 60, (rss_before, rss_busy)  # the 77 MB index lives in the worker
        proc.kill()
        proc.wait(30)
        assert proc.stdout.read() == "", "the search finished before the client was killed"
        assert private.ntotal == 100  # served while the worker still computes the orphaned search

        # the worker finishes the call, finds nobody there, closes the session and frees its objects
        wait_for(lambda: sessions(live, tenant) == 1, 120, "the vanished client's session to close")
        assert live.worker_pid(tenant) == worker, "the worker should survive a vanished client"
        wait_for(lambda: metric(live, "faiss_proxy_rpc_sessions", tenant) == 1.0, 30, "rpc_sessions metric == 1")
        # malloc may keep some memory; the 77 MB index (and the 77 MB it arrived in) must be gone
        wait_for(lambda: rss_mb(worker) < rss_busy - 50, 30, f"worker RSS to drop from {rss_busy:.0f} MiB")

        # the tenant's other client never noticed
        assert private.ntotal == 100
        _, I = named.search(rng.rand(1, D).astype("float32"), 3)
        assert (I >= 0).all()
        assert rest.get("/v1/index/docs/ntotal") == (200, {"ntotal": INITIAL})
        other.close()
        wait_for(lambda: sessions(live, tenant) == 0, 30, "the last session to close")
        wait_for(lambda: metric(live, "faiss_proxy_rpc_sessions", tenant) == 0.0, 30, "rpc_sessions metric == 0")

        # the worker logged how each session ended (its stderr is this process's)
        logged = re.findall(rf"rpc session tenant={re.escape(tenant)} .*outcome=(\S+)", capfd.readouterr().err)
        if logged:  # visible unless the log went elsewhere
            assert len(logged) >= 2, logged
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(30)
        live.stop()


# ----------------------------------------------------------------------------------
# a data dir that cannot take writes
# ----------------------------------------------------------------------------------
def _unmount(target: Path) -> None:
    if subprocess.run(["umount", str(target)], capture_output=True).returncode != 0:
        # still in use (this process's catalog connection): detach it now, free it when closed
        subprocess.run(["umount", "-l", str(target)], capture_output=True)


@contextlib.contextmanager
def mounted(target: Path, *args: str) -> Iterator[None]:
    """``mount ARGS TARGET`` for the duration; skip the test where mounting is not permitted."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("needs root and mount(8): as root, chmod does not stop writes, so the test mounts a file system")
    target.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", *args, str(target)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"mount {' '.join(args)} is not permitted here: {done.stderr.strip()}")
    try:
        yield
    finally:
        _unmount(target)


def fill(directory: Path) -> Path:
    """Fill the file system of ``directory`` until not one more byte fits."""
    filler = directory / "filler"
    with open(filler, "wb", buffering=0) as fh:
        for chunk in (1 << 20, 4096, 1):
            with contextlib.suppress(OSError):
                while True:
                    fh.write(b"\0" * chunk)
    return filler


def test_full_data_dir_refuses_changes_and_keeps_what_was_acknowledged(tmp_path: Path) -> None:
    """The data dir on a small tmpfs, filled up: an upsert gets 507 ``storage_error``, an
    RPC add OSError, /v1/ready says not ready, searches still work; after freeing space
    and a worker crash, the index holds exactly the acknowledged vectors."""
    mnt = tmp_path / "mnt"
    with mounted(mnt, "-t", "tmpfs", "-o", "size=32m", "tmpfs"):
        live = start_server(mnt / "data", worker_idle_timeout=600.0)
        client = None
        try:
            rng = np.random.RandomState(5)
            tenant, key, rest = new_index(live, rng)
            client, index = open_named(live, key)
            x = rng.rand(100, D).astype("float32")
            index.add_with_ids(x, np.arange(1000, 1100, dtype="int64"))
            assert rest.get("/v1/ready")[0] == 200
            # a request right before filling: the key's last-used time is written now, not
            # while the disk is full (see test_full_data_dir_keeps_authenticating)
            assert rest.get("/v1/index/docs/ntotal") == (200, {"ntotal": INITIAL + 100})

            filler = fill(mnt)
            with pytest.raises(OSError) as full, open(mnt / "probe", "wb", buffering=0) as fh:
                fh.write(b"x" * 4096)
            assert full.value.errno == errno.ENOSPC

            # REST: 507 storage_error, in the one error shape (12.8 KB of log record: more than a page)
            refused = rng.rand(200, D).astype("float32")
            status, body = rest.post(
                "/v1/index/docs/vectors", {"vectors": vector_items(refused[:100], [f"r{i}" for i in range(100)])}
            )
            code, message = error_shape(body)
            assert (status, code) == (507, "storage_error"), body
            assert "No space left" in message and "nothing was changed" in message
            # RPC: the index was reloaded from disk; open it again, the add gets OSError
            with pytest.raises(KeyError, match="open it again"):
                index.add_with_ids(refused[100:], np.arange(2000, 2100, dtype="int64"))
            index = client.connection().named("open", ("docs",), {})
            with pytest.raises(OSError, match="could not be made durable"):
                index.add_with_ids(refused[100:], np.arange(2000, 2100, dtype="int64"))
            # readiness says why; liveness and reads go on
            status, body = rest.get("/v1/ready")
            assert status == 503 and body["status"] == "not ready", body
            assert body["checks"]["data_dir"].startswith("not writable"), body
            assert rest.get("/v1/health")[0] == 200
            status, body = rest.post("/v1/index/docs/search", {"vector": x[0].tolist(), "k": 1})
            assert status == 200 and body["results"][0]["id"] == "1000", body
            assert rest.get("/v1/index/docs/ntotal") == (200, {"ntotal": INITIAL + 100})

            # space again: ready; a crash and a replay of the log keep exactly what was acknowledged
            filler.unlink()
            wait_for(lambda: rest.get("/v1/ready")[0] == 200, 30, "/v1/ready after freeing space")
            client.close()
            client = None
            kill_worker(live, tenant)
            assert rest.get("/v1/index/docs/ntotal") == (200, {"ntotal": INITIAL + 100})
            assert rest.get("/v1/index/docs/vectors/r0")[0] == 404
            assert rest.get("/v1/index/docs/vectors/2000")[0] == 404
            check_contents(live, key, [(np.arange(1000, 1100, dtype="int64"), x)], INITIAL + 100, INITIAL + 100)
            more = rng.rand(10, D).astype("float32")
            status, body = rest.post(
                "/v1/index/docs/vectors", {"vectors": vector_items(more, [f"m{i}" for i in range(10)])}
            )
            assert (status, body["ntotal"]) == (200, INITIAL + 110), body
        finally:
            if client is not None:
                client.close()
            live.stop()


def test_full_data_dir_keeps_authenticating(tmp_path: Path) -> None:
    """On a full data dir a key whose last-used time is due (30 s after the last write)
    must still authenticate: reads go on, changes get 507."""
    mnt = tmp_path / "mnt"
    with mounted(mnt, "-t", "tmpfs", "-o", "size=32m", "tmpfs"):
        live = start_server(mnt / "data", worker_idle_timeout=600.0)
        try:
            _tenant, _key, rest = new_index(live, np.random.RandomState(6))
            filler = fill(mnt)
            try:
                live.catalog._last_used.clear()  # as if the key's last use were over 30 s ago
                status, body = rest.get("/v1/index/docs/ntotal")
                assert (status, body) == (200, {"ntotal": INITIAL}), body
            finally:
                filler.unlink()
        finally:
            live.stop()


def test_read_only_data_dir_refuses_changes_and_keeps_what_was_acknowledged(tmp_path: Path) -> None:
    """The data dir remounted read-only (a read-only bind mount over it): /v1/ready says
    not ready, changes fail with an error in the one error shape, nothing is corrupted:
    read-write again, the index holds exactly the acknowledged vectors."""
    data = tmp_path / "data"
    live = start_server(data, worker_idle_timeout=600.0)
    try:
        rng = np.random.RandomState(9)
        tenant, key, rest = new_index(live, rng)
        client, index = open_named(live, key)
        x = rng.rand(50, D).astype("float32")
        index.add_with_ids(x, np.arange(1000, 1050, dtype="int64"))
        client.close()

        with mounted(data, "--bind", str(data)):
            done = subprocess.run(["mount", "-o", "remount,bind,ro", str(data)], capture_output=True, text=True)
            if done.returncode != 0:
                pytest.skip(f"a read-only bind remount is not permitted here: {done.stderr.strip()}")
            with pytest.raises(OSError) as ro, open(data / "probe", "wb"):
                pass
            assert ro.value.errno == errno.EROFS
            # files the running worker has open stay writable through their descriptors:
            # restart it so that it opens the index again, read-only
            kill_worker(live, tenant)
            status, body = rest.get("/v1/ready")
            assert status == 503 and body["checks"]["data_dir"].startswith("not writable"), body
            assert rest.get("/v1/health")[0] == 200
            refused = rng.rand(10, D).astype("float32")
            upsert_status, body = rest.post(
                "/v1/index/docs/vectors", {"vectors": vector_items(refused, [f"r{i}" for i in range(10)])}
            )
            assert upsert_status >= 500, body  # never acknowledged
            upsert_code, _ = error_shape(body)
            client = Client(live.url, key, timeout=30, spin_us=0)
            try:
                with pytest.raises(OSError):  # the index cannot be opened for logging
                    client.connection().named("open", ("docs",), {}).add_with_ids(
                        refused, np.arange(2000, 2010, dtype="int64")
                    )
            finally:
                client.close()

        wait_for(lambda: rest.get("/v1/ready")[0] == 200, 30, "/v1/ready once writable again")
        kill_worker(live, tenant)
        assert rest.get("/v1/index/docs/ntotal") == (200, {"ntotal": INITIAL + 50})
        assert rest.get("/v1/index/docs/vectors/r0")[0] == 404
        check_contents(live, key, [(np.arange(1000, 1050, dtype="int64"), x)], INITIAL + 50, INITIAL + 50)
        status, body = rest.post(
            "/v1/index/docs/vectors", {"vectors": vector_items(refused, [f"r{i}" for i in range(10)])}
        )
        assert (status, body["ntotal"]) == (200, INITIAL + 60), body
    finally:
        live.stop()
    assert (upsert_status, upsert_code) == (507, "storage_error")


# ----------------------------------------------------------------------------------
# keep-alive REST connections (served by the worker) through suspension, revocation, kills
# ----------------------------------------------------------------------------------
def test_keepalive_rest_clients_through_suspension_revocation_and_kills(tmp_path: Path) -> None:
    """Six keep-alive REST clients, most of whose requests the worker serves, while the
    tenant is suspended and resumed, a key is revoked and the worker is SIGKILLed twice.
    Every answer is an expected status; a connection closes only when an answer said
    so or right after a kill; nothing acknowledged is lost; no client hangs."""
    from .test_rest_direct import Conn

    live = start_server(tmp_path)
    stop = threading.Event()
    kills: list[float] = []
    lock = threading.Lock()
    statuses: dict[Any, int] = {}
    unexpected: list[Any] = []
    acked: set[str] = set()
    uncertain: set[str] = set()
    try:
        tenant, _ = live.new_tenant()
        keys = [live.catalog.create_key(tenant) for _ in range(3)]
        first = Conn(live.url, keys[0][1])
        assert first.call("POST", "/v1/index", {"name": "a", "dimension": 4})[0] == 201
        first.close()

        def client(n: int) -> None:
            conn = Conn(live.url, keys[n % 3][1])
            i = 0
            while not stop.is_set():
                i += 1
                ident = f"{n}-{i}"
                add = i % 4 == 0
                try:
                    if add:
                        body = {"vectors": [{"id": ident, "values": [1.0, 2.0, 3.0, float(i)]}]}
                        status, reply, headers = conn.call("POST", "/v1/index/a/vectors", body)
                    else:
                        status, reply, headers = conn.call(
                            "POST", "/v1/index/a/search", {"vector": [1, 2, 3, 4], "k": 3}
                        )
                except OSError as exc:  # ConnectionError included
                    with lock:
                        recent = any(time.monotonic() - k < 3.0 for k in kills)
                        statuses["dropped"] = statuses.get("dropped", 0) + 1
                        if add:
                            uncertain.add(ident)
                        if not recent:
                            unexpected.append(f"connection failed with no kill nearby: {exc!r}")
                    conn.close()
                    conn = Conn(live.url, keys[n % 3][1])
                    continue
                with lock:
                    statuses[status] = statuses.get(status, 0) + 1
                    if status not in (200, 401, 403, 503):
                        unexpected.append((status, reply))
                    if add and status == 200:
                        acked.add(ident)
                    elif add and status == 503:  # the worker died during the request: applied or not
                        uncertain.add(ident)
                if headers.get("connection") == "close":
                    conn.close()
                    time.sleep(0.02)
                    conn = Conn(live.url, keys[n % 3][1])
            conn.close()

        threads = [threading.Thread(target=client, args=(n,), daemon=True) for n in range(6)]
        for th in threads:
            th.start()
        wait_for(lambda: statuses.get(200, 0) > 200, 30, "clients to get going")
        live.catalog.set_tenant_status(tenant, "suspended")  # the access watcher stops the worker
        time.sleep(1.5)
        live.catalog.set_tenant_status(tenant, "active")
        time.sleep(1.0)
        live.catalog.revoke_key(keys[1][0].key_id)
        for _ in range(2):
            time.sleep(1.0)
            wait_for(lambda: live.worker_pid(tenant) is not None, 30, "a worker")
            with lock:
                kills.append(time.monotonic())
            kill_worker(live, tenant)
        time.sleep(1.5)
        stop.set()
        for th in threads:
            th.join(60)
            assert not th.is_alive(), "a client hung"
        assert unexpected == [], unexpected[:5]
        assert statuses.get(403, 0) > 0 and statuses.get(401, 0) > 0 and statuses[200] > 500, statuses
        assert live.run(lambda: live.supervisor.rest_handoffs) > 0
        rest = Rest(live.url, keys[0][1])
        status, body = rest.get("/v1/index/a/ntotal")
        assert status == 200 and len(acked) <= body["ntotal"] <= len(acked) + len(uncertain), (body, len(acked))
        for ident in sorted(acked)[:: max(1, len(acked) // 40)]:
            assert rest.get(f"/v1/index/a/vectors/{ident}")[0] == 200, ident
    finally:
        stop.set()
        live.stop()

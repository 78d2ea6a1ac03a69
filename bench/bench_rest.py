"""REST facade benchmark: named indexes over HTTP, against the RPC client and local FAISS.

What is measured, for a named ``IndexFlatL2`` and a named ``HNSW32`` index (d=128 float32,
nb=100k clustered vectors as in the tests' ``make_dataset``; queries drawn from the same
distribution, not from the base set; metadata ``{"bucket": i % 100}`` on vector ``i``):

* **ingest** (vectors/s): ``POST /v1/index/NAME/vectors`` with 5000 vectors per request,
  each as ``values_b64`` with its metadata.  Bodies are encoded before the clock starts.
* **single-query search** (k=10): p50/p99 of ``POST .../search`` with one ``vector``
  (JSON numbers, metadata included in the hits), recall@10 against exact ground truth
  (local ``IndexFlatL2``).  For HNSW, at the default ``efSearch`` and with
  ``params: {"efSearch": 32 | 64}`` per request; the HNSW target is read at the smallest
  efSearch whose recall@10 is >= 0.9.
* **8-thread QPS**: 8 client threads, each with its own keep-alive connection, for a few
  seconds (the HNSW run uses the efSearch chosen above).
* **filtered search**: ``filter: {"bucket": b}`` (1% of the vectors match) p50 and recall@10
  against exact ground truth over the matching subset.
* **wire client**: the single-query p50/p99 and the 8-thread QPS at the chosen efSearch again,
  through :class:`Wire`, a minimal keep-alive HTTP/1.1 client (one ``sendall``, the answer read
  by ``Content-Length``) instead of ``http.client``, whose own Python costs ~0.3 ms of CPU per
  request here.  These rows are the server's latency as a compiled client (the non-Python
  callers the facade is for) sees it; the targets are judged on the ``http.client`` rows.
* **worker RSS**: VmRSS of the tenant's worker process after ingest (each index type gets
  its own tenant, so each worker holds one index).
* **gateway/worker breakdown**: p50 of ``GET /v1/health`` (gateway only, no key) and
  ``GET .../ntotal`` (gateway + key check + one worker round trip, no FAISS work).

For comparison, the same queries through the Python RPC client on the same named index
(``faiss_proxy.open_index(name).search``: p50 and 8-thread QPS) and through local FAISS with
one OpenMP thread on a copy of the server's index (fetched with ``faiss_proxy.write_index``,
so the HNSW graph is the same).  The script starts its own server (``python -m
faiss_proxy_server serve --log-level warning`` on a free loopback port) in a temporary
data directory, with one tenant and key per index type, and stops it (SIGTERM) at the end.

    python bench/bench_rest.py            # full run: nb=100k, a few minutes
    python bench/bench_rest.py --quick    # nb=10k, fewer queries, shorter QPS runs
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import http.client
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import faiss
import numpy as np

import faiss_proxy

sys.path.insert(0, str(Path(__file__).resolve().parent))
from peers import PEERS

K = 10
SEED = 1234
N_CENTERS = 50
INGEST_BATCH = 5000  # default vectors per upsert request (--ingest-batch)
QPS_THREADS = 8
EF_LEVELS = (32, 64, 128)

INGEST_MIN_VPS = 20_000.0  # Flat
HNSW_P50_MAX_MS = 1.0  # at recall@10 >= HNSW_MIN_RECALL
HNSW_MIN_RECALL = 0.9
HNSW_MIN_QPS = 1500.0
FILTER_P50_MAX_MS = 5.0  # and recall 1.0

SERVE = (sys.executable, "-m", "faiss_proxy_server", "serve")


# --------------------------------------------------------------------------------------
# settings and data
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Plan:
    n: int
    d: int
    queries: int
    warmup: int
    filter_queries: int
    qps_seconds: float
    probes: int  # requests for the health/ntotal breakdown
    ingest_batch: int = INGEST_BATCH


@dataclass(frozen=True)
class Dataset:
    xb: np.ndarray
    xq: np.ndarray
    gt: np.ndarray  # exact top-K ids of xq in xb
    fgt: np.ndarray  # exact top-K ids of xq among ids with bucket == i % 100


def make_dataset(n: int, d: int, nq: int) -> Dataset:
    """Clustered data as ``tests.conftest.make_dataset`` (50 centers, sigma 0.3); exact ground truth."""
    rs = np.random.RandomState(SEED)
    centers = rs.rand(N_CENTERS, d).astype("float32") * 4

    def draw(m: int) -> np.ndarray:
        pts = centers[rs.randint(0, N_CENTERS, m)] + rs.randn(m, d).astype("float32") * 0.3
        return np.ascontiguousarray(pts, dtype="float32")

    xb, xq = draw(n), draw(nq)
    flat = faiss.IndexFlatL2(d)
    flat.add(xb)
    _, gt = flat.search(xq, K)
    fgt = np.full((nq, K), -1, dtype=np.int64)
    for b in range(100):
        rows = np.arange(nq)[np.arange(nq) % 100 == b]
        if not len(rows):
            continue
        ids = np.arange(b, n, 100)
        _, pos = faiss.knn(xq[rows], xb[ids], min(K, len(ids)))
        fgt[rows, : pos.shape[1]] = ids[pos]
    return Dataset(xb, xq, gt, fgt)


def recall_at_k(found: list[list[int]], truth: np.ndarray) -> float:
    hits = [
        len(set(f) & set(t[t >= 0].tolist())) / max(1, int((t >= 0).sum())) for f, t in zip(found, truth, strict=True)
    ]
    return float(np.mean(hits))


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (clock ticks, usually 10 ms)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """CPU time per request of the client (this process), the gateway and the worker."""

    def __init__(self, gateway: int, worker: int | None) -> None:
        self.pids = (os.getpid(), gateway, worker)

    def __enter__(self) -> CpuMeter:
        self.start = [cpu_seconds(p) if p else float("nan") for p in self.pids]
        return self

    def __exit__(self, *exc: object) -> None:
        self.used = [(cpu_seconds(p) if p else float("nan")) - s for p, s in zip(self.pids, self.start, strict=True)]

    def per_request_ms(self, requests: int) -> tuple[float, ...]:
        return tuple(1e3 * u / max(1, requests) for u in self.used)


def percentiles_ms(samples_ns: list[int]) -> tuple[float, float]:
    p50, p99 = np.percentile(np.asarray(samples_ns, dtype=np.float64), [50, 99]) / 1e6
    return float(p50), float(p99)


# --------------------------------------------------------------------------------------
# HTTP with keep-alive
# --------------------------------------------------------------------------------------
class Http:
    """One keep-alive connection; ``call(method, path, body) -> (status, raw body)``."""

    def __init__(self, url: str, key: str | None) -> None:
        parts = urllib.parse.urlsplit(url)
        self.conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port or 80, timeout=300)
        self.headers = {"Content-Type": "application/json"}
        if key:
            self.headers["Authorization"] = f"Bearer {key}"

    def call(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        self.conn.request(method, path, body=body, headers=self.headers)
        resp = self.conn.getresponse()
        return resp.status, resp.read()

    def json(self, method: str, path: str, body: Any = None, expect: int = 200) -> Any:
        raw = json.dumps(body).encode() if body is not None else None
        status, data = self.call(method, path, raw)
        if status != expect:
            raise SystemExit(f"{method} {path} -> {status}: {data[:500]!r}")
        return json.loads(data)

    def close(self) -> None:
        self.conn.close()


class Wire:
    """A minimal HTTP/1.1 keep-alive client with ``Http``'s ``call``: the request is written
    with one ``sendall`` and the answer read by ``Content-Length`` (the server always sends
    one), without ``http.client``'s per-request Python (~0.3 ms of CPU a request on the
    2-core VMs).  It stands for the compiled HTTP clients of the non-Python callers the REST
    facade is for, so its latency is the server's: bytes out, answer in."""

    def __init__(self, url: str, key: str | None) -> None:
        parts = urllib.parse.urlsplit(url)
        self.host = f"{parts.hostname}:{parts.port}"
        self.sock = socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 80), timeout=300)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.auth = f"Authorization: Bearer {key}\r\n" if key else ""
        self.buf = b""

    def call(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        body = body or b""
        head = (
            f"{method} {path} HTTP/1.1\r\nHost: {self.host}\r\n{self.auth}"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        self.sock.sendall(head.encode() + body)
        buf = self.buf
        while (end := buf.find(b"\r\n\r\n")) < 0:
            buf += self._recv()
        lines = buf[:end].split(b"\r\n")
        status = int(lines[0].split(b" ", 2)[1])
        length = -1
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        if length < 0:
            raise SystemExit(f"{method} {path}: an answer without Content-Length")
        buf = buf[end + 4 :]
        while len(buf) < length:
            buf += self._recv()
        self.buf = buf[length:]
        return status, buf[:length]

    def _recv(self) -> bytes:
        chunk = self.sock.recv(1 << 16)
        if not chunk:
            raise SystemExit("the server closed the connection")
        return chunk

    def close(self) -> None:
        self.sock.close()


def search_bodies(
    xq: np.ndarray, ef: int | None = None, filtered: bool = False, include: list[str] | None = None
) -> list[bytes]:
    bodies = []
    for i, q in enumerate(xq):
        req: dict[str, Any] = {"vector": q.tolist(), "k": K}
        if include is not None:
            req["include"] = include
        if ef is not None:
            req["params"] = {"efSearch": ef}
        if filtered:
            req["filter"] = {"bucket": i % 100}
        bodies.append(json.dumps(req).encode())
    return bodies


def rest_queries(http_: Http | Wire, path: str, bodies: list[bytes], warmup: int) -> tuple[list[int], list[list[int]]]:
    """Time each body after ``warmup`` untimed ones; return latencies (ns) and the hits' ids."""
    for body in bodies[:warmup]:
        http_.call("POST", path, body)
    samples: list[int] = []
    found: list[list[int]] = []
    for body in bodies[warmup:]:
        t0 = time.perf_counter_ns()
        status, data = http_.call("POST", path, body)
        hits = json.loads(data)["results"] if status == 200 else None
        samples.append(time.perf_counter_ns() - t0)
        if hits is None:
            raise SystemExit(f"search -> {status}: {data[:500]!r}")
        found.append([int(h["id"]) for h in hits])
    return samples, found


def rest_get_p50(http_: Http, path: str, reps: int) -> float:
    samples = []
    for i in range(reps + reps // 10):
        t0 = time.perf_counter_ns()
        status, data = http_.call("GET", path)
        dt = time.perf_counter_ns() - t0
        if status != 200:
            raise SystemExit(f"GET {path} -> {status}: {data[:300]!r}")
        if i >= reps // 10:
            samples.append(dt)
    return percentiles_ms(samples)[0]


def run_threads(worker: Callable[[int, float], int], threads: int, seconds: float) -> tuple[float, int]:
    """Run ``worker(thread number, deadline) -> completed calls`` on ``threads`` threads; return (calls/s, calls)."""
    counts = [0] * threads
    start = threading.Barrier(threads + 1)
    errors: list[BaseException] = []

    def body(t: int) -> None:
        try:
            start.wait()
            counts[t] = worker(t, time.perf_counter() + seconds)
        except BaseException as exc:  # reported below
            errors.append(exc)

    pool = [threading.Thread(target=body, args=(t,), daemon=True) for t in range(threads)]
    for th in pool:
        th.start()
    start.wait()
    t0 = time.perf_counter()
    for th in pool:
        th.join()
    elapsed = time.perf_counter() - t0
    if errors:
        raise SystemExit(f"a load thread failed: {errors[0]!r}")
    return sum(counts) / elapsed, sum(counts)


def rest_qps(
    url: str, key: str, path: str, bodies: list[bytes], seconds: float, client: type[Http] | type[Wire] = Http
) -> tuple[float, int]:
    def worker(t: int, deadline: float) -> int:
        http_ = client(url, key)
        done, i = 0, t * 37
        try:
            while time.perf_counter() < deadline:
                status, data = http_.call("POST", path, bodies[i % len(bodies)])
                if status != 200:
                    raise RuntimeError(f"search -> {status}: {data[:300]!r}")
                json.loads(data)
                done += 1
                i += 1
        finally:
            http_.close()
        return done

    return run_threads(worker, QPS_THREADS, seconds)


# --------------------------------------------------------------------------------------
# RPC client and local FAISS (same measurements)
# --------------------------------------------------------------------------------------
def index_queries(
    search: Callable[[np.ndarray], tuple[Any, Any]], xq: np.ndarray, warmup: int
) -> tuple[list[int], list[list[int]]]:
    for q in xq[:warmup]:
        search(q[None])
    samples: list[int] = []
    found: list[list[int]] = []
    for q in xq[warmup:]:
        row = q[None]
        t0 = time.perf_counter_ns()
        _, I = search(row)
        samples.append(time.perf_counter_ns() - t0)
        found.append([int(i) for i in np.asarray(I)[0] if i >= 0])
    return samples, found


def index_qps(search: Callable[[np.ndarray], Any], xq: np.ndarray, seconds: float) -> tuple[float, int]:
    rows = [q[None] for q in xq]

    def worker(t: int, deadline: float) -> int:
        done, i = 0, t * 37
        while time.perf_counter() < deadline:
            search(rows[i % len(rows)])
            done += 1
            i += 1
        return done

    return run_threads(worker, QPS_THREADS, seconds)


@contextlib.contextmanager
def omp_threads(n: int) -> Iterator[None]:
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(n)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


def hnsw_params(module: Any, ef: int | None) -> Any:
    if ef is None:
        return None
    p = module.SearchParametersHNSW()
    p.efSearch = ef
    return p


# --------------------------------------------------------------------------------------
# server
# --------------------------------------------------------------------------------------
def _cli(data_dir: str, *args: str) -> str:
    cmd = [sys.executable, "-m", "faiss_proxy_server", *args, "--data-dir", data_dir]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=120)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(args[:2])} failed ({done.returncode}):\n{done.stderr}")
    return done.stdout


@dataclass
class LocalServer:
    url: str
    data_dir: str
    proc: subprocess.Popen[str]

    def new_tenant(self, name: str) -> str:
        """Create a tenant; return a fresh API key for it."""
        _cli(self.data_dir, "tenant", "create", name)
        return _cli(self.data_dir, "key", "create", name).strip().splitlines()[-1]

    def worker_pid(self, tenant: str) -> int | None:
        """The server's child running ``faiss_proxy_server.worker`` for ``tenant``."""
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
                argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            args = [a.decode(errors="replace") for a in argv]
            if ppid == self.proc.pid and "faiss_proxy_server.worker" in args and tenant in args:
                return int(entry)
        return None

    def worker_memory_mb(self, tenant: str) -> tuple[float, float]:
        """(VmRSS, VmHWM) of the tenant's worker in MiB; NaN if it cannot be found."""
        pid = self.worker_pid(tenant)
        if pid is None:
            return float("nan"), float("nan")
        fields = dict(
            line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line
        )
        return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


@contextlib.contextmanager
def local_server() -> Iterator[LocalServer]:
    # With --log-level warning the server does not print its "listening on URL" line (an
    # info message), so "--port 0" cannot be used: pick a free loopback port here instead.
    # (Info level would log every request, which costs the gateway time per request.)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with tempfile.TemporaryDirectory(prefix="faiss-proxy-bench-rest-") as tmp:
        data_dir = str(Path(tmp) / "data")
        log_path = Path(tmp) / "server.log"
        with open(log_path, "w") as log:
            proc = subprocess.Popen(
                [*SERVE, "--port", str(port), "--data-dir", data_dir, "--log-level", "warning"],
                stdout=log,
                stderr=subprocess.STDOUT,
                text=True,
            )
        try:
            url = _wait_for_server(proc, log_path, f"http://127.0.0.1:{port}")
            yield LocalServer(url, data_dir, proc)
        finally:
            proc.terminate()  # SIGTERM
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _wait_for_server(proc: subprocess.Popen[str], log_path: Path, url: str, timeout: float = 30.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        match = re.search(r"listening on (http://\S+)", log_path.read_text())
        url = match.group(1) if match else url
        with contextlib.suppress(OSError):
            status, _ = Http(url, None).call("GET", "/v1/health")
            if status == 200:
                return url
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    raise SystemExit(f"faiss-proxy serve did not come up:\n{log_path.read_text()}")


# --------------------------------------------------------------------------------------
# one index type
# --------------------------------------------------------------------------------------
@dataclass
class Search:
    """Single-query figures at one efSearch (None: the index's default)."""

    ef: int | None
    p50: float = float("nan")
    p99: float = float("nan")
    recall: float = float("nan")


@dataclass
class Figures:
    index_type: str
    ingest_vps: float = float("nan")
    ingest_s: float = float("nan")
    rss_idle_mb: float = float("nan")
    rss_mb: float = float("nan")
    hwm_mb: float = float("nan")
    rest: list[Search] = field(default_factory=list)
    rpc: list[Search] = field(default_factory=list)
    local: list[Search] = field(default_factory=list)
    chosen_ef: int | None = None
    rest_qps: float = float("nan")
    rpc_qps: float = float("nan")
    local_qps: float = float("nan")
    filter_p50: float = float("nan")
    filter_p99: float = float("nan")
    filter_recall: float = float("nan")
    health_p50: float = float("nan")
    ntotal_p50: float = float("nan")
    bare_p50: float = float("nan")  # search at the default ef without metadata in the hits
    cpu_seq: tuple[float, ...] = ()  # CPU ms per request (client, gateway, worker), sequential searches
    cpu_qps: tuple[float, ...] = ()  # the same during the 8-thread run
    qps_requests: int = 0
    rpc_ntotal_p50: float = float("nan")
    wire: Search = field(default_factory=lambda: Search(None))  # at chosen_ef, through ``Wire``
    wire_qps: float = float("nan")


def encode_batches(xb: np.ndarray, batch: int) -> list[bytes]:
    bodies = []
    for lo in range(0, len(xb), batch):
        items = [
            {
                "id": str(i),
                "values_b64": base64.b64encode(xb[i].astype("<f4").tobytes()).decode(),
                "metadata": {"bucket": i % 100},
            }
            for i in range(lo, min(lo + batch, len(xb)))
        ]
        bodies.append(json.dumps({"vectors": items}).encode())
    return bodies


def pick(rows: list[Search], ef: int | None) -> Search:
    for s in rows:
        if s.ef == ef:
            return s
    return Search(ef)


def bench_index(server: LocalServer, index_type: str, data: Dataset, plan: Plan, tmp: Path) -> Figures:
    fig = Figures(index_type)
    hnsw = "HNSW" in index_type
    name = "bench_" + re.sub(r"[^a-z0-9]", "", index_type.lower())
    tenant = "bench-" + re.sub(r"[^a-z0-9]", "", index_type.lower())
    key = server.new_tenant(tenant)
    http_ = Http(server.url, key)
    base = f"/v1/index/{name}"
    efs: list[int | None] = [None, *EF_LEVELS] if hnsw else [None]
    nq = plan.warmup + plan.queries
    xq = data.xq[:nq]

    # ingest
    http_.json("POST", "/v1/index", {"name": name, "dimension": plan.d, "index_type": index_type}, expect=201)
    fig.rss_idle_mb = server.worker_memory_mb(tenant)[0]
    bodies = encode_batches(data.xb, plan.ingest_batch)
    t0 = time.perf_counter()
    for body in bodies:
        status, raw = http_.call("POST", base + "/vectors", body)
        if status != 200:
            raise SystemExit(f"upsert -> {status}: {raw[:500]!r}")
    fig.ingest_s = time.perf_counter() - t0
    fig.ingest_vps = len(data.xb) / fig.ingest_s
    del bodies
    ntotal = http_.json("GET", base + "/ntotal")["ntotal"]
    if ntotal != len(data.xb):
        raise SystemExit(f"{index_type}: ntotal is {ntotal}, expected {len(data.xb)}")
    fig.rss_mb, fig.hwm_mb = server.worker_memory_mb(tenant)
    print(f"  {index_type}: ingested {ntotal:,} in {fig.ingest_s:.1f} s", flush=True)

    # REST single queries
    bodies_by_ef = {ef: search_bodies(xq, ef) for ef in efs}
    worker = server.worker_pid(tenant)
    for ef in efs:
        with CpuMeter(server.proc.pid, worker) as meter:
            samples, found = rest_queries(http_, base + "/search", bodies_by_ef[ef], plan.warmup)
        if ef is None:
            fig.cpu_seq = meter.per_request_ms(len(bodies_by_ef[ef]))
        p50, p99 = percentiles_ms(samples)
        fig.rest.append(Search(ef, p50, p99, recall_at_k(found, data.gt[plan.warmup : nq])))
    ok = [s for s in fig.rest if s.recall >= HNSW_MIN_RECALL]
    fig.chosen_ef = ok[0].ef if ok else efs[-1]
    with CpuMeter(server.proc.pid, worker) as meter:
        fig.rest_qps, fig.qps_requests = rest_qps(
            server.url, key, base + "/search", bodies_by_ef[fig.chosen_ef], plan.qps_seconds
        )
    fig.cpu_qps = meter.per_request_ms(fig.qps_requests)

    # the same through a minimal HTTP client: the server's own latency
    wire = Wire(server.url, key)
    samples, found = rest_queries(wire, base + "/search", bodies_by_ef[fig.chosen_ef], plan.warmup)
    wire.close()
    p50, p99 = percentiles_ms(samples)
    fig.wire = Search(fig.chosen_ef, p50, p99, recall_at_k(found, data.gt[plan.warmup : nq]))
    fig.wire_qps = rest_qps(
        server.url, key, base + "/search", bodies_by_ef[fig.chosen_ef], plan.qps_seconds, client=Wire
    )[0]

    # filtered
    fq = data.xq[: plan.warmup + plan.filter_queries]
    samples, found = rest_queries(http_, base + "/search", search_bodies(fq, filtered=True), plan.warmup)
    fig.filter_p50, fig.filter_p99 = percentiles_ms(samples)
    fig.filter_recall = recall_at_k(found, data.fgt[plan.warmup : len(fq)])

    # gateway / worker breakdown
    fig.health_p50 = rest_get_p50(Http(server.url, None), "/v1/health", plan.probes)
    fig.ntotal_p50 = rest_get_p50(http_, base + "/ntotal", plan.probes)
    samples, _ = rest_queries(http_, base + "/search", search_bodies(xq, include=[]), plan.warmup)
    fig.bare_p50 = percentiles_ms(samples)[0]
    http_.close()
    print(f"  {index_type}: REST done", flush=True)

    # RPC client on the same named index
    faiss_proxy.configure(api_url=server.url, api_key=key)
    try:
        idx = faiss_proxy.open_index(name)
        for ef in efs:
            params = hnsw_params(faiss_proxy, ef)
            samples, found = index_queries(lambda q, p=params: idx.search(q, K, params=p), xq, plan.warmup)
            p50, p99 = percentiles_ms(samples)
            fig.rpc.append(Search(ef, p50, p99, recall_at_k(found, data.gt[plan.warmup : nq])))
        chosen = hnsw_params(faiss_proxy, fig.chosen_ef)
        fig.rpc_qps = index_qps(lambda q: idx.search(q, K, params=chosen), xq, plan.qps_seconds)[0]
        samples = []
        for _ in range(plan.probes):
            t0 = time.perf_counter_ns()
            _ = idx.ntotal
            samples.append(time.perf_counter_ns() - t0)
        fig.rpc_ntotal_p50 = percentiles_ms(samples)[0]
        path = tmp / f"{name}.faissindex"
        faiss_proxy.write_index(idx, str(path))
    finally:
        faiss_proxy.configure(api_url="")
    print(f"  {index_type}: RPC done", flush=True)

    # local FAISS, one OpenMP thread, on a copy of the server's index
    local = faiss.read_index(str(path))
    path.unlink()
    with omp_threads(1):
        for ef in efs:
            params = hnsw_params(faiss, ef)
            samples, found = index_queries(lambda q, p=params: local.search(q, K, params=p), xq, plan.warmup)
            p50, p99 = percentiles_ms(samples)
            fig.local.append(Search(ef, p50, p99, recall_at_k(found, data.gt[plan.warmup : nq])))
    return fig


# --------------------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------------------
def fmt(value: float, spec: str) -> str:
    return "-" if value != value else format(value, spec)  # NaN -> "-"


def ratio(proxy: float, local: float) -> str:
    return "-" if proxy != proxy or local != local or local <= 0 else f"{proxy / local:.1f}x"


def ef_label(ef: int | None) -> str:
    return "default ef" if ef is None else f"ef={ef}"


def print_report(fig: Figures, plan: Plan) -> list[bool]:
    hnsw = "HNSW" in fig.index_type
    rows: list[tuple[str, str, str, str, str, str, str]] = []  # metric, rest, rpc, local, ratio, target, met

    def verdict(ok: bool | None) -> str:
        return "" if ok is None else ("yes" if ok else "NO")

    outcomes: list[bool] = []

    def add(metric: str, rest: str, rpc: str, local: str, rat: str, target: str, ok: bool | None) -> None:
        rows.append((metric, rest, rpc, local, rat, target, verdict(ok)))
        if ok is not None:
            outcomes.append(ok)

    ingest_ok = fig.ingest_vps >= INGEST_MIN_VPS if not hnsw else None
    add(
        "ingest (vectors/s)",
        fmt(fig.ingest_vps, ",.0f"),
        "",
        "",
        "",
        f">= {INGEST_MIN_VPS:,.0f}" if not hnsw else "",
        ingest_ok,
    )
    for s in fig.rest:
        rpc, local = pick(fig.rpc, s.ef), pick(fig.local, s.ef)
        tag = f" {ef_label(s.ef)}" if hnsw else ""
        target, ok = "", None
        if hnsw and s.ef == fig.chosen_ef:
            target = f"<= {HNSW_P50_MAX_MS:g} @ rec>={HNSW_MIN_RECALL:g}"
            ok = s.p50 <= HNSW_P50_MAX_MS and s.recall >= HNSW_MIN_RECALL
        add(
            f"search p50 (ms){tag}",
            fmt(s.p50, ".3f"),
            fmt(rpc.p50, ".3f"),
            fmt(local.p50, ".3f"),
            ratio(s.p50, local.p50) + " / " + ratio(rpc.p50, local.p50),
            target,
            ok,
        )
        add(f"search p99 (ms){tag}", fmt(s.p99, ".3f"), fmt(rpc.p99, ".3f"), fmt(local.p99, ".3f"), "", "", None)
        add(f"recall@10{tag}", fmt(s.recall, ".3f"), fmt(rpc.recall, ".3f"), fmt(local.recall, ".3f"), "", "", None)
    qps_tag = f" {ef_label(fig.chosen_ef)}" if hnsw else ""
    add(
        f"{QPS_THREADS}-thread QPS{qps_tag}",
        fmt(fig.rest_qps, ",.0f"),
        fmt(fig.rpc_qps, ",.0f"),
        "",
        "",
        f">= {HNSW_MIN_QPS:,.0f}" if hnsw else "",
        fig.rest_qps >= HNSW_MIN_QPS if hnsw else None,
    )
    if hnsw:
        wire_tag = f" {ef_label(fig.chosen_ef)}, wire client"
        add(f"search p50 (ms){wire_tag}", fmt(fig.wire.p50, ".3f"), "", "", "", "", None)
        add(f"search p99 (ms){wire_tag}", fmt(fig.wire.p99, ".3f"), "", "", "", "", None)
        add(f"{QPS_THREADS}-thread QPS{wire_tag}", fmt(fig.wire_qps, ",.0f"), "", "", "", "", None)
    add(
        "filtered 1% p50 (ms)",
        fmt(fig.filter_p50, ".3f"),
        "",
        "",
        "",
        f"<= {FILTER_P50_MAX_MS:g}",
        fig.filter_p50 <= FILTER_P50_MAX_MS,
    )
    add("filtered 1% p99 (ms)", fmt(fig.filter_p99, ".3f"), "", "", "", "", None)
    add("filtered recall@10", fmt(fig.filter_recall, ".3f"), "", "", "", "= 1.0", fig.filter_recall >= 1.0)
    add("worker RSS idle (MiB)", fmt(fig.rss_idle_mb, ".0f"), "", "", "", "", None)
    add("worker RSS after ingest (MiB)", fmt(fig.rss_mb, ".0f"), "", "", "", "", None)
    add("worker peak RSS (MiB)", fmt(fig.hwm_mb, ".0f"), "", "", "", "", None)
    add("GET /v1/health p50 (ms)", fmt(fig.health_p50, ".3f"), "", "", "", "", None)
    add("ntotal p50 (ms)", fmt(fig.ntotal_p50, ".3f"), fmt(fig.rpc_ntotal_p50, ".3f"), "", "", "", None)
    add("search p50, include=[] (ms)", fmt(fig.bare_p50, ".3f"), "", "", "", "", None)

    print(
        f"\n{fig.index_type}  d={plan.d} nb={plan.n:,} k={K}  ({plan.queries} queries after {plan.warmup} warm-up; "
        f"ingested {plan.ingest_batch:,} vectors per request)"
    )
    head = ("metric", "REST", "RPC", "local 1thr", "REST/RPC vs local", "target", "met?")
    widths = (34, 10, 10, 11, 19, 22, 5)
    line = "".join(f"{h:<{w}}" if i == 0 else f"{h:>{w}}" for i, (h, w) in enumerate(zip(head, widths, strict=True)))
    print(line)
    print("-" * len(line))
    for row in rows:
        print("".join(f"{c:<{w}}" if i == 0 else f"{c:>{w}}" for i, (c, w) in enumerate(zip(row, widths, strict=True))))
    cpu = " / ".join(fmt(v, ".3f") for v in fig.cpu_seq)
    print(f"REST CPU ms per request, client / gateway / worker: sequential ({ef_label(None)}) {cpu}", end="")
    cpu = " / ".join(fmt(v, ".3f") for v in fig.cpu_qps)
    print(f"; {QPS_THREADS} threads ({ef_label(fig.chosen_ef)}, {fig.qps_requests:,} requests) {cpu}")
    return outcomes


# --------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="nb=10k (unless --n), fewer queries, 2 s QPS runs")
    parser.add_argument("--n", type=int, default=None, help="database size (default 100000; 10000 with --quick)")
    parser.add_argument("--d", type=int, default=128, help="dimension (default 128)")
    parser.add_argument(
        "--ingest-batch", type=int, default=INGEST_BATCH, help=f"vectors per upsert request (default {INGEST_BATCH})"
    )
    args = parser.parse_args(argv)
    if args.quick:
        plan = Plan(args.n or 10_000, args.d, queries=200, warmup=20, filter_queries=100, qps_seconds=2.0, probes=200)
    else:
        plan = Plan(args.n or 100_000, args.d, queries=500, warmup=50, filter_queries=300, qps_seconds=5.0, probes=500)
    plan = replace(plan, ingest_batch=args.ingest_batch)

    started = time.perf_counter()
    print(
        f"faiss {faiss.__version__}, {os.cpu_count()} CPUs, nb={plan.n:,} d={plan.d} clustered "
        f"({N_CENTERS} centers), queries from the same distribution; loopback"
    )
    data = make_dataset(plan.n, plan.d, plan.warmup + max(plan.queries, plan.filter_queries))
    print(f"dataset and ground truth ready ({time.perf_counter() - started:.0f} s)", flush=True)

    outcomes: list[bool] = []
    with tempfile.TemporaryDirectory(prefix="faiss-proxy-bench-rest-copy-") as tmp, local_server() as server:
        print(f"server {server.url} (pid {server.proc.pid})", flush=True)
        figures = [bench_index(server, t, data, plan, Path(tmp)) for t in ("IndexFlatL2", "IndexHNSWFlat")]
    for fig in figures:
        outcomes += print_report(fig, plan)

    print("\nPeers measured on this machine (../shared/FIELD-NOTES.md, 100k x 128, loopback; not re-run here):")
    for peer in PEERS:
        print(f"  - {peer.summary}")
    print(
        f"\n{'all targets met' if all(outcomes) else 'some targets missed'}; ran {time.perf_counter() - started:.0f} s"
    )
    return 0 if all(outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())

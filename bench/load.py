"""Load: many tenants, RPC and REST clients mixed, 90% search / 10% add, for a bounded time.

What it does (loopback only; every step has a time limit):

1. starts the real server (``python -m faiss_proxy_server serve``) in a temporary data
   directory on a free loopback port, with ``--log-level warning`` (no per-request log
   line), ``--worker-idle-timeout 3600`` (no worker is stopped during the run) and
   ``--rest-threads`` sized to the REST clients of one tenant;
2. creates ``--tenants`` tenants and one API key each through the catalog (the same
   SQLite file ``faiss-proxy tenant create`` / ``key create`` write; it is safe while
   the server runs), and per tenant a named index ``docs`` of ``--n`` x ``--d`` clustered
   float32 vectors, ingested over REST with ``values_b64`` (5,000 vectors per request).
   The index type is ``IndexFlatL2`` by default (``--index-type``): ingest costs nothing,
   so 50 tenants are ready in seconds on 2 cores, and a search scans all the vectors,
   so it is not the cheap case;
3. runs ``--clients-per-tenant`` clients per tenant, alternating the Python RPC client
   (``faiss_proxy``: its own session per client, ``index.search`` / ``index.add_with_ids``
   on the opened named index) and REST (``http.client``, one keep-alive connection per
   client: ``POST .../search`` / ``POST .../vectors``). Clients are threads spread over
   ``--procs`` processes (so they do not all share one GIL). Each client, in a closed
   loop for ``--seconds``: 90% single-query searches (k=10), 10% adds of ``--add-batch``
   new vectors with ids of its own. Every client connects and warms up before the clock
   starts;
4. reports total throughput, p50/p99 per API and operation, and the error count, then
   checks that nothing acknowledged was lost: per tenant, ``ntotal`` == initial +
   acknowledged added vectors, and the first and last acknowledged batch of every client
   can be read back (``GET .../vectors/{id}``).

The exit status is 1 on any error or any lost vector.

    python bench/load.py                      # 50 tenants x 4 clients, 10k x 128 each, 60 s
    python bench/load.py --quick              # 10 tenants, 2k x 32, 10 s
    python bench/load.py --tenants 20 --seconds 30 --index-type IndexHNSWFlat

``tests/test_load.py`` runs :func:`run` with a 10-tenant, 10-second plan.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import http.client
import json
import multiprocessing as mp
import os
import queue
import random
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

SERVE = (sys.executable, "-m", "faiss_proxy_server", "serve")
K = 10
SEED = 1234
N_CENTERS = 50
POOL = 512  # distinct queries (and add vectors) each client process draws from
ID_STRIDE = 10_000_000  # client g adds ids from (g + 1) * ID_STRIDE on
INDEX = "docs"
CALL_TIMEOUT = 60.0  # seconds one RPC call or HTTP request may take before it counts as an error
APIS = ("rpc", "rest")
OPS = ("search", "add")


@dataclass(frozen=True)
class Plan:
    tenants: int = 50
    clients_per_tenant: int = 4
    seconds: float = 60.0
    n: int = 10_000
    d: int = 128
    procs: int = 4
    add_batch: int = 10
    add_share: float = 0.1
    index_type: str = "IndexFlatL2"
    ingest_batch: int = 5000
    setup_threads: int = 4
    think_ms: float = 0.0
    rest_threads: int = 0  # 0: one channel per REST client of a tenant (at least 2)
    apis: tuple[str, ...] = APIS  # clients of a tenant cycle through these
    worker_nice: int = 0  # renice the tenant workers (not the gateway) by this much after set-up

    @property
    def clients(self) -> int:
        return self.tenants * self.clients_per_tenant


@dataclass(frozen=True)
class ClientSpec:
    number: int  # global client number g: ids from (g + 1) * ID_STRIDE
    tenant: str
    key: str
    api: str  # "rpc" or "rest"


@dataclass
class Report:
    plan: Plan
    elapsed: float = 0.0
    latencies: dict[tuple[str, str], np.ndarray] = field(default_factory=dict)  # (api, op) -> ns
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)
    acked: dict[str, int] = field(default_factory=dict)  # tenant -> acknowledged added vectors
    uncertain: dict[str, int] = field(default_factory=dict)  # tenant -> vectors of adds that failed
    ntotal: dict[str, int] = field(default_factory=dict)
    lost: int = 0  # acknowledged vectors missing at the end
    spot_checked: int = 0
    spot_missing: int = 0
    setup: dict[str, float] = field(default_factory=dict)
    cpu: dict[str, float] = field(default_factory=dict)  # CPU seconds during the timed window
    worker_rss_mb: list[float] = field(default_factory=list)
    gateway_rss_mb: float = float("nan")

    @property
    def ok(self) -> bool:
        return self.errors == 0 and self.lost == 0 and self.spot_missing == 0 and len(self.ntotal) == self.plan.tenants


# --------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------
def clustered(n: int, d: int, seed: int = SEED) -> np.ndarray:
    """Clustered float32 vectors (as the tests' ``make_dataset``: 50 centres, sigma 0.3)."""
    rs = np.random.RandomState(SEED)
    centers = rs.rand(N_CENTERS, d).astype("float32") * 4
    rs = np.random.RandomState(seed)
    pts = centers[rs.randint(0, N_CENTERS, n)] + rs.randn(n, d).astype("float32") * 0.3
    return np.ascontiguousarray(pts, dtype="float32")


def b64(row: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(row, dtype="<f4").tobytes()).decode()


def upsert_body(x: np.ndarray, ids: range | list[int]) -> bytes:
    items = [{"id": str(i), "values_b64": b64(row)} for i, row in zip(ids, x, strict=True)]
    return json.dumps({"vectors": items}).encode()


# --------------------------------------------------------------------------------------
# HTTP with keep-alive
# --------------------------------------------------------------------------------------
class Http:
    """One keep-alive connection; ``call(method, path, body) -> (status, raw body)``."""

    def __init__(self, url: str, key: str | None, timeout: float = CALL_TIMEOUT) -> None:
        parts = urllib.parse.urlsplit(url)
        self.host, self.port, self.timeout = parts.hostname or "127.0.0.1", parts.port or 80, timeout
        self.conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        self.headers = {"Content-Type": "application/json"}
        if key:
            self.headers["Authorization"] = f"Bearer {key}"

    def call(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        try:
            self.conn.request(method, path, body=body, headers=self.headers)
            resp = self.conn.getresponse()
            return resp.status, resp.read()
        except (OSError, http.client.HTTPException):
            # a broken keep-alive connection: the next request opens a new one
            self.conn.close()
            self.conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            raise

    def json(self, method: str, path: str, body: Any = None, expect: int = 200) -> Any:
        raw = json.dumps(body).encode() if body is not None else None
        status, data = self.call(method, path, raw)
        if status != expect:
            raise RuntimeError(f"{method} {path} -> {status}: {data[:300]!r}")
        return json.loads(data)

    def close(self) -> None:
        self.conn.close()


# --------------------------------------------------------------------------------------
# server
# --------------------------------------------------------------------------------------
@dataclass
class ServerProcess:
    url: str
    data_dir: Path
    proc: subprocess.Popen[str]
    log_path: Path

    def worker_pids(self) -> list[int]:
        """The server's children running ``faiss_proxy_server.worker``."""
        pids = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
                argv = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == self.proc.pid and b"faiss_proxy_server.worker" in argv:
                pids.append(int(entry))
        return pids


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def serve(data_dir: Path, *extra: str, start_timeout: float = 60.0) -> Iterator[ServerProcess]:
    """The real server as a subprocess; SIGTERM (then SIGKILL) at the end.

    With ``--log-level warning`` the server does not log its "listening on" line, so
    the port is picked here instead of ``--port 0``."""
    port = free_port()
    log_path = data_dir.parent / "server.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [*SERVE, "--host", "127.0.0.1", "--port", str(port), "--data-dir", str(data_dir), *extra],
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + start_timeout
        while True:
            with contextlib.suppress(OSError, http.client.HTTPException):
                if Http(url, None, timeout=5).call("GET", "/v1/health")[0] == 200:
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"faiss-proxy serve did not come up:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.1)
        yield ServerProcess(url, data_dir, proc, log_path)
    finally:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


# --------------------------------------------------------------------------------------
# set-up: tenants, keys, indexes
# --------------------------------------------------------------------------------------
def create_tenants(data_dir: Path, count: int, prefix: str = "load") -> list[tuple[str, str]]:
    """``count`` tenants with one read-write key each, through the catalog."""
    from faiss_proxy_server.catalog import Catalog

    catalog = Catalog(data_dir)
    out = []
    for i in range(count):
        name = f"{prefix}-{i:03d}"
        catalog.create_tenant(name)
        out.append((name, catalog.create_key(name, name="load")[1]))
    return out


def create_index(url: str, key: str, plan: Plan, bodies: list[bytes]) -> None:
    http_ = Http(url, key, timeout=300)
    try:
        http_.json("POST", "/v1/index", {"name": INDEX, "dimension": plan.d, "index_type": plan.index_type}, 201)
        for body in bodies:
            status, raw = http_.call("POST", f"/v1/index/{INDEX}/vectors", body)
            if status != 200:
                raise RuntimeError(f"ingest -> {status}: {raw[:300]!r}")
        ntotal = http_.json("GET", f"/v1/index/{INDEX}/ntotal")["ntotal"]
        if ntotal != plan.n:
            raise RuntimeError(f"after ingest ntotal is {ntotal}, expected {plan.n}")
    finally:
        http_.close()


# --------------------------------------------------------------------------------------
# clients (run in the client processes)
# --------------------------------------------------------------------------------------
class ClientState:
    """What one client did: latencies per operation, errors, acknowledged batches."""

    def __init__(self, spec: ClientSpec) -> None:
        self.spec = spec
        self.samples: dict[str, list[int]] = {"search": [], "add": []}
        self.errors: list[str] = []  # the first few
        self.error_count = 0
        self.acked_batches: list[int] = []  # first id of each acknowledged add
        self.failed_batches: list[int] = []  # first id of each add that failed (may or may not be applied)

    def error(self, text: str) -> None:
        self.error_count += 1
        if len(self.errors) < 5:
            self.errors.append(text[:300])


def _rpc_ops(spec: ClientSpec, url: str, plan: Plan) -> tuple[Callable[[np.ndarray], None], Callable[..., None]]:
    from faiss_proxy._client import Client

    client = Client(url, spec.key, timeout=CALL_TIMEOUT, spin_us=0)  # 200 threads must not busy-wait
    index = client.connection().named("open", (INDEX,), {})

    def search(q: np.ndarray) -> None:
        _D, I = index.search(q, K)
        if I.shape != (1, K) or I[0, 0] < 0:
            raise RuntimeError(f"search returned {I!r}")

    def add(x: np.ndarray, ids: np.ndarray) -> None:
        index.add_with_ids(x, ids)

    return search, add


def _rest_ops(spec: ClientSpec, url: str, plan: Plan) -> tuple[Callable[[np.ndarray], None], Callable[..., None]]:
    http_ = Http(url, spec.key)
    base = f"/v1/index/{INDEX}"
    bodies: dict[int, bytes] = {}

    def search(q: np.ndarray) -> None:
        key = id(q)
        body = bodies.get(key)
        if body is None:
            body = bodies[key] = json.dumps({"vector": q[0].tolist(), "k": K}).encode()
        status, raw = http_.call("POST", base + "/search", body)
        if status != 200:
            raise RuntimeError(f"REST search -> {status}: {raw[:200]!r}")
        if len(json.loads(raw)["results"]) != K:
            raise RuntimeError(f"REST search returned {raw[:200]!r}")

    def add(x: np.ndarray, ids: np.ndarray) -> None:
        status, raw = http_.call("POST", base + "/vectors", upsert_body(x, ids.tolist()))
        if status != 200:
            raise RuntimeError(f"REST upsert -> {status}: {raw[:200]!r}")
        if json.loads(raw)["upserted"] != len(ids):
            raise RuntimeError(f"REST upsert answered {raw[:200]!r}")

    return search, add


def _client_thread(
    spec: ClientSpec,
    url: str,
    plan: Plan,
    queries: list[np.ndarray],
    adds: np.ndarray,
    state: ClientState,
    ready: threading.Barrier,
    go: threading.Event,
    clock: list[float],
) -> None:
    rng = random.Random(spec.number)
    ops = None
    try:
        ops = (_rpc_ops if spec.api == "rpc" else _rest_ops)(spec, url, plan)
        ops[0](queries[rng.randrange(len(queries))])  # warm-up, not counted
    except Exception as exc:
        state.error(f"{spec.tenant} {spec.api} connect: {type(exc).__name__}: {exc}")
        ops = None
    with contextlib.suppress(threading.BrokenBarrierError):
        ready.wait()
    if ops is None or not go.wait(CALL_TIMEOUT * 3):
        return
    search, add = ops
    deadline = clock[0]
    next_id = (spec.number + 1) * ID_STRIDE
    think = plan.think_ms / 1000
    while time.monotonic() < deadline:
        if rng.random() < plan.add_share:
            op = "add"
            lo = rng.randrange(len(adds) - plan.add_batch)
            x = adds[lo : lo + plan.add_batch]
            ids = np.arange(next_id, next_id + plan.add_batch, dtype="int64")
            first, next_id = next_id, next_id + plan.add_batch
        else:
            op = "search"
            q = queries[rng.randrange(len(queries))]
        t0 = time.perf_counter_ns()
        try:
            if op == "add":
                add(x, ids)
            else:
                search(q)
        except Exception as exc:
            state.error(f"{spec.tenant} {spec.api} {op}: {type(exc).__name__}: {exc}")
            if op == "add":
                state.failed_batches.append(first)
            time.sleep(0.05)  # a dead server must not turn this loop into a busy one
            continue
        state.samples[op].append(time.perf_counter_ns() - t0)
        if op == "add":
            state.acked_batches.append(first)
        if think:
            time.sleep(think)


def client_process(
    proc_no: int,
    url: str,
    plan: Plan,
    specs: list[ClientSpec],
    results: Any,
    go: Any,
    deadline: Any,
) -> None:
    """One client process: a thread per client; reports ``ready`` then ``done`` on ``results``."""
    xq = clustered(POOL, plan.d, seed=SEED + 1 + proc_no)
    queries = [xq[i : i + 1] for i in range(POOL)]
    adds = clustered(max(POOL, 2 * plan.add_batch), plan.d, seed=SEED + 1000 + proc_no)
    states = [ClientState(s) for s in specs]
    ready = threading.Barrier(len(specs) + 1)
    local_go = threading.Event()
    clock = [0.0]
    threads = [
        threading.Thread(
            target=_client_thread,
            args=(s, url, plan, queries, adds, st, ready, local_go, clock),
            daemon=True,
            name=f"client-{s.number}",
        )
        for s, st in zip(specs, states, strict=True)
    ]
    for t in threads:
        t.start()
    try:
        ready.wait(CALL_TIMEOUT * 3)
    except threading.BrokenBarrierError:
        pass
    results.put(("ready", proc_no))
    if go.wait(CALL_TIMEOUT * 3):
        clock[0] = deadline.value
        cpu0 = time.process_time()
        local_go.set()
    else:
        cpu0 = time.process_time()
    for t in threads:
        t.join(max(1.0, deadline.value - time.monotonic()) + CALL_TIMEOUT + 10)
    hung = [t.name for t in threads if t.is_alive()]
    payload = {
        "clients": [
            {
                "tenant": st.spec.tenant,
                "api": st.spec.api,
                "number": st.spec.number,
                "search": np.asarray(st.samples["search"], dtype=np.int64),
                "add": np.asarray(st.samples["add"], dtype=np.int64),
                "errors": st.errors,
                "error_count": st.error_count,
                "acked": st.acked_batches,
                "failed": st.failed_batches,
            }
            for st in states
        ],
        "hung": hung,
        "cpu": time.process_time() - cpu0,
    }
    results.put(("done", proc_no, payload))
    results.close()
    results.join_thread()
    os._exit(0)  # daemon threads of a hung client must not keep the process alive


# --------------------------------------------------------------------------------------
# the run
# --------------------------------------------------------------------------------------
def assign(tenants: list[tuple[str, str]], plan: Plan) -> list[list[ClientSpec]]:
    """Clients alternate RPC and REST within a tenant and are spread over the processes."""
    per_proc: list[list[ClientSpec]] = [[] for _ in range(plan.procs)]
    g = 0
    for j in range(plan.clients_per_tenant):
        for name, key in tenants:
            per_proc[g % plan.procs].append(ClientSpec(g, name, key, plan.apis[j % len(plan.apis)]))
            g += 1
    return per_proc


def run(plan: Plan, out: Callable[[str], None] = print) -> Report:
    """Start a server, set up the tenants, run the load, verify; return the figures."""
    report = Report(plan)
    started = time.monotonic()
    rest_clients = sum(1 for j in range(plan.clients_per_tenant) if plan.apis[j % len(plan.apis)] == "rest")
    rest_threads = plan.rest_threads or max(2, rest_clients)
    extra = ("--log-level", "warning", "--worker-idle-timeout", "3600", "--rest-threads", str(rest_threads))
    with tempfile.TemporaryDirectory(prefix="faiss-proxy-load-") as tmp, serve(Path(tmp) / "data", *extra) as server:
        report.setup["server_s"] = time.monotonic() - started
        t0 = time.monotonic()
        tenants = create_tenants(server.data_dir, plan.tenants)
        report.setup["tenants_s"] = time.monotonic() - t0

        t0 = time.monotonic()
        xb = clustered(plan.n, plan.d)
        bodies = [
            upsert_body(xb[lo : lo + plan.ingest_batch], range(lo, min(lo + plan.ingest_batch, plan.n)))
            for lo in range(0, plan.n, plan.ingest_batch)
        ]
        with ThreadPoolExecutor(plan.setup_threads) as pool:
            list(
                pool.map(
                    create_index,
                    [server.url] * len(tenants),
                    [k for _, k in tenants],
                    [plan] * len(tenants),
                    [bodies] * len(tenants),
                )
            )
        bodies.clear()
        report.setup["indexes_s"] = time.monotonic() - t0
        out(
            f"set up {plan.tenants} tenants x {plan.n:,} x {plan.d} {plan.index_type} "
            f"in {report.setup['indexes_s']:.1f} s (server start {report.setup['server_s']:.1f} s)"
        )

        if plan.worker_nice:
            for pid in server.worker_pids():
                with contextlib.suppress(OSError):
                    os.setpriority(os.PRIO_PROCESS, pid, plan.worker_nice)
        t0 = time.monotonic()
        ctx = mp.get_context("spawn")
        results = ctx.Queue()
        go = ctx.Event()
        deadline = ctx.Value("d", 0.0)
        procs = [
            ctx.Process(target=client_process, args=(i, server.url, plan, specs, results, go, deadline), daemon=True)
            for i, specs in enumerate(assign(tenants, plan))
            if specs
        ]
        for p in procs:
            p.start()
        payloads: list[dict[str, Any]] = []

        def receive(limit: float) -> Any:
            """The next message; queue.Empty past ``limit`` or when a client process died."""
            while True:
                with contextlib.suppress(queue.Empty):
                    return results.get(timeout=1.0)
                if time.monotonic() > limit or any(p.exitcode not in (None, 0) for p in procs):
                    raise queue.Empty

        try:
            ready = 0
            limit = time.monotonic() + CALL_TIMEOUT * 3 + 30
            while ready < len(procs):
                ready += receive(limit)[0] == "ready"
            report.setup["clients_s"] = time.monotonic() - t0
            pids = {"gateway": [server.proc.pid], "workers": server.worker_pids()}
            cpu0 = {k: sum(cpu_seconds(p) for p in v) for k, v in pids.items()}
            deadline.value = time.monotonic() + plan.seconds
            window_start = time.monotonic()
            go.set()
            out(
                f"{plan.clients} clients connected in {report.setup['clients_s']:.1f} s; running {plan.seconds:g} s",
            )
            limit = deadline.value + CALL_TIMEOUT + 60
            while len(payloads) < len(procs):
                msg = receive(limit)
                if msg[0] == "done":
                    payloads.append(msg[2])
                    if len(payloads) == 1:
                        report.elapsed = time.monotonic() - window_start
                        report.cpu = {k: sum(cpu_seconds(p) for p in v) - cpu0[k] for k, v in pids.items()}
        except queue.Empty:
            report.errors += 1
            dead = [p.exitcode for p in procs if p.exitcode not in (None, 0)]
            report.error_samples.append(
                f"{len(procs) - len(payloads)} client processes did not report in time (exit codes: {dead})"
            )
        finally:
            for p in procs:
                p.join(10)
                if p.is_alive():
                    p.kill()
        report.elapsed = report.elapsed or plan.seconds
        collect(report, payloads)
        verify(report, server, plan, payloads)
        report.worker_rss_mb = [rss_mb(p) for p in server.worker_pids()]
        report.gateway_rss_mb = rss_mb(server.proc.pid)
    return report


def collect(report: Report, payloads: list[dict[str, Any]]) -> None:
    lat: dict[tuple[str, str], list[np.ndarray]] = {(a, o): [] for a in APIS for o in OPS}
    for payload in payloads:
        report.cpu["clients"] = report.cpu.get("clients", 0.0) + payload["cpu"]
        if payload["hung"]:
            report.errors += len(payload["hung"])
            report.error_samples.append(f"clients still running after the deadline: {payload['hung'][:5]}")
        for c in payload["clients"]:
            for op in OPS:
                lat[(c["api"], op)].append(c[op])
            report.errors += c["error_count"]
            report.error_samples += c["errors"][: max(0, 10 - len(report.error_samples))]
            tenant = c["tenant"]
            report.acked[tenant] = report.acked.get(tenant, 0) + len(c["acked"]) * report.plan.add_batch
            report.uncertain[tenant] = report.uncertain.get(tenant, 0) + len(c["failed"]) * report.plan.add_batch
    report.latencies = {k: np.concatenate(v) if v else np.zeros(0, np.int64) for k, v in lat.items()}


def verify(report: Report, server: ServerProcess, plan: Plan, payloads: list[dict[str, Any]]) -> None:
    """ntotal == initial + acknowledged adds, per tenant; first/last acknowledged batch of each client readable."""
    from faiss_proxy_server.catalog import Catalog

    catalog = Catalog(server.data_dir)
    keys = {t.name: catalog.create_key(t.name, name="verify", read_only=True)[1] for t in catalog.list_tenants()}
    conns = {t: Http(server.url, k) for t, k in keys.items()}
    try:
        for tenant, http_ in sorted(conns.items()):
            try:
                ntotal = int(http_.json("GET", f"/v1/index/{INDEX}/ntotal")["ntotal"])
            except (OSError, RuntimeError, ValueError, http.client.HTTPException) as exc:
                report.errors += 1
                report.error_samples.append(f"{tenant}: ntotal failed: {exc}")
                continue
            report.ntotal[tenant] = ntotal
            low = plan.n + report.acked.get(tenant, 0)
            high = low + report.uncertain.get(tenant, 0)
            if ntotal < low:
                report.lost += low - ntotal
            if ntotal > high:
                report.errors += 1
                report.error_samples.append(f"{tenant}: ntotal {ntotal} > {high} (initial + every add sent)")
        for payload in payloads:
            for c in payload["clients"]:
                for first in {*c["acked"][:1], *c["acked"][-1:]}:
                    for ident in (first, first + plan.add_batch - 1):
                        status, _ = conns[c["tenant"]].call("GET", f"/v1/index/{INDEX}/vectors/{ident}")
                        report.spot_checked += 1
                        report.spot_missing += status != 200
    finally:
        for http_ in conns.values():
            http_.close()


# --------------------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------------------
def _pct(ns: np.ndarray) -> tuple[str, str]:
    if not len(ns):
        return "-", "-"
    p50, p99 = np.percentile(ns.astype(np.float64), [50, 99]) / 1e6
    return f"{p50:.2f}", f"{p99:.2f}"


def print_report(report: Report, out: Callable[[str], None] = print) -> None:
    plan = report.plan
    rpc_clients = plan.tenants * sum(
        1 for j in range(plan.clients_per_tenant) if plan.apis[j % len(plan.apis)] == "rpc"
    )
    out(
        f"\nLoad: {plan.tenants} tenants x {plan.clients_per_tenant} clients "
        f"({rpc_clients} RPC + {plan.clients - rpc_clients} REST, closed loop, {plan.procs} client processes), "
        f"{report.elapsed:.1f} s; {plan.index_type} {plan.n:,} x {plan.d} per tenant; k={K}; "
        f"{plan.add_share:.0%} adds of {plan.add_batch} vectors; {os.cpu_count()} CPUs, loopback"
        + (f"; workers at nice {plan.worker_nice}" if plan.worker_nice else "")
    )
    rows: list[tuple[str, str, np.ndarray]] = []
    for api in APIS:
        for op in OPS:
            rows.append((api, op, report.latencies.get((api, op), np.zeros(0, np.int64))))
    for api in APIS:
        rows.append((api, "all", np.concatenate([report.latencies.get((api, op), np.zeros(0)) for op in OPS])))
    for op in OPS:
        rows.append(("all", op, np.concatenate([report.latencies.get((api, op), np.zeros(0)) for api in APIS])))
    every = np.concatenate([v for v in report.latencies.values()]) if report.latencies else np.zeros(0)
    rows.append(("all", "all", every))
    head = f"{'api':<6}{'op':<8}{'ops':>10}{'ops/s':>10}{'p50 ms':>10}{'p99 ms':>10}"
    out(head)
    out("-" * len(head))
    elapsed = max(report.elapsed, 1e-9)
    for api, op, ns in rows:
        p50, p99 = _pct(ns)
        out(f"{api:<6}{op:<8}{len(ns):>10,}{len(ns) / elapsed:>10,.0f}{p50:>10}{p99:>10}")
    acked = sum(report.acked.values())
    exact = sum(1 for t, v in report.ntotal.items() if v == plan.n + report.acked.get(t, 0))
    out(f"errors: {report.errors}")
    for line in report.error_samples[:10]:
        out(f"  {line}")
    out(
        f"acknowledged adds: {acked:,} vectors; ntotal == initial + acknowledged for {exact}/{plan.tenants} tenants; "
        f"lost: {report.lost}; read back {report.spot_checked - report.spot_missing}/{report.spot_checked} "
        "first/last acknowledged ids"
    )
    if report.cpu:
        cpu = ", ".join(f"{k} {v:.0f} s" for k, v in report.cpu.items())
        out(f"CPU during the run: {cpu} (of {elapsed * (os.cpu_count() or 1):.0f} CPU-seconds available)")
    rss = [v for v in report.worker_rss_mb if v == v]
    if rss:
        out(
            f"memory: {len(rss)} workers, RSS {sum(rss):,.0f} MiB in all ({np.mean(rss):.0f} MiB each, "
            f"max {max(rss):.0f}); gateway {report.gateway_rss_mb:.0f} MiB"
        )
    out("PASS: zero errors, nothing acknowledged lost" if report.ok else "FAIL")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--tenants", type=int, default=None, help="tenants (default 50; 10 with --quick)")
    parser.add_argument(
        "--clients-per-tenant", type=int, default=4, help="clients per tenant, RPC and REST alternating"
    )
    parser.add_argument("--seconds", type=float, default=None, help="length of the timed run (default 60; --quick 10)")
    parser.add_argument("--n", type=int, default=None, help="vectors per tenant's index (default 10000; --quick 2000)")
    parser.add_argument("--d", type=int, default=None, help="dimension (default 128; --quick 32)")
    parser.add_argument("--procs", type=int, default=4, help="client processes (default 4)")
    parser.add_argument("--add-batch", type=int, default=10, help="vectors per add (default 10)")
    parser.add_argument("--add-share", type=float, default=0.1, help="share of operations that add (default 0.1)")
    parser.add_argument("--index-type", default="IndexFlatL2", help="REST index_type (default IndexFlatL2)")
    parser.add_argument("--think-ms", type=float, default=0.0, help="pause after each operation (default 0)")
    parser.add_argument("--rest-threads", type=int, default=0, help="server --rest-threads (default: REST clients)")
    parser.add_argument(
        "--apis", default="rpc,rest", help="APIs the clients of a tenant cycle through (default rpc,rest; or rpc, rest)"
    )
    parser.add_argument(
        "--worker-nice",
        type=int,
        default=0,
        help="nice value for the tenant workers after set-up (default 0; the gateway keeps 0): an experiment in "
        "giving the gateway, which serves every tenant's REST requests, more than one process's share of CPU",
    )
    parser.add_argument("--quick", action="store_true", help="10 tenants, 2k x 32, 10 s")
    args = parser.parse_args(argv)
    quick = args.quick
    plan = Plan(
        tenants=args.tenants or (10 if quick else 50),
        clients_per_tenant=args.clients_per_tenant,
        seconds=args.seconds or (10.0 if quick else 60.0),
        n=args.n or (2000 if quick else 10_000),
        d=args.d or (32 if quick else 128),
        procs=max(1, args.procs),
        add_batch=args.add_batch,
        add_share=args.add_share,
        index_type=args.index_type,
        think_ms=args.think_ms,
        rest_threads=args.rest_threads,
        apis=tuple(a.strip() for a in args.apis.split(",")),
        worker_nice=args.worker_nice,
    )
    if not plan.apis or set(plan.apis) - set(APIS):
        parser.error("--apis: a comma-separated list of rpc and rest")
    if not re.fullmatch(r"[A-Za-z0-9_,]+", plan.index_type):
        parser.error("--index-type: a class name or an index_factory string")
    started = time.monotonic()
    report = run(plan, out=lambda s: print(s, flush=True))
    print_report(report)
    print(f"ran {time.monotonic() - started:.0f} s in all")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())

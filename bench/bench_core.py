"""Core latency and throughput benchmark: faiss-proxy against local FAISS.

What is measured, for ``IndexFlatL2`` with d=128 float32 vectors (seeded random data)
at nb=10k and nb=100k:

* **single-query latency** (nq=1, k=10): p50 and p99 over many queries, after a
  warm-up.  This is where the proxy's fixed cost (one RPC round trip, argument
  encoding, result decoding) shows; the target is local p50 + 150 µs.
* **batch search** (nq=1000, k=10): median wall time of a few runs.  Here the
  transport cost should vanish behind the compute; the target is ≤ 1.1x local.
* **add throughput**: MB/s for adding the nb vectors to a fresh index (median of a
  few runs, after one untimed add: see :func:`time_add`).  For a flat index, ``add``
  is little more than a copy, so this is essentially the transport's bandwidth; the
  target is ≥ 500 MB/s.
* for reference, the p50 of reading ``index.ntotal``: for the proxy, the bare cost
  of one round trip with no array in it (no target).

Each metric is taken for three configurations:

1. local FAISS with **one OpenMP thread** — the baseline the targets refer to.
   On a small machine (2 cores), OpenMP's default team makes a *single small*
   query much slower (thread wake-up and busy-wait costs dwarf the work), and the
   server's worker deliberately runs small calls on one thread for that reason.
   Comparing the proxy with a multi-threaded local run would flatter it.
2. local FAISS with the **default** number of OpenMP threads, for reference.
3. **faiss-proxy**: a remote index made with ``faiss_proxy.IndexFlatL2(128)`` after
   ``faiss_proxy.configure(...)``; every call is a round trip to the tenant's worker.
   The targets are judged on this, the TCP port.  When the script starts the server
   itself it also gives it a Unix socket (``--unix-socket``), and single queries are
   measured over that too, as a third index in the same rounds (``--unix-url`` does
   the same for a running server); its line is marked as such.

The single-query p50/p99 of local FAISS (1 thread) and of the proxy are measured in
20 alternating rounds (a local block and a proxy block of 50 queries, each after its
own warm-up) and pooled: the host's speed drifts by a third within minutes on a shared
VM, and two blocks measured a minute apart would compare two different machines.  The
vCPUs are not equally fast either, so when the script started the server itself, each
round pins this process to one of two CPUs and the worker to the other, and the next
round swaps them: local FAISS and the worker's search each run on each CPU equally
often.  The figures of the default-thread configuration come from one block of their own.

The server's workers keep large allocations on transparent huge pages
(``worker_huge_pages``, on by default), which makes a 100k scan ~10% faster than in a
plain process.  So that the targets measure the proxy's own cost, not that tuning, the
script re-runs itself with the same glibc tunable (``GLIBC_TUNABLES=glibc.malloc.hugetlb=1``)
and local FAISS keeps its index on huge pages too; ``--plain-local`` measures local
FAISS as a plain process runs it (which flatters the proxy at 100k).  The header line
says which it is.

Before timing, the remote search result is compared with the local one (same
labels ``I``), so the benchmark cannot silently measure garbage.

By default the script starts its own server (``python -m faiss_proxy_server serve
--port 0``) in a temporary data directory, with a tenant and an API key made by the
``tenant create`` / ``key create`` commands, and stops it at the end.  With
``--url URL --key KEY`` it benchmarks a server that is already running.

    python bench/bench_core.py                  # full run: 10k and 100k, about a minute
    python bench/bench_core.py --quick          # 10k only, fewer repetitions, seconds
    python bench/bench_core.py --plain-local    # local FAISS on small pages (flatters the proxy)
    python bench/bench_core.py --url URL --key KEY [--unix-url unix:///path]   # a running server
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np

import faiss_proxy
from faiss_proxy._client import Client
from faiss_proxy_server.supervisor import with_huge_pages

sys.path.insert(0, str(Path(__file__).resolve().parent))
import peers

D = 128
K = 10
BATCH_NQ = 1000
SEED = 1234
TENANT = "bench"

P50_SLACK_US = 150.0
BATCH_MAX_RATIO = 1.1
ADD_MIN_MBPS = 500.0
PEER_NB = 100_000  # the size the peers were measured at


# --------------------------------------------------------------------------------------
# settings and results
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Plan:
    """How much to measure."""

    sizes: tuple[int, ...]
    queries: int
    warmup: int
    batch_runs: int
    add_runs: int
    #: Local and remote single queries alternate in this many blocks of queries/rounds.
    rounds: int


FULL = Plan(sizes=(10_000, 100_000), queries=1000, warmup=100, batch_runs=5, add_runs=5, rounds=20)
QUICK = Plan(sizes=(10_000,), queries=200, warmup=20, batch_runs=3, add_runs=3, rounds=4)


@dataclass(frozen=True)
class Result:
    """The figures of one configuration at one database size."""

    p50_us: float
    p99_us: float
    attr_us: float
    batch_ms: float
    add_mbps: float


@dataclass(frozen=True)
class Dataset:
    xb: np.ndarray
    xq: np.ndarray

    @property
    def nb(self) -> int:
        return int(self.xb.shape[0])


def make_dataset(nb: int, nq: int) -> Dataset:
    rng = np.random.default_rng(SEED + nb)
    xb = rng.random((nb, D), dtype=np.float32)
    xq = aligned(rng.random((nq, D), dtype=np.float32))
    return Dataset(xb, xq)


def aligned(a: np.ndarray) -> np.ndarray:
    """A copy of ``a`` that starts on a 64-byte boundary, so that each query row
    (512 bytes at d=128) does too.

    The worker copies the vectors of a small request onto 64-byte boundaries before
    faiss sees them (a query off the boundary made a 100k flat scan 27-40 µs slower
    here); NumPy places an array wherever malloc does (16 or 32 bytes past a
    boundary, here).  Local FAISS gets aligned queries too, like for like."""
    block = np.empty(a.nbytes + 64, np.uint8)
    shift = -block.ctypes.data % 64
    out = block[shift : shift + a.nbytes].view(a.dtype).reshape(a.shape)
    out[...] = a
    return out


# --------------------------------------------------------------------------------------
# measurements (the same code for local and remote indexes)
# --------------------------------------------------------------------------------------
IndexFactory = Callable[[], Any]


def single_query_samples(index: Any, xq: np.ndarray, queries: int, warmup: int) -> np.ndarray:
    """Latencies in µs of ``queries`` searches with nq=1, after ``warmup`` untimed ones."""
    rows = [xq[i : i + 1] for i in range(queries + warmup)]
    for q in rows[:warmup]:
        index.search(q, K)
    samples = np.empty(queries, dtype=np.float64)
    for i, q in enumerate(rows[warmup:]):
        t0 = time.perf_counter_ns()
        index.search(q, K)
        samples[i] = time.perf_counter_ns() - t0
    return samples / 1e3


def percentiles(samples: np.ndarray) -> tuple[float, float]:
    p50, p99 = np.percentile(samples, [50, 99])
    return float(p50), float(p99)


def time_single_queries(index: Any, xq: np.ndarray, queries: int, warmup: int) -> tuple[float, float]:
    """p50 and p99 latency in µs of ``queries`` searches with nq=1."""
    return percentiles(single_query_samples(index, xq, queries, warmup))


def alternation_cpus() -> list[int]:
    """The two CPUs the single-query rounds take turns on ([] where this process
    cannot choose its CPU, or has only one)."""
    getaffinity = getattr(os, "sched_getaffinity", None)
    if getaffinity is None:
        return []
    allowed = sorted(getaffinity(0))
    return allowed[:2] if len(allowed) >= 2 else []


def worker_threads(server_pid: int) -> list[int]:
    """The thread ids of the server's worker processes (its children), from /proc."""
    tids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if ppid == server_pid:
                tids += [int(t.name) for t in (entry / "task").iterdir()]
        except (OSError, ValueError, IndexError):
            continue  # gone meanwhile
    return tids


def pin(tids: list[int], cpus: set[int]) -> None:
    for tid in tids:
        try:
            os.sched_setaffinity(tid, cpus)
        except OSError:
            pass  # a thread that has ended


def alternate_single_queries(
    local: Any,
    remotes: list[Any],
    xq: np.ndarray,
    plan: Plan,
    cpus: list[int] | None = None,
    server_pid: int | None = None,
) -> tuple[tuple[float, float], list[tuple[float, float]], list[list[float]]]:
    """p50/p99 of local and of each remote index's single queries, measured in
    alternating blocks (the remotes in turn: TCP, and the Unix socket where measured).

    The host's speed drifts by a third within minutes on a shared VM, so a local
    block and a remote block measured seconds apart compare two different machines.
    Alternating ``plan.rounds`` blocks of each (every block after its own warm-up:
    the other index has just been scanned) and pooling the samples gives both
    sides the same mix of good and bad minutes.

    The CPUs of a VM are not equally fast either: on the reference VM a 100k search
    took 36-130 µs longer on one vCPU than on the other (three runs of 16
    alternations).  So with two ``cpus`` (and the server started by this script,
    ``server_pid``), each round runs this process on one of them and the server's
    worker on the other, and the next round swaps them: local FAISS and the worker
    each search on each CPU equally often.  (Without pinning, where local FAISS
    searched was the scheduler's choice; pinning this process alone once put the
    worker on its CPU for a dozen rounds, 1 ms per query.)

    Also returns, per remote, the p50 difference of each round, to show the spread."""
    per_block = max(1, plan.queries // plan.rounds)
    warmup = max(1, plan.warmup // plan.rounds)
    local_samples: list[np.ndarray] = []
    remote_samples: list[list[np.ndarray]] = [[] for _ in remotes]
    rounds: list[list[float]] = [[] for _ in remotes]
    before = os.sched_getaffinity(0) if cpus else set()
    try:
        for r in range(plan.rounds):
            if cpus and server_pid is not None:
                mine, other = cpus[r % 2], cpus[(r + 1) % 2]
                os.sched_setaffinity(0, {mine})
                pin(worker_threads(server_pid), {other})
            a = single_query_samples(local, xq, per_block, warmup)
            local_samples.append(a)
            # The remotes take turns in both orders, so neither always follows local FAISS.
            order = list(range(len(remotes))) if r % 4 < 2 else list(reversed(range(len(remotes))))
            for i in order:
                b = single_query_samples(remotes[i], xq, per_block, warmup)
                remote_samples[i].append(b)
                rounds[i].append(float(np.median(b) - np.median(a)))
    finally:
        if cpus and server_pid is not None:
            os.sched_setaffinity(0, before)
            pin(worker_threads(server_pid), before)
    return (
        percentiles(np.concatenate(local_samples)),
        [percentiles(np.concatenate(samples)) for samples in remote_samples],
        rounds,
    )


def cpu_ticks() -> tuple[int, int] | None:
    """(steal, total): the CPU time the hypervisor took from this VM's CPUs, and all
    CPU time, in ticks since boot (Linux's ``/proc/stat``); None elsewhere."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
    except OSError:
        return None
    if len(fields) < 9 or fields[0] != "cpu":
        return None
    ticks = [int(x) for x in fields[1:9]]  # user nice system idle iowait irq softirq steal
    return ticks[7], sum(ticks)


def stolen(before: tuple[int, int] | None, after: tuple[int, int] | None) -> float | None:
    """The share of CPU time stolen between two :func:`cpu_ticks` readings."""
    if before is None or after is None or after[1] <= before[1]:
        return None
    return (after[0] - before[0]) / (after[1] - before[1])


def time_attribute(index: Any, reads: int) -> float:
    """p50 in µs of reading ``index.ntotal``: for the proxy, the bare cost of one round trip."""
    samples = np.empty(reads, dtype=np.float64)
    for i in range(reads):
        t0 = time.perf_counter_ns()
        _ = index.ntotal
        samples[i] = time.perf_counter_ns() - t0
    return float(np.median(samples[reads // 10 :]) / 1e3)


def time_batch(index: Any, xq: np.ndarray, runs: int) -> float:
    """Median wall time in ms of a search with nq=len(xq), after one warm-up run."""
    index.search(xq, K)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        index.search(xq, K)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def time_add(make_index: IndexFactory, xb: np.ndarray, runs: int) -> float:
    """Median throughput in MB/s (10^6 bytes) of adding ``xb`` to a fresh index,
    after one untimed add (every configuration gets it).

    The warm-up is about the VM, not the proxy: memory a process has not touched
    lately may have been handed back to the hypervisor (free page reporting), and
    the first touch of each page then faults on the host as well.  A 100k add into
    a fresh local index took 114-318 MB/s right after 5 s of sleep and 2,800-3,600
    MB/s without the sleep, where the dataset's just-freed temporaries were reused;
    a newly started worker has no such memory, and its first adds measured 46-131
    MB/s.  The steady state is what the target is about."""
    warm = make_index()
    warm.add(xb)
    warm.reset()
    del warm
    times = []
    for _ in range(runs):
        index = make_index()
        t0 = time.perf_counter()
        index.add(xb)
        times.append(time.perf_counter() - t0)
        index.reset()
        del index
    return xb.nbytes / 1e6 / statistics.median(times)


def measure(make_index: IndexFactory, data: Dataset, plan: Plan) -> tuple[Result, Any]:
    """All figures of one configuration, and its filled index (for the alternating
    single-query rounds)."""
    add_mbps = time_add(make_index, data.xb, plan.add_runs)
    index = make_index()
    index.add(data.xb)
    p50, p99 = time_single_queries(index, data.xq, plan.queries, plan.warmup)
    attr_us = time_attribute(index, plan.queries)
    batch_ms = time_batch(index, data.xq[:BATCH_NQ], plan.batch_runs)
    return Result(p50, p99, attr_us, batch_ms, add_mbps), index


@contextlib.contextmanager
def omp_threads(n: int) -> Iterator[None]:
    """Run the block with ``n`` OpenMP threads in this process."""
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(n)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


def check_same_result(data: Dataset) -> str:
    """Search the same queries locally and remotely; fail loudly if the labels differ."""
    xq = data.xq[:BATCH_NQ]
    local = faiss.IndexFlatL2(D)
    local.add(data.xb)
    remote = faiss_proxy.IndexFlatL2(D)
    remote.add(data.xb)
    if remote.ntotal != data.nb:
        raise SystemExit(f"remote ntotal is {remote.ntotal}, expected {data.nb}")
    d_local, i_local = local.search(xq, K)
    d_remote, i_remote = remote.search(xq, K)
    remote.reset()
    same = np.asarray(i_remote) == i_local
    if same.all():
        return "identical"
    # Different labels are acceptable only as swapped near-ties with equal distances.
    if np.allclose(d_remote, d_local, rtol=1e-5, atol=1e-5) and same.mean() > 0.999:
        return f"equal distances, {int((~same).sum())} tied labels swapped"
    raise SystemExit(f"remote search differs from local search at nb={data.nb}: {same.mean():.1%} labels match")


# --------------------------------------------------------------------------------------
# server
# --------------------------------------------------------------------------------------
def _cli(*args: str, env: dict[str, str] | None = None, cwd: str | None = None) -> str:
    cmd = [sys.executable, "-m", "faiss_proxy_server", *args]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env, cwd=cwd)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(args[:2])} failed ({done.returncode}):\n{done.stderr}")
    return done.stdout


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/v1/health", timeout=2) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False


@contextlib.contextmanager
def local_server(packages: Path | None = None) -> Iterator[tuple[str, str, int | None, str]]:
    """Start ``faiss-proxy serve`` in a temporary data dir, on a free port and a Unix
    socket; yield (url, api key, pid, the socket's ``unix://`` URL).  ``packages``: a
    directory holding the ``faiss_proxy`` and ``faiss_proxy_server`` to run instead
    of the installed ones (``ab_core.py``)."""
    with tempfile.TemporaryDirectory(prefix="faiss-proxy-bench-", dir="/tmp") as tmp:
        data_dir = str(Path(tmp) / "data")
        log_path = Path(tmp) / "server.log"
        unix_socket = str(Path(tmp) / "rpc.sock")
        env = None if packages is None else dict(os.environ, PYTHONPATH=str(packages))  # (workers inherit it)
        cwd = None if packages is None else tmp  # not a checkout: nothing shadows the packages chosen
        with open(log_path, "w") as log:
            proc = subprocess.Popen(
                [
                    *(sys.executable, "-m", "faiss_proxy_server", "serve", "--port", "0", "--data-dir", data_dir),
                    *("--unix-socket", unix_socket),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                text=True,
                env=env,
                cwd=cwd,
            )
        try:
            url = _wait_for_server(proc, log_path)
            _cli("tenant", "create", TENANT, "--data-dir", data_dir, env=env, cwd=cwd)
            key = _cli("key", "create", TENANT, "--data-dir", data_dir, env=env, cwd=cwd).strip().splitlines()[-1]
            yield url, key, proc.pid, "unix://" + unix_socket
        finally:
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _wait_for_server(proc: subprocess.Popen[str], log_path: Path, timeout: float = 30.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        match = re.search(r"listening on (http://\S+)", log_path.read_text())
        if match and _healthy(match.group(1)):
            return match.group(1)
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    raise SystemExit(f"faiss-proxy serve did not come up:\n{log_path.read_text()}")


# --------------------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------------------
def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def print_report(
    nb: int,
    base: Result,
    default: Result,
    proxy: Result,
    check: str,
    rounds: list[float],
    unix: tuple[float, float, list[float]] | None = None,
    steal: float | None = None,
) -> list[bool]:
    """Print the table for one database size; return the targets' outcomes.
    ``unix``: p50, p99 and per-round differences over the Unix socket, where measured;
    ``steal``: the share of CPU time the hypervisor took during the single-query rounds."""
    rows = [
        ("single query p50 (µs)", base.p50_us, default.p50_us, proxy.p50_us, "{:.1f}"),
        ("single query p99 (µs)", base.p99_us, default.p99_us, proxy.p99_us, "{:.1f}"),
        ("read .ntotal p50 (µs)", base.attr_us, default.attr_us, proxy.attr_us, "{:.1f}"),
        (f"batch nq={BATCH_NQ} (ms)", base.batch_ms, default.batch_ms, proxy.batch_ms, "{:.2f}"),
        ("add (MB/s)", base.add_mbps, default.add_mbps, proxy.add_mbps, "{:.0f}"),
    ]
    print(f"\nIndexFlatL2 d={D} nb={nb:,} k={K}   (remote result vs local: {check})")
    header = f"{'metric':<24}{'local 1 thr':>13}{'local default':>15}{'proxy':>11}{'proxy/1 thr':>13}"
    print(header)
    print("-" * len(header))
    for name, b, dflt, p, fmt in rows:
        ratio = "-" if name.startswith("read") else f"{p / b:.2f}x"
        print(f"{name:<24}{fmt.format(b):>13}{fmt.format(dflt):>15}{fmt.format(p):>11}{ratio:>13}")
    spread = " ".join(f"{r:+.0f}" for r in rounds)
    print(f"single query p50, proxy - local 1 thr, per round (µs): {spread}")
    if unix is not None:
        print(
            f"single query over the Unix socket: p50 {unix[0]:.1f} µs, p99 {unix[1]:.1f} µs "
            f"({unix[0] / base.p50_us:.2f}x local); per round (µs): {' '.join(f'{r:+.0f}' for r in unix[2])}"
        )
    if steal is not None:
        # Time the hypervisor gave to other guests.  A busy neighbour on the same
        # physical core does not show here, only as a slow bare round trip (.ntotal)
        # and slow local FAISS; either way the proxy, on two CPUs at once, loses more
        # than local FAISS on one.
        print(f"steal during the single-query rounds: {steal:.1%} of CPU time (the hypervisor's)")

    diff = proxy.p50_us - base.p50_us
    targets = [
        (f"single query p50 ≤ local + {P50_SLACK_US:.0f} µs", f"{diff:+.1f} µs", diff <= P50_SLACK_US),
        (
            f"batch nq={BATCH_NQ} ≤ {BATCH_MAX_RATIO}x local",
            f"{proxy.batch_ms / base.batch_ms:.2f}x",
            proxy.batch_ms <= BATCH_MAX_RATIO * base.batch_ms,
        ),
        (f"add ≥ {ADD_MIN_MBPS:.0f} MB/s", f"{proxy.add_mbps:.0f} MB/s", proxy.add_mbps >= ADD_MIN_MBPS),
    ]
    for i, (label, value, ok) in enumerate(targets):
        print(f"  {verdict(ok)}  {label:<34}{value:>14}")
        if i == 0 and unix is not None:
            # Extra, under the single-query target: the targets are judged on the TCP
            # port (the default transport).
            unix_diff = unix[0] - base.p50_us
            extra, extra_ok = f"{unix_diff:+.1f} µs", verdict(unix_diff <= P50_SLACK_US)
            print(f"  {'':4}  {'the same over the Unix socket':<34}{extra:>14}  (extra: {extra_ok})")
    return [ok for _, _, ok in targets]


# --------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------
def run(plan: Plan, url: str, server_pid: int | None = None, unix: Client | None = None) -> bool:
    default_threads = faiss.omp_get_max_threads()
    print(
        f"faiss {faiss.__version__}, {os.cpu_count()} CPUs, local default OpenMP threads: {default_threads}, "
        f"server {url}"
    )
    print(
        f"{plan.queries} single queries after {plan.warmup} warm-up; medians of {plan.batch_runs} batch and "
        f"{plan.add_runs} add runs"
    )
    cpus = alternation_cpus() if server_pid is not None else []
    turns = f", taking turns on CPUs {cpus[0]} and {cpus[1]}, the worker on the other" if cpus else ""
    also = ", proxy over the Unix socket" if unix is not None else ""
    print(
        f"single queries (local 1 thr, proxy{also}): {plan.rounds} alternating rounds{turns}; "
        f"this process {huge_pages_note()}"
    )
    outcomes: list[bool] = []
    for nb in plan.sizes:
        data = make_dataset(nb, max(BATCH_NQ, plan.queries + plan.warmup))
        check = check_same_result(data)
        with omp_threads(1):
            base, local_index = measure(lambda: faiss.IndexFlatL2(D), data, plan)
        default, default_index = measure(lambda: faiss.IndexFlatL2(D), data, plan)
        default_index.reset()
        proxy, remote_index = measure(lambda: faiss_proxy.IndexFlatL2(D), data, plan)
        remotes = [remote_index]
        if unix is not None:  # the same server, over its Unix socket: single queries only
            remotes.append(unix.lookup("IndexFlatL2")(D))
            remotes[1].add(data.xb)
            if not np.array_equal(remotes[1].search(data.xq[:10], K)[1], remote_index.search(data.xq[:10], K)[1]):
                raise SystemExit("search over the Unix socket differs from search over TCP")
        ticks = cpu_ticks()
        with omp_threads(1):
            (b50, b99), measured, rounds = alternate_single_queries(
                local_index, remotes, data.xq, plan, cpus, server_pid
            )
        steal = stolen(ticks, cpu_ticks())
        base = dataclasses.replace(base, p50_us=b50, p99_us=b99)
        proxy = dataclasses.replace(proxy, p50_us=measured[0][0], p99_us=measured[0][1])
        over_unix = (*measured[1], rounds[1]) if unix is not None else None
        local_index.reset()
        for remote in remotes:
            remote.reset()
        outcomes += print_report(nb, base, default, proxy, check, rounds[0], over_unix, steal)
        if nb == PEER_NB:
            print(f"\npeers at {nb:,} x {D}, measured on the reference VM (bench/peers.py; not re-run here):")
            for line in peers.ratios(proxy.p50_us / 1000, proxy.add_mbps):
                print(f"  {line}")
    return all(outcomes)


def huge_pages_note() -> str:
    """Whether local FAISS here has what the server's workers have by default."""
    if "glibc.malloc.hugetlb=1" in os.environ.get("GLIBC_TUNABLES", ""):
        return "keeps large allocations on huge pages, as the server's workers do (like for like)"
    return (
        "keeps large allocations on small pages, unlike the server's workers (worker_huge_pages), "
        "whose large scans are ~10% faster for it: the comparison flatters the proxy"
    )


def like_for_like(argv: list[str], script: str = __file__) -> None:
    """Re-run this script with the environment the server gives its workers'
    allocator (:func:`with_huge_pages`), unless ``GLIBC_TUNABLES`` already says.

    Local FAISS then keeps its index on huge pages too, so the difference measured is
    the proxy's own cost, not the workers' memory tuning (a 100k scan is ~10% faster
    on huge pages).  glibc reads tunables only at start-up, hence the re-exec."""
    env = with_huge_pages(dict(os.environ))
    if env.get("GLIBC_TUNABLES") == os.environ.get("GLIBC_TUNABLES"):
        return  # set already (or the caller's own glibc.malloc.hugetlb value)
    sys.stdout.flush()
    os.execve(sys.executable, [sys.executable, os.path.abspath(script), *argv], env)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="10k only and fewer repetitions (< 1 minute)")
    parser.add_argument("--url", help="benchmark this running server instead of starting one")
    parser.add_argument("--key", help="API key for --url")
    parser.add_argument(
        "--unix-url", help="with --url: also measure single queries over this unix:///path (its unix_socket)"
    )
    parser.add_argument(
        "--plain-local",
        action="store_true",
        help="measure local FAISS in a plain process (small pages), not like for like with the workers",
    )
    args = parser.parse_args(argv)
    if bool(args.url) != bool(args.key):
        parser.error("--url and --key go together")
    if not args.plain_local:
        like_for_like(sys.argv[1:] if argv is None else argv)
    plan = QUICK if args.quick else FULL

    started = time.perf_counter()
    server: contextlib.AbstractContextManager[tuple[str, str, int | None, str | None]]
    if args.url:
        server = contextlib.nullcontext((args.url, args.key, None, args.unix_url))
    else:
        server = local_server()
    with server as (url, key, server_pid, unix_url):
        faiss_proxy.configure(api_url=url, api_key=key)
        unix = Client(unix_url, key) if unix_url else None
        try:
            all_pass = run(plan, url, server_pid, unix)
        finally:
            faiss_proxy.configure(api_url="")
            if unix is not None:
                unix.close()
    print(f"\n{'all targets met' if all_pass else 'some targets missed'}; ran {time.perf_counter() - started:.0f} s")
    return 0 if all_pass else 1


if __name__ == "__main__":
    sys.exit(main())

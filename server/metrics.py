"""Metrics across the gateway and the tenant workers, in Prometheus format.

RPC calls run in the tenant workers; REST requests are timed where they are served, in
the gateway or, on a connection handed to the worker, in the worker.
Each worker keeps per-operation counts and a latency histogram
(:class:`OperationStats`) and every second sends what changed since its last
report to the gateway over its control channel (``{"event": "stats", ...}``),
then starts counting from zero again.  The gateway adds these deltas to its
running totals (:class:`GatewayMetrics`), so counters keep growing across worker
restarts, and :class:`MetricsCollector` turns the totals into metric families
for ``prometheus_client`` when ``/v1/metrics`` is scraped.

Exposed (all prefixed ``faiss_proxy_``):

``requests_total``, ``request_errors_total``, ``request_duration_seconds``
    per ``tenant``, ``api`` (``rpc`` or ``rest``) and ``operation``
    (``call.search``, ``function.index_factory``, ``new``, ``getattr``; REST:
    ``search``, ``upsert``, ...)
``rpc_sessions``                    open RPC sessions per tenant
``rest_direct_connections``         REST connections its worker serves, per tenant
``rest_handoffs_total``, ``rest_handbacks_total``   REST connections handed to
    workers, and handed back to the gateway (see faiss_proxy_server.restdirect)
``workers``, ``worker_restarts_total``   running workers; workers that died
``worker_rss_bytes``                resident memory of each tenant's worker
``named_indexes``, ``vectors``, ``wal_bytes``   per tenant, as last reported
    (vectors and WAL bytes of the named indexes the worker has loaded; WAL
    bytes are those not yet covered by a snapshot)
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

__all__ = ["BUCKETS", "OperationStats", "GatewayMetrics", "MetricsCollector", "rss_bytes"]

#: Latency buckets in seconds: from a 100 µs RPC call to a minute-long training.
BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5, 10, 30, 60)


class OperationStats:
    """Counts, errors and a latency histogram per operation (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ops: dict[str, list[Any]] = {}
        self.inflight = 0  # calls running now (graceful shutdown waits for them)

    def begin(self) -> None:
        with self._lock:
            self.inflight += 1

    def record(self, op: str, seconds: float, ok: bool) -> None:
        slot = bisect.bisect_left(BUCKETS, seconds)
        with self._lock:
            self.inflight -= 1
            entry = self._ops.get(op)
            if entry is None:
                entry = self._ops[op] = [0, 0, 0.0, [0] * (len(BUCKETS) + 1)]
            entry[0] += 1
            if not ok:
                entry[1] += 1
            entry[2] += seconds
            entry[3][slot] += 1

    def drain(self) -> list[list[Any]]:
        """What was counted since the last drain, as ``[op, count, errors, sum, buckets]``."""
        with self._lock:
            ops, self._ops = self._ops, {}
        return [[op, *entry] for op, entry in ops.items()]


class GatewayMetrics:
    """Running totals in the gateway: REST timings and the workers' reports."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, str, str], list[Any]] = {}
        self.tenants: dict[str, dict[str, float]] = {}

    def record(self, tenant: str, api: str, op: str, seconds: float, ok: bool) -> None:
        """One request (the gateway's REST requests: a few dict and list operations)."""
        key = (tenant, api, op)
        with self._lock:
            entry = self.requests.get(key)
            if entry is None:
                entry = self.requests[key] = [0, 0, 0.0, [0] * (len(BUCKETS) + 1)]
            entry[0] += 1
            entry[1] += 0 if ok else 1
            entry[2] += seconds
            entry[3][bisect.bisect_left(BUCKETS, seconds)] += 1

    def merge(self, tenant: str, event: dict[str, Any]) -> None:
        """Add a worker's ``stats`` report."""
        rows = event.get("rpc")
        if isinstance(rows, list):
            self._add(tenant, "rpc", rows)
        rows = event.get("rest")  # requests on REST connections the worker serves itself
        if isinstance(rows, list):
            self._add(tenant, "rest", rows)
        named = event.get("named")
        if isinstance(named, dict):
            with self._lock:
                self.tenants[tenant] = {k: float(v) for k, v in named.items() if isinstance(v, (int, float))}

    def _add(self, tenant: str, api: str, rows: list[Any]) -> None:
        with self._lock:
            for row in rows:
                try:
                    op, count, errors, total, buckets = row
                    key = (tenant, api, str(op))
                    entry = self.requests.get(key)
                    if entry is None:
                        entry = self.requests[key] = [0, 0, 0.0, [0] * (len(BUCKETS) + 1)]
                    entry[0] += int(count)
                    entry[1] += int(errors)
                    entry[2] += float(total)
                    for i, n in enumerate(buckets[: len(BUCKETS) + 1]):
                        entry[3][i] += int(n)
                except (TypeError, ValueError):
                    continue  # a malformed row from a broken worker is dropped, not fatal

    def forget_tenant(self, tenant: str) -> None:
        with self._lock:
            self.tenants.pop(tenant, None)


class MetricsCollector(Collector):
    """Builds the metric families at scrape time from the gateway's state."""

    def __init__(self, metrics: GatewayMetrics, supervisor: Any) -> None:
        self.metrics = metrics
        self.supervisor = supervisor

    def collect(self) -> Iterator[Any]:
        m = self.metrics
        labels = ["tenant", "api", "operation"]
        requests = CounterMetricFamily("faiss_proxy_requests", "RPC calls and REST requests.", labels=labels)
        errors = CounterMetricFamily(
            "faiss_proxy_request_errors", "RPC calls that raised and REST requests answered 4xx/5xx.", labels=labels
        )
        latency = HistogramMetricFamily(
            "faiss_proxy_request_duration_seconds", "Time to serve an RPC call or a REST request.", labels=labels
        )
        with m._lock:
            rows = [(key, list(entry[:3]), list(entry[3])) for key, entry in sorted(m.requests.items())]
            tenants = {t: dict(v) for t, v in m.tenants.items()}
        for key, (count, errs, total), buckets in rows:
            requests.add_metric(list(key), count)
            errors.add_metric(list(key), errs)
            cumulative, running = [], 0
            for le, n in zip((*(str(b) for b in BUCKETS), "+Inf"), buckets, strict=True):
                running += n
                cumulative.append((le, running))
            latency.add_metric(list(key), cumulative, total)
        yield requests
        yield errors
        yield latency

        workers = list(self.supervisor.workers.values())
        sessions = GaugeMetricFamily("faiss_proxy_rpc_sessions", "Open RPC sessions.", labels=["tenant"])
        direct = GaugeMetricFamily(
            "faiss_proxy_rest_direct_connections", "REST connections served by the tenant's worker.", labels=["tenant"]
        )
        rss = GaugeMetricFamily("faiss_proxy_worker_rss_bytes", "Resident memory of tenant workers.", labels=["tenant"])
        for w in workers:
            sessions.add_metric([w.tenant], w.sessions)
            direct.add_metric([w.tenant], w.direct)
            value = rss_bytes(w.pid)
            if value is not None:
                rss.add_metric([w.tenant], value)
        yield sessions
        yield direct
        yield rss
        yield CounterMetricFamily(
            "faiss_proxy_rest_handoffs",
            "REST connections the gateway handed to a tenant's worker.",
            value=self.supervisor.rest_handoffs,
        )
        yield CounterMetricFamily(
            "faiss_proxy_rest_handbacks",
            "REST connections a worker handed back to the gateway (another key or route, idle, stopping).",
            value=self.supervisor.rest_handbacks,
        )
        yield GaugeMetricFamily("faiss_proxy_workers", "Tenant worker processes running.", value=len(workers))
        yield CounterMetricFamily(
            "faiss_proxy_worker_restarts",
            "Tenant workers that died (a signal or an error exit) and are restarted on next use.",
            value=self.supervisor.restarts,
        )
        for name, field, doc in (
            ("faiss_proxy_named_indexes", "indexes", "Named indexes per tenant."),
            ("faiss_proxy_vectors", "vectors", "Vectors in the named indexes a worker has loaded."),
            ("faiss_proxy_wal_bytes", "wal_bytes", "Write-ahead log bytes not yet covered by a snapshot."),
        ):
            family = GaugeMetricFamily(name, doc, labels=["tenant"])
            for tenant, values in sorted(tenants.items()):
                if field in values:
                    family.add_metric([tenant], values[field])
            yield family


def rss_bytes(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/statm") as fh:
            pages = int(fh.read().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    import os

    return pages * os.sysconf("SC_PAGE_SIZE")

"""Operations: readiness, Prometheus metrics across workers, JSON logs, TLS, graceful shutdown."""

from __future__ import annotations

import base64
import http.client
import json
import os
import shutil
import signal
import ssl
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

import faiss_proxy
from faiss_proxy._client import Client
from faiss_proxy_server.storage import read_snapshot

from .conftest import Dataset, LiveServer, Rest, get_json, launch_cli_server, run_cli, start_server, vector_items


def scrape(url: str, token: str | None = None) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with urllib.request.urlopen(urllib.request.Request(url + "/v1/metrics", headers=headers), timeout=10) as resp:
        assert resp.headers["Content-Type"].startswith("text/plain")
        text = resp.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def wait_for(predicate: Any, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError("condition not met in time")


# --- health and readiness ----------------------------------------------------------------
def test_health_and_ready(tmp_path: Path) -> None:
    live = start_server(tmp_path / "data")
    try:
        status, body = get_json(live.url + "/v1/health")
        assert status == 200 and body["status"] == "ok" and set(body) == {"status", "version", "uptime_s", "workers"}
        status, body = get_json(live.url + "/v1/ready")
        assert status == 200 and body["status"] == "ready"
        assert body["checks"] == {"data_dir": "ok", "catalog": "ok", "supervisor": "ok"}
        assert {"version", "uptime_s", "workers"} <= set(body)
        # the data dir stops taking writes: not ready (liveness is unaffected)
        shutil.rmtree(tmp_path / "data")
        (tmp_path / "data").write_text("not a directory")
        status, body = get_json(live.url + "/v1/ready")
        assert status == 503 and body["status"] == "not ready"
        assert body["checks"]["data_dir"].startswith("not writable")
        assert get_json(live.url + "/v1/health")[0] == 200
    finally:
        (tmp_path / "data").unlink()
        (tmp_path / "data").mkdir()
        live.stop()


# --- metrics -----------------------------------------------------------------------------
def test_metrics_cover_rpc_rest_workers_and_named_indexes(server: LiveServer, dataset: Dataset) -> None:
    tenant, key = server.new_tenant()
    faiss_proxy.configure(api_url=server.url, api_key=key, timeout=60)
    try:
        index = faiss_proxy.create_index("m", dataset.d)
        index.add_with_ids(dataset.xb[:500], np.arange(500, dtype="int64"))
        for _ in range(3):
            index.search(dataset.xq, 5)
        with pytest.raises(RuntimeError):
            faiss_proxy.IndexIVFFlat(faiss_proxy.IndexFlatL2(dataset.d), dataset.d, 10).add(dataset.xb[:5])
        Rest(server.url, key).post("/v1/index/m/search", {"vector": dataset.xq[0].tolist()})

        def rpc_counted() -> Any:
            samples = scrape(server.url)
            labels = (("api", "rpc"), ("operation", "call.search"), ("tenant", tenant))
            return samples if samples.get(("faiss_proxy_requests_total", labels)) == 3 else None

        samples = wait_for(rpc_counted)
        t = (("tenant", tenant),)
        rpc_errors = sum(
            v
            for (n, labels), v in samples.items()
            if n == "faiss_proxy_request_errors_total" and ("tenant", tenant) in labels
        )
        assert rpc_errors >= 1
        # a failed call is labelled with its faiss method (a bounded set of names) ...
        failed_add = (("api", "rpc"), ("operation", "call.add"), ("tenant", tenant))
        assert samples.get(("faiss_proxy_request_errors_total", failed_add), 0) >= 1, sorted(
            labels for (n, labels) in samples if n == "faiss_proxy_request_errors_total"
        )

        # ... but never with a client's arbitrary string
        def tenant_errors() -> float:
            return sum(
                v
                for (n, labels), v in scrape(server.url).items()
                if n == "faiss_proxy_request_errors_total" and ("tenant", tenant) in labels
            )

        before = tenant_errors()
        with pytest.raises(AttributeError):
            faiss_proxy.IndexFlatL2(dataset.d).no_such_method_here()
        wait_for(lambda: tenant_errors() > before)
        rest_search = (("api", "rest"), ("operation", "search"), ("tenant", tenant))
        assert samples[("faiss_proxy_requests_total", rest_search)] == 1
        assert not any("no_such_method_here" in str(labels) for (_n, labels) in scrape(server.url))
        assert samples[("faiss_proxy_request_duration_seconds_count", rest_search)] == 1
        inf_bucket = tuple(sorted((*rest_search, ("le", "+Inf"))))
        assert samples[("faiss_proxy_request_duration_seconds_bucket", inf_bucket)] == 1
        assert samples[("faiss_proxy_rpc_sessions", t)] == 1
        assert samples[("faiss_proxy_worker_rss_bytes", t)] > 10 * 2**20
        assert samples[("faiss_proxy_named_indexes", t)] == 1
        assert samples[("faiss_proxy_vectors", t)] == 500
        assert samples[("faiss_proxy_wal_bytes", t)] > 500 * dataset.d * 4
        assert samples[("faiss_proxy_workers", ())] >= 1
        restarts = samples[("faiss_proxy_worker_restarts_total", ())]

        os.kill(server.worker_pid(tenant) or 0, signal.SIGKILL)
        wait_for(lambda: scrape(server.url)[("faiss_proxy_worker_restarts_total", ())] == restarts + 1)
        # counters survive the worker: the next worker's calls add to them
        faiss_proxy.configure(api_url=server.url, api_key=key, timeout=60)
        faiss_proxy.open_index("m").search(dataset.xq, 5)
        labels = (("api", "rpc"), ("operation", "call.search"), ("tenant", tenant))
        wait_for(lambda: scrape(server.url).get(("faiss_proxy_requests_total", labels)) == 4)
    finally:
        faiss_proxy.configure(api_url="", api_key="")


def test_metrics_token(tmp_path: Path) -> None:
    token = base64.urlsafe_b64encode(os.urandom(18)).decode()
    live = start_server(tmp_path, metrics_token=token)
    try:
        status, body = get_json(live.url + "/v1/metrics")
        assert status == 401 and body["error"]["code"] == "unauthorized"
        status, _ = get_json(live.url + "/v1/metrics", {"Authorization": "Bearer wrong"})
        assert status == 401
        assert ("faiss_proxy_workers", ()) in scrape(live.url, token)
    finally:
        live.stop()


# --- logs --------------------------------------------------------------------------------
def test_json_logs_one_line_per_request_and_session(tmp_path: Path, dataset: Dataset) -> None:
    data = tmp_path / "data"
    live = launch_cli_server(data, "--log-format", "json")
    try:
        run_cli("tenant", "create", "acme", "--data-dir", str(data))
        key = run_cli("key", "create", "acme", "--data-dir", str(data)).stdout.strip().splitlines()[-1]
        rest = Rest(live.url, key)
        rest.post("/v1/index", {"name": "l", "dimension": dataset.d})
        rest.post("/v1/index/l/vectors", {"vectors": vector_items(dataset.xb[:3], ["a", "b", "c"])})
        # Keep-alive: the second request is served (and logged) by the tenant's worker.
        conn = http.client.HTTPConnection("127.0.0.1", int(live.url.rsplit(":", 1)[1]), timeout=30)
        for _ in range(2):
            conn.request("GET", "/v1/index/l/ntotal", headers={"Authorization": f"Bearer {key}"})
            assert conn.getresponse().read() == b'{"ntotal":3}'
        conn.close()
        faiss_proxy.configure(api_url=live.url, api_key=key, timeout=60)
        faiss_proxy.IndexFlatL2(4).add(np.ones((2, 4), "float32"))
        faiss_proxy.configure(api_url="", api_key="")

        def lines() -> list[dict[str, Any]]:
            return [json.loads(line) for line in live.log_path.read_text().splitlines() if line.startswith("{")]

        records = wait_for(lambda: (r := lines()) and any(x.get("kind") == "rpc_session" for x in r) and r)
    finally:
        live.proc.terminate()
        live.proc.wait(30)
    text = live.log_path.read_text()
    assert all(line.startswith("{") for line in text.splitlines() if line.strip()), text[:500]
    upserts = [r for r in records if r.get("kind") == "http" and r.get("operation") == "upsert"]
    assert len(upserts) == 1
    assert upserts[0]["tenant"] == "acme" and upserts[0]["status"] == 200 and upserts[0]["duration_ms"] > 0
    ntotal = [r for r in records if r.get("kind") == "http" and r.get("operation") == "ntotal"]
    # The worker served these (the connection was handed over at once); its lines have the
    # gateway's fields (the upsert, over urllib's Connection: close, was the gateway's).
    assert len(ntotal) == 2 and ntotal[0].keys() == ntotal[1].keys() == upserts[0].keys()
    assert all(r["path"] == "/v1/index/l/ntotal" and r["status"] == 200 and r["tenant"] == "acme" for r in ntotal)
    session = next(r for r in records if r.get("kind") == "rpc_session")
    assert session["tenant"] == "acme" and session["calls"] >= 2 and session["outcome"] == "closed"
    assert key not in text and key.split(".")[-1] not in text
    assert str(float(dataset.xb[0][0]))[:8] not in text  # no vector data


# --- TLS ---------------------------------------------------------------------------------
def test_tls_end_to_end_rpc_and_rest(tmp_path: Path, dataset: Dataset) -> None:
    certs = tmp_path / "certs"
    run_cli("dev-cert", str(certs))
    assert (certs / "key.pem").stat().st_mode & 0o777 == 0o600
    live = start_server(tmp_path / "data", tls_cert=str(certs / "cert.pem"), tls_key=str(certs / "key.pem"))
    try:
        assert live.url.startswith("https://")
        tenant, key = live.new_tenant()
        context = ssl.create_default_context(cafile=str(certs / "ca.pem"))
        rest = Rest(live.url, key, context=context)
        assert rest.post("/v1/index", {"name": "t", "dimension": dataset.d})[0] == 201
        assert (
            rest.post("/v1/index/t/vectors", {"vectors": vector_items(dataset.xb[:200], [str(i) for i in range(200)])})[
                0
            ]
            == 200
        )

        # Keep-alive over TLS: the TLS state cannot move, so the gateway serves the connection.
        conn = http.client.HTTPSConnection("127.0.0.1", int(live.url.rsplit(":", 1)[1]), context=context)
        for _ in range(3):
            conn.request("GET", "/v1/index/t/ntotal", headers={"Authorization": f"Bearer {key}"})
            response = conn.getresponse()
            assert response.status == 200 and json.loads(response.read()) == {"ntotal": 200}
        conn.close()
        assert live.run(lambda: live.supervisor.rest_handoffs) == 0

        faiss_proxy.configure(api_url=live.url, api_key=key, timeout=60, ca=str(certs / "ca.pem"))
        index = faiss_proxy.open_index("t")
        ref = faiss.IndexFlatL2(dataset.d)
        ref.add(dataset.xb[:200])
        D, I = index.search(dataset.xq, 5)
        D0, I0 = ref.search(dataset.xq, 5)
        np.testing.assert_array_equal(I, I0)
        big = faiss_proxy.IndexFlatL2(dataset.d)  # a multi-megabyte call through the relay
        big.add(np.repeat(dataset.xb, 10, axis=0))
        assert big.ntotal == 10 * len(dataset.xb)

        # without the CA the client refuses the server, with a hint
        faiss_proxy.configure(api_url=live.url, api_key=key, timeout=60)
        with pytest.raises(ConnectionError, match="FAISS_PROXY_CA"):
            faiss_proxy.open_index("t")
        # plain HTTP to the TLS port gets nowhere
        with pytest.raises(OSError):
            urllib.request.urlopen(live.url.replace("https", "http") + "/v1/health", timeout=5)
    finally:
        faiss_proxy.configure(api_url="", api_key="")
        live.stop()


# --- graceful shutdown -------------------------------------------------------------------
def test_ctrl_c_snapshots_and_exits_0(tmp_path: Path) -> None:
    """Ctrl-C in a terminal sends SIGINT to the server's whole process group, workers
    included: the gateway drains them (each snapshots), none dies of the signal."""
    data = tmp_path / "data"
    live = launch_cli_server(data)
    run_cli("tenant", "create", "acme", "--data-dir", str(data))
    key = run_cli("key", "create", "acme", "--data-dir", str(data)).stdout.strip().splitlines()[-1]
    rest = Rest(live.url, key)
    assert rest.post("/v1/index", {"name": "c", "dimension": 4})[0] == 201
    items = [{"id": str(i), "values": [float(i), 0.0, 0.0, 1.0]} for i in range(50)]
    assert rest.post("/v1/index/c/vectors", {"vectors": items})[0] == 200
    index_dir = data / "tenants" / "acme" / "indexes" / "c"
    assert sum(p.stat().st_size for p in index_dir.glob("wal-*.log")) > 0  # not snapshotted yet
    os.killpg(live.proc.pid, signal.SIGINT)
    assert live.proc.wait(60) == 0
    log = live.log()
    assert "worker died" not in log and "worker exited" not in log, log[-3000:]
    state, _ = read_snapshot(index_dir / "snapshot.bin")
    assert len(state["registry"]) == 50
    assert sum(p.stat().st_size for p in index_dir.glob("wal-*.log")) == 0


def test_shutdown_timeout_bounds_a_stop_with_a_call_still_running(tmp_path: Path) -> None:
    """A call longer than shutdown_timeout (a training of tens of seconds) does not hold the
    server: the worker stops at its deadline (or is killed at the gateway's), the server
    exits 0 within seconds."""
    data = tmp_path / "data"
    live = launch_cli_server(data, "--shutdown-timeout", "1")
    run_cli("tenant", "create", "acme", "--data-dir", str(data))
    key = run_cli("key", "create", "acme", "--data-dir", str(data)).stdout.strip().splitlines()[-1]
    client = Client(live.url, key, timeout=120)
    x = np.random.RandomState(0).rand(100000, 64).astype("float32")
    kmeans = client.lookup("Kmeans")(64, 1024, niter=50, seed=1)  # many seconds of training
    busy = threading.Thread(target=lambda: _swallow(lambda: kmeans.train(x)))
    busy.start()
    time.sleep(1.0)
    started = time.monotonic()
    live.proc.send_signal(signal.SIGTERM)
    assert live.proc.wait(30) == 0
    assert time.monotonic() - started < 10, "the stop waited for the call instead of shutdown_timeout"
    busy.join(30)
    client.close()


def _swallow(fn: Any) -> None:
    try:
        fn()
    except Exception:
        pass  # the session ends with the server


def test_sigterm_finishes_in_flight_work_snapshots_and_exits_0(tmp_path: Path) -> None:
    data = tmp_path / "data"
    live = launch_cli_server(data)
    run_cli("tenant", "create", "acme", "--data-dir", str(data))
    key = run_cli("key", "create", "acme", "--data-dir", str(data)).stdout.strip().splitlines()[-1]
    rest = Rest(live.url, key)
    rest.post("/v1/index", {"name": "g", "dimension": 64, "index_type": "HNSW32"})
    x = np.random.RandomState(0).rand(30000, 64).astype("<f4")
    items = [{"id": str(i), "values_b64": base64.b64encode(x[i].tobytes()).decode()} for i in range(len(x))]
    result: list[Any] = []
    slow = threading.Thread(target=lambda: result.append(rest.post("/v1/index/g/vectors", {"vectors": items})))
    slow.start()
    time.sleep(1.0)  # the HNSW build of 30k vectors is under way
    live.proc.send_signal(signal.SIGTERM)
    slow.join(60)
    assert live.proc.wait(60) == 0
    assert result and result[0][0] == 200, result
    state, _ = read_snapshot(data / "tenants" / "acme" / "indexes" / "g" / "snapshot.bin")
    assert state["seq"] >= 1 and len(state["registry"]) == 30000  # snapshotted on the way down
    logs = list((data / "tenants" / "acme" / "indexes" / "g").glob("wal-*.log"))
    assert sum(p.stat().st_size for p in logs) == 0
    again = launch_cli_server(data)
    try:
        assert Rest(again.url, key).get("/v1/index/g/ntotal") == (200, {"ntotal": 30000})
    finally:
        again.proc.terminate()
        assert again.proc.wait(30) == 0

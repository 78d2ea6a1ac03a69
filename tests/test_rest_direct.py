"""REST connections handed to the tenant's worker (server/restdirect.py).

The gateway authenticates a REST request and hands a plain-HTTP connection to the
worker, which serves the requests it may and hands back the others.  These tests hold
the direct path to the gateway's answers (byte for byte), to local FAISS, and to the
gateway's checks: another key, another route, a revoked key, a stopping or dying
worker — each on one open connection, with nothing a client sent lost.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pytest
import tornado.iostream
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tornado.ioloop import IOLoop

from faiss_proxy_server.metrics import OperationStats
from faiss_proxy_server.restdirect import MAX_HEAD, DirectConnection, Grant, Request, token_digest
from faiss_proxy_server.supervisor import DirectSlots, WorkerProcess

from .conftest import LiveServer, start_server


class Conn:
    """One keep-alive HTTP/1.1 connection, spoken by hand (so tests control every byte)."""

    def __init__(self, url: str, key: str | None = None) -> None:
        host, port = url.split("//")[1].rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=30)
        self.key = key
        self.buf = b""

    def raw(self, method: str, path: str, body: bytes = b"", headers: dict[str, str | None] | None = None) -> bytes:
        hdrs: dict[str, str | None] = {"Host": "x", "Content-Type": "application/json"}
        if self.key is not None:
            hdrs["Authorization"] = f"Bearer {self.key}"
        hdrs.update(headers or {})
        if body or method in ("POST", "PUT"):
            hdrs.setdefault("Content-Length", str(len(body)))
        head = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in hdrs.items() if v is not None)
        return head.encode("latin-1") + b"\r\n" + body

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def response(self) -> tuple[int, dict[str, str], bytes]:
        while b"\r\n\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed before a response")
            self.buf += chunk
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ")[1])
        headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        length = int(headers.get("content-length", "0"))
        while len(self.buf) < length:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed inside a response")
            self.buf += chunk
        body, self.buf = self.buf[:length], self.buf[length:]
        return status, headers, body

    def call(
        self, method: str, path: str, body: Any = None, headers: dict[str, str | None] | None = None
    ) -> tuple[int, Any, dict[str, str]]:
        data = b"" if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
        self.send(self.raw(method, path, data, headers))
        status, hdrs, payload = self.response()
        return status, json.loads(payload) if payload else None, hdrs

    def closed(self, timeout: float = 5.0) -> bool:
        """Whether the server has closed this connection (EOF or reset)."""
        self.sock.settimeout(timeout)
        try:
            return self.sock.recv(1) == b""
        except ConnectionResetError:
            return True
        except TimeoutError:
            return False

    def close(self) -> None:
        self.sock.close()


def handoffs(server: LiveServer) -> tuple[int, int]:
    sup = server.supervisor
    return server.run(lambda: (sup.rest_handoffs, sup.rest_handbacks))


def direct_connections(server: LiveServer, tenant: str) -> int:
    def count() -> int:
        w = server.supervisor.workers.get(tenant)
        return 0 if w is None else int(w.direct)

    return server.run(count)


def wait_for(predicate: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(0.02)


def started(server: LiveServer, key: str, index: str = "docs", d: int = 8) -> Conn:
    """A connection whose tenant has an index ``index`` and a running worker; the
    connection itself is with the worker once it has made one request."""
    conn = Conn(server.url, key)
    status, body, _ = conn.call("POST", "/v1/index", {"name": index, "dimension": d})
    assert status == 201, body
    return conn


def upsert_b64(conn: Conn, index: str, x: np.ndarray, prefix: str = "v") -> None:
    ids = [f"{prefix}{i}" for i in range(len(x))]
    body = {
        "vectors": [
            {"id": ident, "values_b64": base64.b64encode(row.astype("<f4").tobytes()).decode()}
            for ident, row in zip(ids, x, strict=True)
        ]
    }
    status, reply, _ = conn.call("POST", f"/v1/index/{index}/vectors", body)
    assert status == 200 and reply["ntotal"] >= len(x), reply


# --- the worker answers as the gateway does -----------------------------------------------
REQUESTS: list[tuple[str, str, Any]] = [
    ("GET", "/v1/index", None),
    ("GET", "/v1/index/docs", None),
    ("GET", "/v1/index/docs/ntotal", None),
    ("POST", "/v1/index/docs/search", {"vector": [0.5] * 8, "k": 3}),
    ("POST", "/v1/index/docs/search", {"vectors": [[0.5] * 8, [0.1] * 8], "k": 2, "include": ["values"]}),
    ("GET", "/v1/index/docs/search?vector=0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5&k=2", None),
    ("GET", "/v1/index/docs/vectors/v3", None),
    ("POST", "/v1/index/docs/specialized_search", {"operation": "range_search", "vector": [0.5] * 8, "radius": 0.6}),
    ("POST", "/v1/index/docs/search", b"{not json"),
    ("POST", "/v1/index/docs/search", {"vector": [0.5] * 7, "k": 3}),
    ("POST", "/v1/index/docs/search", {"vector": [0.5] * 8, "k": 0}),
    ("POST", "/v1/index/docs/search", {"vector": ["a"] * 8, "k": 1}),
    ("GET", "/v1/index/nope/ntotal", None),
    ("GET", "/v1/index/docs/vectors/nope", None),
    ("POST", "/v1/index", {"name": "docs", "dimension": 8}),
    ("POST", "/v1/index/docs/vectors", {"vectors": []}),
    ("GET", "/v1/index/%E2%82%AC/ntotal", None),
]


def test_the_worker_answers_byte_for_byte_as_the_gateway(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    x = rng.random((50, 8), dtype="float32")
    answers = []
    for direct in (0, 64):
        live = start_server(tmp_path / str(direct), rest_direct_connections=direct)
        try:
            _tenant, key = live.new_tenant()
            conn = started(live, key)
            upsert_b64(conn, "docs", x)
            out = []
            for method, path, body in REQUESTS:
                data = b"" if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
                conn.send(conn.raw(method, path, data))
                status, headers, payload = conn.response()
                headers.pop("date")
                out.append((status, headers, payload))
            assert handoffs(live)[0] == (1 if direct else 0)
            conn.close()
        finally:
            live.stop()
        answers.append(out)
    for request, gateway, worker in zip(REQUESTS, *answers, strict=True):
        assert gateway == worker, request
    assert {status for status, _, _ in answers[1]} >= {200, 400, 404, 409}


def test_direct_searches_equal_local_faiss(server: LiveServer) -> None:
    tenant, key = server.new_tenant()
    conn = started(server, key, "flat", 16)
    rng = np.random.default_rng(5)
    xb = rng.random((3000, 16), dtype="float32")
    xq = rng.random((20, 16), dtype="float32")
    upsert_b64(conn, "flat", xb)  # a body of about 250 kB, read by the worker off the socket
    assert direct_connections(server, tenant) == 1
    ref = faiss.IndexFlatL2(16)
    ref.add(xb)
    D, I = ref.search(xq, 5)
    for qi, q in enumerate(xq):
        status, body, _ = conn.call("POST", "/v1/index/flat/search", {"vector": q.tolist(), "k": 5})
        assert status == 200, body
        assert [hit["id"] for hit in body["results"]] == [f"v{i}" for i in I[qi]]
        np.testing.assert_allclose([hit["score"] for hit in body["results"]], D[qi], rtol=1e-5)
    conn.close()


# --- what goes back to the gateway ------------------------------------------------------------
def test_other_keys_routes_and_bodies_go_back_to_the_gateway(server: LiveServer) -> None:
    tenant, key = server.new_tenant()
    other_tenant, other_key = server.new_tenant()
    _ro, ro_key = server.catalog.create_key(tenant, read_only=True)
    started(server, other_key, "theirs").close()
    conn = started(server, key)
    assert conn.call("GET", "/v1/index/docs/ntotal")[0] == 200  # now with the worker
    before = handoffs(server)
    status, body, _ = conn.call("GET", "/v1/health")
    assert status == 200 and body["status"] == "ok"
    status, body, _ = conn.call("GET", "/v1/index", headers={"Authorization": f"Bearer {other_key}"})
    assert status == 200 and [i["name"] for i in body["indexes"]] == ["theirs"]  # the other tenant's
    status, body, _ = conn.call("GET", "/v1/index/docs/ntotal", headers={"Authorization": "Bearer nonsense"})
    assert status == 401 and body["error"]["code"] == "unauthorized"
    status, body, _ = conn.call("GET", "/v1/index/docs/ntotal", headers={"Authorization": None})
    assert status == 401
    # (with no body: a refused request with a body closes the connection, as always)
    status, body, _ = conn.call("POST", "/v1/index/docs/reset", headers={"Authorization": f"Bearer {ro_key}"})
    assert status == 403 and body["error"]["code"] == "forbidden"
    status, body, _ = conn.call("GET", "/v1/index/docs", headers={"X-API-Key": key, "Authorization": None})
    assert status == 200 and body["name"] == "docs"  # the same key in the other header
    # A chunked upload: the worker does not parse chunks, the gateway does.
    payload = json.dumps({"vectors": [{"id": "c", "values": [0.25] * 8}]}).encode()
    chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(payload), payload)
    conn.send(
        conn.raw("POST", "/v1/index/docs/vectors", chunked, {"Transfer-Encoding": "chunked", "Content-Length": None})
    )
    status, _headers, raw = conn.response()
    assert status == 200 and json.loads(raw)["upserted"] == 1
    status, body, _ = conn.call("GET", "/v1/index/docs/ntotal")
    assert status == 200 and body == {"ntotal": 1}
    after = handoffs(server)
    assert after[1] > before[1] and after[0] > before[0]  # went back, and came over again
    status, body, headers = conn.call("PUT", "/v1/index/docs", {})
    assert status == 405 and headers["allow"] == "GET, DELETE"  # the gateway's 405
    conn.close()


def test_a_refused_request_with_a_body_says_that_the_connection_closes(server: LiveServer) -> None:
    """The gateway refuses before reading the body and then closes the connection; the
    answer says so, so keep-alive clients open a new one instead of failing on this one."""
    conn = Conn(server.url, "not-a-key")
    status, body, headers = conn.call("POST", "/v1/index/a/search", {"vector": [1.0], "k": 1})
    assert status == 401 and body["error"]["code"] == "unauthorized"
    assert headers.get("connection") == "close" and conn.closed()
    conn = Conn(server.url, "not-a-key")  # without a body the connection stays open
    status, _body, headers = conn.call("GET", "/v1/index/a/ntotal")
    assert status == 401 and "connection" not in headers and not conn.closed(0.2)
    conn.close()


def test_pipelined_requests_are_answered_in_order(server: LiveServer) -> None:
    _tenant, key = server.new_tenant()
    conn = started(server, key)
    search = json.dumps({"vector": [0.5] * 8, "k": 1}).encode()
    upsert = json.dumps({"vectors": [{"id": "p", "values": [0.5] * 8}]}).encode()
    conn.send(
        conn.raw("POST", "/v1/index/docs/vectors", upsert)
        + conn.raw("GET", "/v1/health")  # goes back with the bytes after it
        + conn.raw("POST", "/v1/index/docs/search", search)
        + conn.raw("GET", "/v1/index/docs/ntotal")
    )
    answers = [conn.response() for _ in range(4)]
    assert [status for status, _, _ in answers] == [200, 200, 200, 200]
    assert json.loads(answers[0][2])["upserted"] == 1
    assert json.loads(answers[1][2])["status"] == "ok"
    assert json.loads(answers[2][2])["results"][0]["id"] == "p"
    assert json.loads(answers[3][2]) == {"ntotal": 1}
    conn.close()


def test_connection_close_is_honoured(server: LiveServer) -> None:
    _tenant, key = server.new_tenant()
    conn = started(server, key)
    assert conn.call("GET", "/v1/index/docs/ntotal")[0] == 200  # with the worker
    status, _body, headers = conn.call("GET", "/v1/index/docs/ntotal", headers={"Connection": "close"})
    assert status == 200 and headers.get("connection") == "close"
    assert conn.closed()
    # A first request that says close stays with the gateway, which closes as always.
    before = handoffs(server)
    conn = Conn(server.url, key)
    status, _body, headers = conn.call("GET", "/v1/index/docs/ntotal", headers={"Connection": "close"})
    assert status == 200 and headers.get("connection") == "close"
    assert conn.closed() and handoffs(server) == before


# --- keys, stops and crashes while a connection is with the worker --------------------------
def test_a_revoked_key_gets_401_on_its_open_connection(server: LiveServer) -> None:
    tenant, _ = server.new_tenant()
    record, key = server.catalog.create_key(tenant)
    conn = started(server, key)
    assert conn.call("GET", "/v1/index/docs/ntotal")[0] == 200
    assert direct_connections(server, tenant) == 1
    server.catalog.revoke_key(record.key_id)  # as the CLI does: the access watcher notices within a second
    deadline = time.monotonic() + 10
    statuses = []
    while time.monotonic() < deadline:
        status, body, _ = conn.call("GET", "/v1/index/docs/ntotal")
        statuses.append(status)
        if status == 401:
            assert body["error"]["message"] == "API key revoked"
            break
        time.sleep(0.05)
    assert statuses[-1] == 401 and set(statuses) <= {200, 401}
    conn.close()


def test_an_idle_worker_stops_and_the_connection_lives_on(tmp_path: Path) -> None:
    live = start_server(tmp_path, worker_idle_timeout=0.5)
    try:
        tenant, key = live.new_tenant()
        conn = started(live, key)
        assert conn.call("POST", "/v1/index/docs/vectors", {"vectors": [{"id": "a", "values": [1.0] * 8}]})[0] == 200
        first = live.worker_pid(tenant)
        assert first is not None
        wait_for(lambda: live.worker_pid(tenant) is None)  # handed back when idle, then stopped
        status, body, _ = conn.call("GET", "/v1/index/docs/ntotal")  # the same connection
        assert status == 200 and body == {"ntotal": 1}
        assert live.worker_pid(tenant) not in (None, first)
        conn.close()
    finally:
        live.stop()


def test_a_worker_slower_to_start_than_the_idle_timeout_is_not_stopped(tmp_path: Path) -> None:
    """The idle clock of a worker starts when it is ready: a start that takes longer
    than ``worker_idle_timeout`` (a loaded host) still serves the request that began it."""
    live = start_server(tmp_path, worker_idle_timeout=0.01)  # the reaper looks every 0.2 s
    try:
        tenant, key = live.new_tenant()
        for attempt in range(3):  # each request starts a fresh worker, which then idles out
            conn = Conn(live.url, key)
            status, body, _ = conn.call("POST", "/v1/index", {"name": f"i{attempt}", "dimension": 8})
            assert status == 201, body
            conn.close()
            wait_for(lambda: live.worker_pid(tenant) is None)
    finally:
        live.stop()


@pytest.mark.parametrize("busy", ["starting", "session", "handed-over session", "rest connection", "call"])
def test_a_worker_with_anything_to_do_is_not_idle(busy: str) -> None:
    """The reaper's one test for idleness (WorkerProcess.idle_for), condition by
    condition: each alone keeps a worker whose last activity is long past from being
    stopped.  (A handed-over session whose "open" has not come back yet cannot be held
    open from outside a worker; this is the only place it is checked.)"""
    loop, slots = asyncio.new_event_loop(), DirectSlots(4)
    pair = socket.socketpair()
    try:
        ready: asyncio.Future[int] = loop.create_future()
        ready.set_result(1)
        worker = WorkerProcess(tenant="t", proc=None, control=None, ready=ready, rest=None, slots=slots)  # type: ignore[arg-type]
        worker.last_active = 100.0
        assert worker.idle_for(160.0) == 60.0
        if busy == "starting":
            worker.ready = loop.create_future()
        elif busy == "session":
            worker.sessions = 1
        elif busy == "handed-over session":
            worker.pending = 1
        elif busy == "rest connection":
            assert slots.take(pair[0]) is not None
        else:
            worker.inflight = 1
        assert worker.idle_for(160.0) == 0.0
    finally:
        slots.close()
        for sock in pair:
            sock.close()
        loop.close()


def test_a_killed_worker_closes_only_its_own_connections(server: LiveServer) -> None:
    tenant, key = server.new_tenant()
    _other, other_key = server.new_tenant()
    victim, bystander = started(server, key), started(server, other_key)
    assert victim.call("GET", "/v1/index/docs/ntotal")[0] == 200
    assert bystander.call("GET", "/v1/index/docs/ntotal")[0] == 200
    pid = server.worker_pid(tenant)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    assert victim.closed()
    assert bystander.call("GET", "/v1/index/docs/ntotal")[0] == 200
    fresh = Conn(server.url, key)
    status, body, _ = fresh.call("GET", "/v1/index/docs/ntotal")  # a fresh worker reloads the index
    assert status == 200 and body == {"ntotal": 0}
    for conn in (victim, bystander, fresh):
        conn.close()


def test_a_request_in_flight_when_the_worker_dies_gets_503(server: LiveServer) -> None:
    """The gateway keeps a duplicate of each handed-over socket and reads the worker's mark
    of each connection: a request the worker had not started answering gets the same
    503 as through the gateway; an idle connection of the same worker is closed."""
    tenant, key = server.new_tenant()
    conn = Conn(server.url, key)
    status, body, _ = conn.call("POST", "/v1/index", {"name": "ivf", "dimension": 64, "index_type": "IVF1024,Flat"})
    assert status == 201, body
    assert conn.call("GET", "/v1/index/ivf/ntotal")[0] == 200  # with the worker from here on
    idle = started(server, key, "other")
    assert idle.call("GET", "/v1/index/other/ntotal")[0] == 200
    assert direct_connections(server, tenant) == 2
    x = np.random.default_rng(0).random((60_000, 64), dtype="float32")
    payload = json.dumps({"values_b64": base64.b64encode(x.tobytes()).decode()}).encode()
    conn.send(conn.raw("POST", "/v1/index/ivf/train", payload))  # k-means on 60k: seconds
    time.sleep(0.8)
    pid = server.worker_pid(tenant)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    status, headers, raw = conn.response()
    assert status == 503 and headers["connection"] == "close", (status, raw)
    assert json.loads(raw) == {
        "error": {"code": "unavailable", "message": "the tenant's worker stopped while handling the request"}
    }
    assert conn.closed() and idle.closed()
    fresh = Conn(server.url, key)
    status, body, _ = fresh.call("GET", "/v1/index/ivf")  # nothing was applied
    assert status == 200 and body["is_trained"] is False
    for c in (conn, idle, fresh):
        c.close()


def test_connections_past_the_limit_stay_with_the_gateway(tmp_path: Path) -> None:
    live = start_server(tmp_path, rest_direct_connections=1)
    try:
        tenant, key = live.new_tenant()
        conns = [started(live, key, f"i{i}") for i in range(3)]
        for conn in conns:
            for _ in range(3):
                assert conn.call("GET", "/v1/index")[0] == 200
        assert direct_connections(live, tenant) == 1
        for conn in conns:
            conn.close()
    finally:
        live.stop()


def test_rate_limited_tenants_stay_with_the_gateway(tmp_path: Path) -> None:
    live = start_server(tmp_path, tenant_rate_limit=1000.0)
    try:
        _tenant, key = live.new_tenant()
        conn = started(live, key)
        for _ in range(5):
            assert conn.call("GET", "/v1/index/docs/ntotal")[0] == 200
        assert handoffs(live) == (0, 0)
        conn.close()
    finally:
        live.stop()


# --- the worker's parser, on a socket pair ---------------------------------------------------
KEY = "k" * 40


def serve_one(
    raw: bytes, read_only: bool = False, expires: float | None = None, io_timeout: float = 60.0, eof: bool = False
) -> tuple[list[Any], bytes, list[bytes]]:
    """Feed ``raw`` after a first request to a DirectConnection (then end the client's
    side with ``eof``); returns (operations it ran, what it answered, what it handed back)."""
    ours, theirs = socket.socketpair()
    grant = Grant("t", "key1", token_digest(KEY), read_only, expires, "peer", 1 << 20)
    ran: list[Any] = []
    back: list[bytes] = []

    def handle(op: str, args: dict[str, str], query: dict[str, str], body: bytes) -> tuple[int, bytes]:
        ran.append((op, args, query, body))
        return 200, b"{}"

    def give_back(sock: socket.socket, carried: bytes) -> None:
        back.append(carried)

    conn = DirectConnection(theirs, grant, handle, give_back, OperationStats(), idle_timeout=0.3, io_timeout=io_timeout)
    first = Request("GET", "/v1/index", "list", {}, {}, 0, True, time.perf_counter())
    ours.sendall(raw)  # before it starts (it fits the socket's buffer): a stall of this
    if eof:  # thread on a loaded host must not look like an idle client
        ours.shutdown(socket.SHUT_WR)
    thread = threading.Thread(target=conn.serve, args=(first, b""))
    thread.start()
    thread.join(10)
    assert not thread.is_alive()
    ours.settimeout(1)
    answered = b""
    try:
        while chunk := ours.recv(65536):
            answered += chunk
    except (TimeoutError, OSError):
        pass
    ours.close()
    return ran, answered, back


def head(lines: list[str], body: bytes = b"") -> bytes:
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


AUTH = f"Authorization: Bearer {KEY}"


@pytest.mark.parametrize(
    "raw",
    [
        head(["GET /v1/index/a/ntotal HTTP/1.1", "Authorization: Bearer other"]),
        head(["GET /v1/index/a/ntotal HTTP/1.1"]),
        head(["GET /v1/index/a/ntotal HTTP/1.0", AUTH]),
        head(["GET /v1/health HTTP/1.1", AUTH]),
        head(["HEAD /v1/index/a HTTP/1.1", AUTH]),
        head(["GET http://h/v1/index/a HTTP/1.1", AUTH]),
        head(["POST /v1/index/a/search HTTP/1.1", AUTH, "Transfer-Encoding: chunked"], b"0\r\n\r\n"),
        head(["POST /v1/index/a/search HTTP/1.1", AUTH, "Expect: 100-continue", "Content-Length: 2"]),
        head(["GET /v1/index/a HTTP/1.1", AUTH, "Upgrade: faiss-proxy-rpc", "Connection: Upgrade"]),
        head(["POST /v1/index/a/search HTTP/1.1", AUTH, "Content-Length: 2", "Content-Length: 2"], b"{}"),
        head(["POST /v1/index/a/search HTTP/1.1", AUTH, "Content-Length: +2"], b"{}"),
        head(["POST /v1/index/a/search HTTP/1.1", AUTH, "Content-Length: \u00b2"], b"{}"),
        head(["POST /v1/index/a/search HTTP/1.1", AUTH, f"Content-Length: {(1 << 20) + 1}"]),
        head(["GET /v1/index/a HTTP/1.1", AUTH, "X-Folded: a", " b"]),
        head(["GET /v1/index/a HTTP/1.1", "Authorization : Bearer " + KEY]),
        head(["GET /v1/index/%FF HTTP/1.1", AUTH]),
        head(["GET  /v1/index/a HTTP/1.1", AUTH]),
    ],
)
def test_what_the_worker_hands_back(raw: bytes) -> None:
    ran, answered, back = serve_one(raw)
    assert [op for op, *_ in ran] == ["list"]  # only the first request
    assert answered.count(b"HTTP/1.1 200 OK") == 1
    assert back == [raw]  # every byte travels back


def test_a_read_only_or_expired_key_goes_back_for_the_gateway_to_refuse() -> None:
    raw = head(["POST /v1/index/a/reset HTTP/1.1", AUTH, "Content-Length: 2"], b"{}")
    assert serve_one(raw, read_only=True)[2] == [raw]
    assert [op for op, *_ in serve_one(raw)[0]] == ["list", "reset"]
    raw = head(["GET /v1/index/a HTTP/1.1", AUTH])
    assert serve_one(raw, expires=time.time() - 1)[2] == [raw]


def test_what_the_worker_serves() -> None:
    body = b'{"k": 1}'
    raw = (
        head(
            [
                "POST /v1/index/a%20b/search?nprobe=3&nprobe=4 HTTP/1.1",
                f"authorization:bearer   {KEY}",
                "content-length: 8",
            ],
            body,
        )
        + head(["GET /v1/index/a/vectors/x%2Fy HTTP/1.1", f"X-API-Key: {KEY}"])
        + head(["DELETE /v1/index/a HTTP/1.1", AUTH, "Connection: keep-alive, close"])
    )
    ran, answered, back = serve_one(raw)
    assert ran[1:] == [
        ("search", {"index": "a b"}, {"nprobe": "4"}, body),
        ("get_vector", {"index": "a", "vector": "x/y"}, {}, b""),
        ("drop", {"index": "a"}, {}, b""),
    ]
    assert answered.count(b"HTTP/1.1 200 OK\r\n") == 4 and answered.endswith(b"Connection: close\r\n\r\n{}")
    assert back == []  # closed after the request that said so


def test_a_long_head_and_an_idle_connection_go_back() -> None:
    raw = b"GET /v1/index/a HTTP/1.1\r\nX-Long: " + b"a" * MAX_HEAD
    ran, _answered, back = serve_one(raw)
    assert back == [raw] and len(ran) == 1
    ran, _answered, back = serve_one(b"")  # idle past idle_timeout: handed back with nothing
    assert back == [b""] and len(ran) == 1
    ran, _answered, back = serve_one(b"GET /v1/index/a HTTP/1.1\r\n", io_timeout=0.5)
    assert back == [] and len(ran) == 1  # a head that never ends: closed, not handed back


def test_the_hand_off_carries_a_digest_of_the_key_not_the_key(server: LiveServer) -> None:
    _tenant, key = server.new_tenant()
    conn = started(server, key)
    sup = server.supervisor
    sent: list[dict[str, Any]] = []
    original = sup.hand_off_rest

    def spy(worker: Any, sock: socket.socket, header: dict[str, Any], carried: bytes) -> None:
        sent.append(header)
        original(worker, sock, header, carried)

    sup.hand_off_rest = spy
    try:
        conn.close()
        conn = Conn(server.url, key)
        assert conn.call("GET", "/v1/index/docs/ntotal")[0] == 200
    finally:
        del sup.hand_off_rest
    assert len(sent) == 1 and sent[0]["key_sha256"] == token_digest(key) == hashlib.sha256(key.encode()).hexdigest()
    assert key not in json.dumps(sent[0]) and key.split(".")[-1] not in json.dumps(sent[0])
    conn.close()


def test_tornado_buffer_read_for_the_hand_off() -> None:
    """The gateway hands over what Tornado read past a request's head; that reads a
    private IOStream buffer, pinned here against the installed Tornado."""
    from faiss_proxy_server.resthttp import _unread

    async def run() -> bytes | None:
        a, b = socket.socketpair()
        stream = tornado.iostream.IOStream(a)
        b.sendall(b"GET / HTTP/1.1\r\n\r\nBODY and the next request")
        await stream.read_until_regex(b"\r?\n\r?\n")
        rest = _unread(stream)
        stream.close()
        b.close()
        return rest

    assert IOLoop.current().run_sync(run) == b"BODY and the next request"


# Mostly requests the worker serves, so that runs of them are common.
_METHODS = ["GET"] * 4 + ["POST"] * 3 + ["DELETE", "HEAD"]
_PATHS = ["/v1/index", "/v1/index/a", "/v1/index/a/search", "/v1/index/a/vectors/x"] * 3 + ["/v1/health", "/v1/x"]
_VERSIONS = ["HTTP/1.1"] * 8 + ["HTTP/1.0"]
_AUTH = [AUTH] * 6 + ["Authorization: Bearer wrong", f"X-API-Key: {KEY}", f"authorization: bearer {KEY}", None]
_EXTRA = [None] * 8 + ["Transfer-Encoding: chunked", "Expect: 100-continue", "X-Other: 1", " folded", "Bad Header: 1"]


@st.composite
def requests(draw: Any) -> bytes:
    body = draw(st.binary(max_size=40))
    lines = [f"{draw(st.sampled_from(_METHODS))} {draw(st.sampled_from(_PATHS))} {draw(st.sampled_from(_VERSIONS))}"]
    for choice in (draw(st.sampled_from(_AUTH)), draw(st.sampled_from(_EXTRA))):
        if choice is not None:
            lines.append(choice)
    length = draw(st.sampled_from([str(len(body))] * 6 + ["x", None]))
    if length is not None:
        lines.append(f"Content-Length: {length}")
    return head(lines, body if length == str(len(body)) else b"")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(requests(), min_size=1, max_size=4))
def test_the_worker_serves_a_prefix_and_hands_back_the_rest_byte_for_byte(raws: list[bytes]) -> None:
    ran, answered, back = serve_one(b"".join(raws), eof=True)
    served = len(ran) - 1  # after the first request, which the gateway checked
    assert answered.count(b"HTTP/1.1 ") == len(ran)
    if served < len(raws):  # it stopped at a request it does not serve: every byte from there went back
        assert back == [b"".join(raws[served:])]
    else:
        assert back == []  # all served; the client's end of file closed the connection
    for (op, _args, _query, body), raw in zip(ran[1:], raws, strict=False):
        assert raw.endswith(body) and op in {"list", "create", "info", "drop", "search", "get_vector", "delete_vector"}


def test_keys_used_on_handed_over_connections_count_as_used(server: LiveServer) -> None:
    """The gateway does not see these requests; the worker reports the keys it served."""
    tenant, _ = server.new_tenant()
    record, key = server.catalog.create_key(tenant)
    conn = started(server, key)
    assert conn.call("GET", "/v1/index/docs/ntotal")[0] == 200  # with the worker from here on
    with server.catalog._db() as db:
        db.execute("UPDATE api_keys SET last_used_at = NULL WHERE key_id = ?", (record.key_id,))
    server.catalog._last_used.pop(record.key_id, None)
    assert conn.call("GET", "/v1/index/docs/ntotal")[0] == 200

    def last_used() -> float | None:
        return next(k.last_used_at for k in server.catalog.list_keys(tenant) if k.key_id == record.key_id)

    wait_for(lambda: last_used() is not None, 5)
    conn.close()

"""The HTTP side of the REST facade: ``/v1/index...`` requests, straight on Tornado's HTTP layer.

These routes are the gateway's hot path: a single-query search must cross HTTP, the key
check and the hop to the tenant's worker in well under a millisecond.  Going through
``tornado.web.RequestHandler`` cost about 0.3 ms of the gateway's CPU per request on the
2-core VMs (header bookkeeping, ``prepare``/``_execute`` coroutines, ``flush``), more than
the hop and the search together.  So these routes are served by a plain
:class:`tornado.httputil.HTTPMessageDelegate` instead: :class:`RestGateway` is a
``HTTPServerConnectionDelegate`` that the server's ``RuleRouter`` hands ``/v1/index``
requests to, and each request gets a :class:`RestExchange`.  Tornado's
``HTTP1Connection`` still does all of HTTP/1.1 (parsing, keep-alive, chunked bodies,
``Expect: 100-continue``, the body size limit); this module only routes, authenticates,
forwards ``(operation, path arguments, query, body)`` to the worker (:mod:`.restchannel`)
and writes the worker's JSON answer.

Order of checks, as before: route (404), method (405, with ``Allow``), key (401),
rate (429 with ``Retry-After``), read-only key on a mutation (403), declared body size
(413) — all before any body byte is read.  Every error has the one JSON shape of
:mod:`.errors`, and every request gets one access-log line (tenant, operation, method,
path, status, duration).  A refusal sent before the body is read closes the connection
and says so (``Connection: close``).

Once a keep-alive request on plain HTTP has passed these checks, the connection itself
goes to the tenant's worker (:meth:`RestExchange._hand_off`), which serves the
connection's requests from then on and hands back what it does not serve
(:mod:`.restdirect`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine, Mapping
from typing import Any

import orjson
from tornado import httputil
from tornado.iostream import IOStream, SSLIOStream, StreamClosedError

from .catalog import Catalog, Principal
from .config import Settings
from .errors import (
    Forbidden,
    MethodNotAllowed,
    PayloadTooLarge,
    ProxyError,
    TooManyRequests,
    Unauthorized,
)
from .limits import RateLimits
from .rest import MUTATING_OPERATIONS
from .restdirect import MAX_CARRIED, token_digest
from .restroutes import (
    PREFIX,
    ROUTES,
    Route,
    api_token,
    http_date,
    log_http,
    match_route,
    parse_query,
    unquote_segment,
)
from .supervisor import Supervisor

__all__ = [
    "ROUTES",
    "PREFIX",
    "Route",
    "RestGateway",
    "RestExchange",
    "Inflight",
    "authenticate",
    "take_rate",
    "log_http",
]

log = logging.getLogger("faiss_proxy.access")


class Inflight:
    """REST requests being served (graceful shutdown waits for them)."""

    count = 0


def authenticate(headers: Mapping[str, str], catalog: Catalog) -> Principal:
    """The principal of ``Authorization: Bearer <key>`` (or ``X-API-Key``); raises
    :class:`Unauthorized` or :class:`Forbidden`."""
    token = api_token(headers)
    if token is None:
        raise Unauthorized("missing API key: send 'Authorization: Bearer <key>'")
    return catalog.authenticate(token)


def take_rate(rates: RateLimits, tenant: str) -> None:
    """One request of ``tenant``'s rate; :class:`TooManyRequests` (with ``Retry-After``) beyond it."""
    wait = rates.take(tenant)
    if wait > 0:
        raise TooManyRequests(f"tenant '{tenant}' is over its request rate; retry in {wait:.2f} s", wait)


def _unread(stream: IOStream) -> bytes | None:
    """The bytes Tornado has read from ``stream`` but not consumed: past a request's
    head, its body so far (IOStream's buffer is private; a test pins this)."""
    buf = getattr(stream, "_read_buffer", None)
    size = getattr(stream, "_read_buffer_size", None)
    if getattr(stream, "_user_read_buffer", True) or not isinstance(buf, bytearray) or not isinstance(size, int):
        return None
    if len(buf) != size:
        return None
    return bytes(buf)


class RestGateway(httputil.HTTPServerConnectionDelegate):
    """Target of the server's router for ``/v1/index...``: one :class:`RestExchange` per request."""

    def __init__(
        self, settings: Settings, catalog: Catalog, supervisor: Supervisor, rates: RateLimits, inflight: Inflight
    ) -> None:
        self.settings = settings
        self.catalog = catalog
        self.supervisor = supervisor
        self.rates = rates
        self.inflight = inflight
        self.max_body = settings.max_body_mb * 1024 * 1024
        self.direct_limit = settings.rest_direct_connections
        self._tasks: set[asyncio.Task[None]] = set()

    def start_request(self, server_conn: object, request_conn: httputil.HTTPConnection) -> RestExchange:
        return RestExchange(self, request_conn)

    def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)  # the loop keeps only weak references to tasks
        task.add_done_callback(self._tasks.discard)


class RestExchange(httputil.HTTPMessageDelegate):
    """One REST request: checked when its headers arrive, forwarded when its body is complete."""

    def __init__(self, gate: RestGateway, conn: httputil.HTTPConnection) -> None:
        self.gate = gate
        self.conn = conn
        self.started = time.perf_counter()
        self.method = "-"
        self.path = "-"
        self.tenant: str | None = None
        self.operation = "-"
        self.answered = False
        self.closed = False
        self.counted = False
        self.refused: BaseException | None = None

    # --- HTTPMessageDelegate ---------------------------------------------------------
    def headers_received(
        self, start_line: httputil.RequestStartLine | httputil.ResponseStartLine, headers: httputil.HTTPHeaders
    ) -> None:
        assert isinstance(start_line, httputil.RequestStartLine)
        self.started = time.perf_counter()
        self.method = start_line.method
        self.path, _, self.query = start_line.path.partition("?")
        self.body: list[bytes] = []
        self.gate.inflight.count += 1
        self.counted = True
        try:
            self._check(headers)
        except Exception as exc:
            if headers.get("Content-Length", "0") == "0" and "Transfer-Encoding" not in headers:
                self.refused = exc  # answered in finish(): the connection stays open
            else:
                # Answered now; the body is not read, so Tornado closes the connection
                # after the answer, which says so (clients then open a new one).
                self._fail(exc, close=True)
            return
        if self.gate.direct_limit > 0:
            self._hand_off(start_line, headers)

    def data_received(self, chunk: bytes) -> None:
        if not self.answered:
            self.body.append(chunk)

    def finish(self) -> None:
        if self.answered:
            return
        if self.refused is not None:
            self._fail(self.refused)
            return
        try:
            self.request = (self.operation, self.args, parse_query(self.query), b"".join(self.body))
            worker = self.gate.supervisor.ready_worker(self.principal.tenant)
            if worker is None:  # not running yet: start it, then send
                self.gate.spawn(self._start_worker())
            else:
                self.gate.supervisor.send_rest(worker, *self.request, self._on_reply)
        except Exception as exc:
            self._fail(exc)

    def on_connection_close(self) -> None:
        self.closed = True
        self._uncount()

    # --- the request -----------------------------------------------------------------
    def _check(self, headers: httputil.HTTPHeaders) -> None:
        route, match = match_route(self.path)
        op = route.operations.get(self.method)
        if op is None:
            raise MethodNotAllowed(route.allow)
        self.operation = op
        self.args = {name: unquote_segment(value) for name, value in zip(route.groups, match.groups(), strict=True)}
        principal = authenticate(headers, self.gate.catalog)
        self.tenant = principal.tenant  # logged from here on, 429 included
        take_rate(self.gate.rates, principal.tenant)
        if op in MUTATING_OPERATIONS and principal.read_only:
            raise Forbidden(f"this API key is read-only; '{op}' changes data")
        self.principal = principal
        limit = self.gate.max_body
        length = headers.get("Content-Length")
        if length is not None and length.isdigit() and int(length) > limit:
            raise PayloadTooLarge(f"request body over {self.gate.settings.max_body_mb} MiB (max_body_mb)")
        self.conn.set_max_body_size(limit)  # type: ignore[attr-defined]

    def _hand_off(self, start_line: httputil.RequestStartLine, headers: httputil.HTTPHeaders) -> None:
        """Give the connection, with this request, to the tenant's worker, which then
        serves it (see :mod:`.restdirect`); where it cannot, the gateway serves on."""
        gate = self.gate
        if start_line.version != "HTTP/1.1" or gate.rates.rate > 0:
            return  # HTTP/1.0 keep-alive rules, and one rate budget per tenant: the gateway's
        if "Transfer-Encoding" in headers or "Expect" in headers:
            return
        length = headers.get("Content-Length", "0")
        if not length.isascii() or not length.isdigit():
            return
        tokens = {t.strip() for t in headers.get("Connection", "").lower().split(",")}
        if "close" in tokens:
            return  # the hand-off pays off over a connection's later requests; this has none
        worker = gate.supervisor.ready_worker(self.principal.tenant)
        if worker is None or worker.slots is None or not worker.slots.free:
            return  # not started yet (the next request goes), or enough connections there
        stream = getattr(self.conn, "stream", None)
        if not isinstance(stream, IOStream) or isinstance(stream, SSLIOStream) or stream.socket is None:
            return  # TLS state cannot move to another process
        carried = _unread(stream)
        token = api_token(headers)
        if carried is None or len(carried) > MAX_CARRIED or token is None:
            return
        p = self.principal
        header = {
            "key_id": p.key_id,
            "key_sha256": token_digest(token),
            "read_only": p.read_only,
            "expires": p.expires,
            "peer": str(getattr(getattr(self.conn, "context", None), "remote_ip", None) or "-"),
            "max_body": gate.max_body,
            "request": {
                "method": self.method,
                "path": self.path,
                "op": self.operation,
                "args": self.args,
                "query": parse_query(self.query),
                "length": int(length),
                "keep_alive": True,
            },
        }
        self.conn.detach()  # type: ignore[attr-defined]
        self.answered = True
        self._uncount()
        sock = stream.socket
        try:
            gate.supervisor.hand_off_rest(worker, sock, header, carried)
        except Exception as exc:  # the connection is still ours: answer it here
            log.warning("REST hand-off failed tenant=%s: %s", p.tenant, exc)
            body = orjson.dumps({"error": {"code": "unavailable", "message": "the tenant's worker is not available"}})
            try:
                sock.send(
                    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                    b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body)
                )
            except OSError:
                pass
            log_http(
                p.tenant, self.operation, self.method, self.path, 503, 1000.0 * (time.perf_counter() - self.started)
            )
        finally:
            stream.close()  # the worker holds its own descriptor of the socket

    async def _start_worker(self) -> None:
        try:
            worker = await self.gate.supervisor.worker_for(self.principal.tenant)
            self.gate.supervisor.send_rest(worker, *self.request, self._on_reply)
        except Exception as exc:
            self._fail(exc)

    def _on_reply(self, result: tuple[int, bytes] | BaseException) -> None:
        if isinstance(result, BaseException):
            self._fail(result)
            return
        status, body = result
        elapsed = time.perf_counter() - self.started
        self.gate.supervisor.metrics.record(self.principal.tenant, "rest", self.operation, elapsed, status < 400)
        self._answer(status, body)

    # --- answers ---------------------------------------------------------------------
    def _fail(self, exc: BaseException, close: bool = False) -> None:
        if isinstance(exc, ProxyError):
            status, code, message, extra = exc.status, exc.code, exc.message, exc.http_headers()
        else:
            log.error("REST request %s %s failed", self.method, self.path, exc_info=exc)
            status, code, message, extra = 500, "internal", "internal server error", {}
        if close:
            extra = {**extra, "Connection": "close"}
        self._answer(status, orjson.dumps({"error": {"code": code, "message": message}}), extra)

    def _answer(self, status: int, body: bytes, extra: Mapping[str, str] | None = None) -> None:
        if self.answered:
            return
        self.answered = True
        self._uncount()
        duration_ms = 1000.0 * (time.perf_counter() - self.started)
        log_http(self.tenant, self.operation, self.method, self.path, status, duration_ms)
        if self.closed:
            return
        headers = httputil.HTTPHeaders()
        headers["Content-Type"] = "application/json"
        headers["Content-Length"] = str(len(body))
        headers["Date"] = http_date()
        for name, value in (extra or {}).items():
            headers[name] = value
        start = httputil.ResponseStartLine("HTTP/1.1", status, httputil.responses.get(status, "Unknown"))
        try:
            # A HEAD answer has the headers of the GET answer and no body.
            self.conn.write_headers(start, headers, b"" if self.method == "HEAD" else body)
            self.conn.finish()
        except StreamClosedError:
            pass

    def _uncount(self) -> None:
        if self.counted:
            self.counted = False
            self.gate.inflight.count -= 1

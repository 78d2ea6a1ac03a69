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
path, status, duration).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import urllib.parse
from collections.abc import Coroutine, Mapping
from email.utils import formatdate
from typing import Any

import orjson
from tornado import httputil
from tornado.iostream import StreamClosedError

from .catalog import Catalog, Principal
from .config import Settings
from .errors import (
    BadRequest,
    Forbidden,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    ProxyError,
    TooManyRequests,
    Unauthorized,
)
from .limits import RateLimits
from .rest import MUTATING_OPERATIONS
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


class Route:
    """One REST path: its regex, the names of its groups, and HTTP method -> operation."""

    def __init__(self, pattern: str, groups: tuple[str, ...], methods: tuple[tuple[str, str], ...]) -> None:
        self.pattern = pattern
        self.regex = re.compile(pattern + "$")
        self.groups = groups
        self.methods = methods
        self.operations = dict(methods)
        self.allow = ", ".join(method for method, _ in methods)

    @property
    def template(self) -> str:
        """The path with each group as ``{}`` (``/v1/index/{}/search``)."""
        return re.sub(r"\(\[\^/\]\+\)", "{}", self.pattern.replace("/?", ""))


ROUTES: tuple[Route, ...] = (
    Route(r"/v1/index/?", (), (("GET", "list"), ("POST", "create"))),
    Route(r"/v1/index/([^/]+)", ("index",), (("GET", "info"), ("DELETE", "drop"))),
    Route(r"/v1/index/([^/]+)/vectors", ("index",), (("POST", "upsert"),)),
    Route(
        r"/v1/index/([^/]+)/vectors/([^/]+)", ("index", "vector"), (("GET", "get_vector"), ("DELETE", "delete_vector"))
    ),
    Route(r"/v1/index/([^/]+)/search", ("index",), (("GET", "search"), ("POST", "search"))),
    Route(r"/v1/index/([^/]+)/train", ("index",), (("POST", "train"),)),
    Route(r"/v1/index/([^/]+)/ntotal", ("index",), (("GET", "ntotal"),)),
    Route(r"/v1/index/([^/]+)/reset", ("index",), (("POST", "reset"),)),
    Route(r"/v1/index/([^/]+)/specialized_search", ("index",), (("POST", "specialized_search"),)),
)

#: The prefix the server's router sends here (everything else is the Tornado application).
PREFIX = r"/v1/index(/.*)?"


class Inflight:
    """REST requests being served (graceful shutdown waits for them)."""

    count = 0


def authenticate(headers: Mapping[str, str], catalog: Catalog) -> Principal:
    """The principal of ``Authorization: Bearer <key>`` (or ``X-API-Key``); raises
    :class:`Unauthorized` or :class:`Forbidden`."""
    header = headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if not header:
        token = headers.get("X-API-Key", "")
        scheme = "Bearer" if token else ""
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("missing API key: send 'Authorization: Bearer <key>'")
    return catalog.authenticate(token.strip())


def take_rate(rates: RateLimits, tenant: str) -> None:
    """One request of ``tenant``'s rate; :class:`TooManyRequests` (with ``Retry-After``) beyond it."""
    wait = rates.take(tenant)
    if wait > 0:
        raise TooManyRequests(f"tenant '{tenant}' is over its request rate; retry in {wait:.2f} s", wait)


def log_http(tenant: str | None, operation: str, method: str, path: str, status: int, duration_ms: float) -> None:
    """The access-log line of one HTTP request (never keys or bodies)."""
    level = logging.INFO if status < 500 else logging.ERROR
    if not log.isEnabledFor(level):
        return
    tenant = tenant or "-"
    log.log(
        level,
        "http tenant=%s op=%s method=%s path=%s status=%d duration=%.2fms",
        tenant,
        operation,
        method,
        path,
        status,
        duration_ms,
        extra={
            "fields": {
                "kind": "http",
                "tenant": tenant,
                "operation": operation,
                "method": method,
                "path": path,
                "status": status,
                "duration_ms": round(duration_ms, 3),
            }
        },
    )


class _Date:
    """The ``Date`` header, formatted once a second."""

    second = -1
    text = ""

    @classmethod
    def now(cls) -> str:
        second = int(time.time())
        if second != cls.second:
            cls.second, cls.text = second, formatdate(second, usegmt=True)
        return cls.text


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
                self._fail(exc)  # answered now; Tornado closes the connection (the body is not read)

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
            query = {k: v[-1] for k, v in urllib.parse.parse_qs(self.query, keep_blank_values=True).items()}
            self.request = (self.operation, self.args, query, b"".join(self.body))
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
        route, match = _route(self.path)
        op = route.operations.get(self.method)
        if op is None:
            raise MethodNotAllowed(route.allow)
        self.operation = op
        self.args = {name: _unquote(value) for name, value in zip(route.groups, match.groups(), strict=True)}
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
    def _fail(self, exc: BaseException) -> None:
        if isinstance(exc, ProxyError):
            status, code, message, extra = exc.status, exc.code, exc.message, exc.http_headers()
        else:
            log.error("REST request %s %s failed", self.method, self.path, exc_info=exc)
            status, code, message, extra = 500, "internal", "internal server error", {}
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
        headers["Date"] = _Date.now()
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


def _route(path: str) -> tuple[Route, re.Match[str]]:
    for route in ROUTES:
        match = route.regex.match(path)
        if match is not None:
            return route, match
    raise NotFound(f"no such endpoint: {path}")


def _unquote(value: str) -> str:
    """A path segment, percent-decoded as UTF-8 (as Tornado decodes its path arguments)."""
    try:
        return urllib.parse.unquote_to_bytes(value).decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("the path is not valid percent-encoded UTF-8") from None

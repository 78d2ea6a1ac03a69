"""REST connections served by the tenant's worker itself ("direct" connections).

The gateway checks every REST request as always (:mod:`.resthttp`: route, method, key,
rate, scope, body size).  On plain HTTP it then hands the client's socket to the
tenant's worker, as it does for RPC sessions (``SCM_RIGHTS`` over the control
channel), together with the checked request and whatever bytes of it Tornado had
already read.  From then on this module serves the connection, in a thread of its
own: it answers that request, and every later request on the connection that the
gateway would have let through with the same key, so keep-alive clients cost the
gateway no CPU per request.

The worker serves an HTTP/1.1 request for a ``/v1/index...`` route and method with
the key the gateway checked (the gateway passes the key's SHA-256, and each request's
key is compared with it), without ``Transfer-Encoding``, ``Expect`` or ``Upgrade``, with a body within
``max_body_mb``, a mutation only with a read-write key, while the key has neither
expired nor been revoked.  Anything else (another key, perhaps another tenant's;
``/v1/health``; ``/admin``; a chunked upload; a header layout the small parser here
does not take) is **handed back**: the worker sends the socket and the bytes it has
read of the request back over its control channel, and the gateway's Tornado server
serves the connection from that request on, as if it had never left (and may hand it
over again).  A connection is handed back too when it has been idle for
``idle_timeout`` seconds (so an idle worker can stop without closing its clients'
connections), when its key is revoked or expires (the gateway then answers 401), and
when the worker stops.  Nothing a client sent is lost on the way back: bytes not yet
read stay in the socket, bytes read travel with it.

Each request gets the access-log line the gateway writes (:func:`.restroutes.log_http`)
and counts in the worker's REST statistics, which reach ``/v1/metrics``.  The worker
marks each connection's state (:data:`IDLE`, :data:`BUSY`, :data:`ANSWERING`) in a byte
the gateway shares, so that if the worker dies, the gateway (which kept a duplicate of
the socket) answers a request still in progress with 503.
"""

from __future__ import annotations

import hashlib
import hmac
import http
import logging
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

from .errors import ProxyError
from .metrics import OperationStats
from .rest import MUTATING_OPERATIONS
from .restroutes import api_token, http_date, log_http, match_route, parse_query, unquote_segment

__all__ = [
    "Grant",
    "Request",
    "DirectConnection",
    "token_digest",
    "MAX_HEAD",
    "MAX_CARRIED",
    "IDLE",
    "BUSY",
    "ANSWERING",
]

log = logging.getLogger("faiss_proxy.restdirect")

#: Longest request head the worker parses; a longer one goes back to the gateway.
MAX_HEAD = 64 * 1024
#: Bytes read per ``recv`` while looking for a head (so what travels back is bounded).
RECV_SIZE = 16 * 1024
#: Most bytes of a request that travel with its socket, either way.
MAX_CARRIED = MAX_HEAD + RECV_SIZE
#: How often an idle connection looks at its flags (revoked key, stopping worker).
TICK = 0.25

#: A connection's state, marked where the gateway can read it (a byte of shared memory,
#: see faiss_proxy_server.supervisor.DirectSlots): if the worker dies, a ``BUSY``
#: connection (a request read or being read, nothing answered yet) gets the gateway's
#: 503; an ``IDLE`` or ``ANSWERING`` one is closed.
IDLE, BUSY, ANSWERING = 1, 2, 3

_REASONS = {status.value: status.phrase.encode() for status in http.HTTPStatus}


def token_digest(token: str) -> str:
    """What the gateway passes the worker of a key: its SHA-256, hex (the key itself is
    not put into the hand-off's header)."""
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


@dataclass(frozen=True)
class Grant:
    """What the gateway checked: whose connection this is, and what it may do."""

    tenant: str
    key_id: str
    key_sha256: str
    read_only: bool
    expires: float | None
    peer: str
    max_body: int


@dataclass
class Request:
    """One request, routed and checked."""

    method: str
    path: str
    op: str
    args: dict[str, str]
    query: dict[str, str]
    length: int
    keep_alive: bool
    started: float


#: ``handle(op, path args, query, body) -> (status, body)``: the worker's REST operations.
Handler = Callable[[str, dict[str, str], dict[str, str], bytes], tuple[int, bytes]]
#: ``give_back(sock, carried bytes)``: send the socket back to the gateway (raises OSError).
GiveBack = Callable[[socket.socket, bytes], None]


class DirectConnection:
    """One handed-over client connection, served by :meth:`serve` in its own thread."""

    def __init__(
        self,
        sock: socket.socket,
        grant: Grant,
        handle: Handler,
        give_back: GiveBack,
        stats: OperationStats,
        idle_timeout: float,
        io_timeout: float = 60.0,
        mark: Callable[[int], None] | None = None,
    ) -> None:
        self.sock = sock
        self.mark = mark or _no_mark
        self.grant = grant
        self.handle = handle
        self.give_back = give_back
        self.stats = stats
        self.idle_timeout = idle_timeout
        self.io_timeout = io_timeout
        #: Set (from another thread) to hand the connection back at its next request
        #: boundary: a revoked or expired key, a stopping worker.
        self.ended: str | None = None
        self.slot = -1  # the gateway's number for this connection (its state byte)
        self.handed_back = False
        self.requests = 0
        self.reported = 0  # requests counted in the worker's last "keys used" report
        self._buf = bytearray()
        self._token: str | None = None  # the last key found to match key_sha256

    # --- the connection ------------------------------------------------------------
    def serve(self, first: Request, carried: bytes) -> str:
        """Serve ``first`` and what follows; returns how the connection left this
        worker (``closed``, ``handed back (...)``)."""
        self._buf += carried
        request: Request | None = first
        why = "closed"
        try:
            while request is not None:
                if not self._answer(request):
                    return self._close("closed")
                if not request.keep_alive:
                    return self._close("closed")
                request, why = self._next_request()
        except OSError:
            return self._close("closed")
        return why

    def _next_request(self) -> tuple[Request | None, str]:
        """The next request this worker serves, or ``(None, how the connection left)``."""
        sock, buf = self.sock, self._buf
        sock.settimeout(TICK)
        idle_since = time.monotonic()
        while True:
            end = buf.find(b"\r\n\r\n")
            if end >= 0:
                if self.ended is not None:
                    return None, self._hand_back(self.ended)
                request = self._parse(end)  # takes the head from the buffer if it serves it
                if request is None:
                    return None, self._hand_back("a request the gateway serves")
                self.mark(BUSY)
                return request, ""
            if len(buf) > MAX_HEAD:
                return None, self._hand_back("a long request head")
            if self.ended is not None:
                return None, self._hand_back(self.ended)
            try:
                chunk = sock.recv(RECV_SIZE)
            except TimeoutError:
                waited = time.monotonic() - idle_since
                if not buf and waited >= self.idle_timeout:
                    return None, self._hand_back("idle")
                if buf and waited >= self.io_timeout:
                    return None, self._close("closed (a request head that did not end)")
                continue
            if not chunk:
                return None, self._close("closed")
            if not buf:
                idle_since = time.monotonic()  # a head has begun: it has io_timeout to end
            buf += chunk

    def _parse(self, end: int) -> Request | None:
        """The request whose head ends at ``end`` if this worker serves it (its head is
        then taken from the buffer), else None (the bytes stay for the gateway)."""
        started = time.perf_counter()
        grant = self.grant
        lines = bytes(self._buf[:end]).decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or parts[2] != "HTTP/1.1":
            return None
        method, target, _version = parts
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, colon, value = line.partition(":")
            if not colon or not name or name != name.strip() or name.lower() in headers:
                return None  # obs-fold, a malformed or a repeated field: the gateway decides
            headers[name.lower()] = value.strip(" \t")
        if "transfer-encoding" in headers or "expect" in headers or "upgrade" in headers:
            return None
        length_text = headers.get("content-length", "0")
        if not length_text or not length_text.isascii() or not length_text.isdigit():
            return None
        length = int(length_text)
        if length > grant.max_body:
            return None
        token = api_token(
            {"Authorization": headers.get("authorization", ""), "X-API-Key": headers.get("x-api-key", "")}
        )
        if token is None:
            return None
        if token != self._token:  # the key the connection used last needs no second hash
            if not hmac.compare_digest(token_digest(token), grant.key_sha256):
                return None
            self._token = token
        if grant.expires is not None and time.time() >= grant.expires:
            return None
        path, _, query = target.partition("?")
        try:
            route, match = match_route(path)
            args = {name: unquote_segment(value) for name, value in zip(route.groups, match.groups(), strict=True)}
            queries = parse_query(query)
        except (ProxyError, ValueError):
            return None
        op = route.operations.get(method)
        if op is None or (op in MUTATING_OPERATIONS and grant.read_only):
            return None
        tokens = {t.strip() for t in headers.get("connection", "").lower().split(",")}
        del self._buf[: end + 4]
        return Request(method, path, op, args, queries, length, "close" not in tokens, started)

    # --- one request -----------------------------------------------------------------
    def _read_body(self, length: int) -> bytes | None:
        buf = self._buf
        if len(buf) >= length:
            body = bytes(buf[:length])
            del buf[:length]
            return body
        big = bytearray(length)  # an upload: straight into its own buffer
        got = len(buf)
        big[:got] = buf
        buf.clear()
        view = memoryview(big)
        self.sock.settimeout(self.io_timeout)
        try:
            while got < length:
                n = self.sock.recv_into(view[got:])
                if not n:
                    return None
                got += n
        except TimeoutError:
            return None
        return bytes(big)

    def _answer(self, request: Request) -> bool:
        """Read the body, run the operation, write the answer; False if the client went away."""
        body = self._read_body(request.length)
        if body is None:
            return False
        self.stats.begin()
        status, reply = 500, b'{"error":{"code":"internal","message":"internal server error"}}'
        try:
            status, reply = self.handle(request.op, request.args, request.query, body)
        except Exception:
            log.exception("REST operation %s failed", request.op)
        finally:
            elapsed = time.perf_counter() - request.started
            self.stats.record(request.op, elapsed, status < 400)
        self.requests += 1
        head = b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\nDate: %s\r\n%s\r\n" % (
            status,
            _REASONS.get(status, b"Unknown"),
            len(reply),
            http_date().encode(),
            b"" if request.keep_alive else b"Connection: close\r\n",
        )
        self.sock.settimeout(self.io_timeout)
        self.mark(ANSWERING)
        try:
            if len(reply) < 65536:
                self.sock.sendall(head + reply)
            else:
                self.sock.sendall(head)
                self.sock.sendall(reply)
        except (OSError, TimeoutError):
            return False
        finally:
            log_http(self.grant.tenant, request.op, request.method, request.path, status, 1000.0 * elapsed)
        self.mark(IDLE)
        return True

    # --- leaving -----------------------------------------------------------------------
    def _hand_back(self, why: str) -> str:
        carried, self._buf = bytes(self._buf), bytearray()
        try:
            self.give_back(self.sock, carried)
        except OSError as exc:
            log.info("could not hand a REST connection back tenant=%s: %s", self.grant.tenant, exc)
            return self._close("closed (the gateway did not take it back)")
        self.handed_back = True
        self.sock.close()
        return f"handed back ({why})"

    def _close(self, why: str) -> str:
        try:  # shut down, not only closed: the gateway holds a duplicate of the socket
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        try:
            self.sock.close()
        except OSError:
            pass
        return why


def _no_mark(state: int) -> None:
    pass

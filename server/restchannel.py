"""The gateway-to-worker channel that carries REST requests.

Each tenant worker gets, next to its control socket, ``rest_threads`` ``SOCK_STREAM``
Unix socket pairs for REST.  The gateway writes requests and reads replies with
asyncio (:class:`RestClient`, one per channel) and sends each request down an idle
channel (:class:`RestPool`).  In the worker, each channel has one thread that reads a
request and runs it at once (:class:`RestServer`): no hand-off between threads, so
a quick request costs one wake-up; requests of a tenant run in parallel up to the
number of channels.  Frames, both ways::

    !IQI   request id, body length, header length
    header JSON: request {"op", "path", "query"} / reply {"status"}
    body   the HTTP request body as received / the JSON reply body

A channel answers in order, but the request id pairs replies anyway.  When the worker
dies, every pending request fails with 503 and the tenant's next request starts a
fresh worker.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import struct
import threading
from collections.abc import Callable

from .errors import ServiceUnavailable

__all__ = ["RestClient", "RestPool", "RestServer", "FRAME"]

log = logging.getLogger("faiss_proxy.restchannel")

FRAME = struct.Struct("!IQI")
MAX_HEADER = 1 << 20


class RestClient:
    """Gateway side of one channel: send requests, await replies.

    The socket is driven straight from the event loop (``add_reader``), without
    asyncio streams: a reply then costs one callback and one future."""

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self._sock = sock
        self._fd = sock.fileno()
        self._pending: dict[int, asyncio.Future[tuple[int, bytes]]] = {}
        self._next = 0
        self._inbox = bytearray()
        self._outbox = bytearray()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.closed = False

    @property
    def pending(self) -> int:
        return len(self._pending)

    async def request(self, op: str, path: dict[str, str], query: dict[str, str], body: bytes) -> tuple[int, bytes]:
        if self.closed:
            raise ServiceUnavailable("the tenant's worker stopped; retry the request")
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
            loop.add_reader(self._fd, self._on_readable)
        self._next += 1
        rid = self._next
        header = json.dumps({"op": op, "path": path, "query": query}).encode()
        future: asyncio.Future[tuple[int, bytes]] = loop.create_future()
        self._pending[rid] = future
        self._send(FRAME.pack(rid, len(body), len(header)) + header + body)
        try:
            return await future
        finally:
            self._pending.pop(rid, None)

    def _send(self, data: bytes) -> None:
        if self._outbox:
            self._outbox += data
            return
        try:
            sent = self._sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError:
            self.close()
            return
        if sent < len(data):
            self._outbox += memoryview(data)[sent:]
            assert self._loop is not None
            self._loop.add_writer(self._fd, self._on_writable)

    def _on_writable(self) -> None:
        try:
            sent = self._sock.send(self._outbox)
        except BlockingIOError:
            return
        except OSError:
            self.close()
            return
        del self._outbox[:sent]
        if not self._outbox and self._loop is not None:
            self._loop.remove_writer(self._fd)

    def _on_readable(self) -> None:
        try:
            data = self._sock.recv(1 << 20)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.close()
            return
        inbox = self._inbox
        inbox += data
        while len(inbox) >= FRAME.size:
            rid, body_len, header_len = FRAME.unpack_from(inbox)
            end = FRAME.size + header_len + body_len
            if len(inbox) < end:
                break
            try:
                status = int(json.loads(inbox[FRAME.size : FRAME.size + header_len])["status"])
            except (ValueError, KeyError, TypeError):
                self.close()
                return
            body = bytes(inbox[FRAME.size + header_len : end])
            del inbox[:end]
            future = self._pending.get(rid)
            if future is not None and not future.done():
                future.set_result((status, body))

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self._loop is not None:
            try:
                self._loop.remove_reader(self._fd)
                self._loop.remove_writer(self._fd)
            except (RuntimeError, ValueError, OSError):
                pass
        for future in self._pending.values():
            if not future.done():
                future.set_exception(ServiceUnavailable("the tenant's worker stopped while handling the request"))
        self._sock.close()


class RestPool:
    """Gateway side: the channels of one worker; each request takes an idle one."""

    def __init__(self, socks: list[socket.socket]) -> None:
        self.channels = [RestClient(s) for s in socks]

    async def request(self, op: str, path: dict[str, str], query: dict[str, str], body: bytes) -> tuple[int, bytes]:
        best = self.channels[0]
        for channel in self.channels:
            if channel.pending == 0:
                best = channel
                break
            if channel.pending < best.pending:
                best = channel
        return await best.request(op, path, query, body)

    def close(self) -> None:
        for channel in self.channels:
            channel.close()


class RestServer:
    """Worker side: one channel's thread reads a request, runs ``handle``, replies."""

    def __init__(
        self,
        sock: socket.socket,
        handle: Callable[[str, dict[str, str], dict[str, str], bytes], tuple[int, bytes]],
        name: str = "rest",
    ) -> None:
        self._sock = sock
        self._handle = handle
        self._name = name

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self._serve, name=self._name, daemon=True)
        thread.start()
        return thread

    def _recv_exactly(self, n: int) -> bytes:
        buf = bytearray(n)
        view = memoryview(buf)
        got = 0
        while got < n:
            k = self._sock.recv_into(view[got:])
            if not k:
                raise EOFError
            got += k
        return bytes(buf)

    def _serve(self) -> None:
        try:
            while True:
                rid, body_len, header_len = FRAME.unpack(self._recv_exactly(FRAME.size))
                if header_len > MAX_HEADER:
                    raise EOFError
                header = json.loads(self._recv_exactly(header_len))
                body = self._recv_exactly(body_len) if body_len else b""
                op = str(header.get("op"))
                status, reply = self._handle(op, header.get("path") or {}, header.get("query") or {}, body)
                head = b'{"status":%d}' % status
                self._sock.sendall(FRAME.pack(rid, len(reply), len(head)) + head + reply)
        except (EOFError, OSError, ValueError):
            log.debug("REST channel closed")

"""The gateway-to-worker channel that carries REST requests.

Each tenant worker gets, next to its control socket, ``rest_threads`` ``SOCK_STREAM``
Unix socket pairs for REST.  The gateway writes requests and reads replies from its
event loop and hands each reply to its request's callback (:class:`RestClient`, one
per channel); each request goes down an idle channel (:class:`RestPool`).  In the
worker, each channel has one thread that reads a request and runs it at once
(:class:`RestServer`): no hand-off between threads, so a quick request costs one
wake-up; requests of a tenant run in parallel up to the number of channels.  Frames, both ways::

    !IQI   request id, body length, header length
    header JSON: request {"op", "path", "query"} / reply {"status"}
    body   the HTTP request body as received / the JSON reply body

A channel answers in order, but the request id pairs replies anyway.  When the worker
dies, every pending request fails with 503 and the tenant's next request starts a
fresh worker.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
import threading
from collections.abc import Callable

import orjson

from .errors import ServiceUnavailable

__all__ = ["RestClient", "RestPool", "RestServer", "Reply", "FRAME"]

log = logging.getLogger("faiss_proxy.restchannel")

FRAME = struct.Struct("!IQI")
MAX_HEADER = 1 << 20


#: Called once per request with ``(status, body)``, or with the exception that failed it.
Reply = Callable[[tuple[int, bytes] | BaseException], None]


class RestClient:
    """Gateway side of one channel: send requests, hand each reply to its callback.

    The socket is driven straight from the event loop (``add_reader``), without
    asyncio streams, futures or tasks: a reply costs one callback.  (On the 2-core VMs
    each layer of Python per request shows: a request's code runs cold, after the
    client and the worker had the CPU.)"""

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self._sock = sock
        self._fd = sock.fileno()
        self._pending: dict[int, Reply] = {}
        self._next = 0
        self._inbox = bytearray()
        self._outbox = bytearray()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.closed = False

    @property
    def pending(self) -> int:
        return len(self._pending)

    def send(self, op: str, path: dict[str, str], query: dict[str, str], body: bytes, reply: Reply) -> None:
        """Send one request; ``reply`` is called later, from the event loop, exactly once."""
        if self.closed:
            reply(ServiceUnavailable("the tenant's worker stopped; retry the request"))
            return
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
            self._loop.add_reader(self._fd, self._on_readable)
        self._next += 1
        rid = self._next
        header = orjson.dumps({"op": op, "path": path, "query": query})
        self._pending[rid] = reply
        self._send(FRAME.pack(rid, len(body), len(header)) + header + body)

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
                status = int(orjson.loads(inbox[FRAME.size : FRAME.size + header_len])["status"])
            except (ValueError, KeyError, TypeError):
                self.close()
                return
            body = bytes(inbox[FRAME.size + header_len : end])
            del inbox[:end]
            reply = self._pending.pop(rid, None)
            if reply is not None:
                _call(reply, (status, body))

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
        pending, self._pending = self._pending, {}
        for reply in pending.values():
            _call(reply, ServiceUnavailable("the tenant's worker stopped while handling the request"))
        self._sock.close()


def _call(reply: Reply, result: tuple[int, bytes] | BaseException) -> None:
    """One reply callback; its failure is logged and stays its own request's."""
    try:
        reply(result)
    except Exception:
        log.exception("a REST reply callback failed")


class RestPool:
    """Gateway side: the channels of one worker; each request takes an idle one."""

    def __init__(self, socks: list[socket.socket]) -> None:
        self.channels = [RestClient(s) for s in socks]

    def pick(self) -> RestClient:
        best = self.channels[0]
        for channel in self.channels:
            if channel.pending == 0:
                return channel
            if channel.pending < best.pending:
                best = channel
        return best

    def send(self, op: str, path: dict[str, str], query: dict[str, str], body: bytes, reply: Reply) -> None:
        self.pick().send(op, path, query, body, reply)

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

    def _more(self, buf: bytearray) -> None:
        chunk = self._sock.recv(1 << 16)
        if not chunk:
            raise EOFError
        buf += chunk

    def _read_frame(self, buf: bytearray) -> tuple[int, bytes, bytes]:
        """The next ``(request id, header, body)``; one ``recv`` for a small request."""
        while len(buf) < FRAME.size:
            self._more(buf)
        rid, body_len, header_len = FRAME.unpack_from(buf)
        if header_len > MAX_HEADER:
            raise EOFError
        while len(buf) < FRAME.size + header_len:
            self._more(buf)
        header = bytes(buf[FRAME.size : FRAME.size + header_len])
        del buf[: FRAME.size + header_len]
        if len(buf) >= body_len:
            body = bytes(buf[:body_len])
            del buf[:body_len]
            return rid, header, body
        big = bytearray(body_len)  # a large upload: straight into its own buffer
        got = len(buf)
        big[:got] = buf
        buf.clear()
        view = memoryview(big)
        while got < body_len:
            k = self._sock.recv_into(view[got:])
            if not k:
                raise EOFError
            got += k
        return rid, header, bytes(big)

    def _serve(self) -> None:
        buf = bytearray()
        try:
            while True:
                rid, raw, body = self._read_frame(buf)
                header = orjson.loads(raw)
                op = str(header.get("op"))
                status, reply = self._handle(op, header.get("path") or {}, header.get("query") or {}, body)
                head = b'{"status":%d}' % status
                self._sock.sendall(FRAME.pack(rid, len(reply), len(head)) + head + reply)
        except (EOFError, OSError, ValueError):
            log.debug("REST channel closed")

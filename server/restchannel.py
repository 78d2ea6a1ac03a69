"""The gateway-to-worker channel that carries REST requests.

Each tenant worker gets, next to its control socket, one ``SOCK_STREAM`` Unix
socket pair for REST.  The gateway writes requests and reads replies with asyncio
(:class:`RestClient`); the worker reads requests on one thread and runs them on a
small thread pool (:class:`RestServer`), so slow requests of a tenant do not
hold up its quick ones.  Frames, both ways::

    !IQI   request id, body length, header length
    header JSON: request {"op", "path", "query"} / reply {"status"}
    body   the HTTP request body as received / the JSON reply body

Replies may come back in any order; the request id pairs them.  When the worker
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
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from .errors import ServiceUnavailable

__all__ = ["RestClient", "RestServer", "FRAME"]

log = logging.getLogger("faiss_proxy.restchannel")

FRAME = struct.Struct("!IQI")
MAX_HEADER = 1 << 20


class RestClient:
    """Gateway side: send requests, await replies (one per worker)."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._pending: dict[int, asyncio.Future[tuple[int, bytes]]] = {}
        self._next = 0
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._ready = asyncio.Lock()
        self.closed = False

    async def _start(self) -> asyncio.StreamWriter:
        async with self._ready:
            if self._writer is None:
                reader, writer = await asyncio.open_unix_connection(sock=self._sock, limit=1 << 20)
                self._writer = writer
                self._reader_task = asyncio.get_running_loop().create_task(self._read_replies(reader))
            return self._writer

    async def request(self, op: str, path: dict[str, str], query: dict[str, str], body: bytes) -> tuple[int, bytes]:
        if self.closed:
            raise ServiceUnavailable("the tenant's worker stopped; retry the request")
        writer = await self._start()
        self._next += 1
        rid = self._next
        header = json.dumps({"op": op, "path": path, "query": query}).encode()
        future: asyncio.Future[tuple[int, bytes]] = asyncio.get_running_loop().create_future()
        self._pending[rid] = future
        writer.write(FRAME.pack(rid, len(body), len(header)) + header)
        if body:
            writer.write(body)
        try:
            return await future
        finally:
            self._pending.pop(rid, None)

    async def _read_replies(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                head = await reader.readexactly(FRAME.size)
                rid, body_len, header_len = FRAME.unpack(head)
                header = json.loads(await reader.readexactly(header_len))
                body = await reader.readexactly(body_len) if body_len else b""
                future = self._pending.get(rid)
                if future is not None and not future.done():
                    future.set_result((int(header["status"]), body))
        except (asyncio.IncompleteReadError, ConnectionError, OSError, ValueError):
            pass
        finally:
            self.close()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for future in self._pending.values():
            if not future.done():
                future.set_exception(ServiceUnavailable("the tenant's worker stopped while handling the request"))
        if self._writer is not None:
            self._writer.close()
        else:
            self._sock.close()


class RestServer:
    """Worker side: read requests, run ``handle`` on a pool, write replies."""

    def __init__(
        self,
        sock: socket.socket,
        handle: Callable[[str, dict[str, str], dict[str, str], bytes], tuple[int, bytes]],
        threads: int,
        on_request: Callable[[str, int, float], None] | None = None,
    ) -> None:
        self._sock = sock
        self._handle = handle
        self._pool = ThreadPoolExecutor(max(1, threads), thread_name_prefix="rest")
        self._send_lock = threading.Lock()
        self._on_request = on_request

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self._serve, name="rest-reader", daemon=True)
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
                self._pool.submit(self._run, rid, header, body)
        except (EOFError, OSError, ValueError):
            log.debug("REST channel closed")

    def _run(self, rid: int, header: dict[str, Any], body: bytes) -> None:
        import time

        started = time.monotonic()
        op = str(header.get("op"))
        status, reply = self._handle(op, header.get("path") or {}, header.get("query") or {}, body)
        if self._on_request is not None:
            self._on_request(op, status, time.monotonic() - started)
        head = json.dumps({"status": status}).encode()
        with self._send_lock:
            try:
                self._sock.sendall(FRAME.pack(rid, len(reply), len(head)) + head + reply)
            except OSError:
                pass

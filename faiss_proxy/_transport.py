"""The RPyC transport used by both ends: framing, zero-copy arrays, strict configs.

RPyC's stock ``Channel`` + ``SocketStream`` have throughput traps (no TCP_NODELAY,
quadratic ``data = data[count:]`` slicing on send, zlib on every frame over 3 kB,
unbounded inflation and frame sizes on receive).  This module replaces that layer:

* :class:`FrameChannel` speaks one frame format::

      header  !IIB   meta length, attachment count, flags (always 0)
      lengths !Q * attachment count
      meta    the brine-encoded RPyC message
      attachments, raw, one after the other

  Sizes are checked against a limit before anything is allocated; there is no
  compression, so no decompression bomb.  Attachments are received with
  ``recv_into`` straight into the buffer that becomes the NumPy array.
* :class:`FramedConnection` teaches RPyC's boxing to put a :class:`~._wire.Blob`
  into the attachment list of *its own* message (no thread-local state, so a
  netref ``__del__`` triggered by the garbage collector mid-call cannot steal it).
* :class:`ClientConnection` never asks the server to describe a netref class (one
  round trip saved per new type); :class:`ServerConnection` refuses any object
  that lives in the client, so a server can never be handed a client netref
  (the ``__array__``/``__reduce__`` attack) and never calls back into a client.
"""

from __future__ import annotations

import builtins
import functools
import itertools
import json
import os
import secrets
import select
import socket
import ssl
import struct
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from rpyc.core import brine, consts, netref
from rpyc.core.async_ import AsyncResultTimeout
from rpyc.core.protocol import Connection
from rpyc.lib import Timeout

from ._wire import Blob, pack_json, unpack_json, wire_view

__all__ = [
    "FrameChannel",
    "FramedConnection",
    "ClientConnection",
    "ServerConnection",
    "ProtocolError",
    "client_config",
    "server_config",
    "set_nodelay",
    "LABEL_ATTACH",
    "DEFAULT_MAX_FRAME",
]

LABEL_ATTACH = 64
#: Brine-free messages for the hot operations (new, function, call, getattr,
#: setattr): one byte type, an 8-byte sequence number, a UTF-8 JSON body; the
#: frame's attachments are the call's buffers.  Server objects are named by their
#: RPyC id-packs, so their lifetime is still RPyC's (netrefs, refcounts, HANDLE_DEL).
MSG_FAST_REQUEST = 0x41
MSG_FAST_REPLY = 0x42
MSG_FAST_ERROR = 0x43
_REQUESTS = (MSG_FAST_REQUEST,)
_REPLIES = (MSG_FAST_REPLY, MSG_FAST_ERROR)
SEQ = struct.Struct("!Q")
_TYPE_SEQ = struct.Struct("!BQ")  # a fast message's type byte and sequence number
HEADER = struct.Struct("!IIB")
_unpack_header = HEADER.unpack_from
LENGTH = struct.Struct("!Q")
#: A frame's header followed by its attachment lengths, for 0-3 attachments (the
#: hot path; more are packed with a format built per frame).
_HEADS = tuple(struct.Struct("!IIB" + "Q" * n) for n in range(4))
MAX_ATTACHMENTS = 4096
DEFAULT_MAX_FRAME = 1 << 30
_SMALL = 1 << 16
_SPARE_MAX = 256 << 20  # largest receive buffer a channel keeps for reuse
#: Bytes of the arenas a channel copies small attachments into, each on a 64-byte
#: boundary (see FrameChannel.take_fast): a search's query vector off that boundary
#: made a 100k flat scan 27-40 µs slower on the reference VM (split loads).
_ARENA = 16 << 10
#: Plans a session keeps (see ServerConnection), and the longest request they are made for.
_MAX_PLANS = 64
_MAX_PLAN_KEY = 2048


def fast_head(msg: int, body: bytes, sizes: list[int]) -> bytes | None:
    """The head of every small fast frame of type ``msg`` that carries ``body`` and
    attachments of these sizes: header, attachment lengths and the type byte (the
    sequence number, the body and the attachments follow).  None when such frames
    are not small (more than three attachments, over 64 KiB): they go the general way."""
    if len(sizes) >= len(_HEADS) or len(body) + sum(sizes) > _SMALL:
        return None
    return _HEADS[len(sizes)].pack(_TYPE_SEQ.size + len(body), len(sizes), 0, *sizes) + bytes((msg,))


#: What a plan returns when the call has written its results into the arrays of the
#: reply frame the transport gave it, and has sent that frame (see ServerConnection).
FILLED = "filled"


class _ReplyFrame:
    """A reusable reply frame for a plan whose result is arrays it can write into
    (``index.search(x, k, D=D, I=I)``): head, body and the arrays' room
    (``outputs``) in one buffer.  The session writes the call's sequence number
    before the call; once faiss has written the arrays, the plan sends the frame
    itself with ``send()`` (one ``sendall``; the session sets ``send``), so nothing
    stands between the scan and the send.  (Run on the session's leading thread
    only, one call at a time; a frame that has to wait in the send queue goes as a
    copy.)"""

    __slots__ = ("body", "outputs", "send", "seq_at", "wire")

    def __init__(self, body: bytes, specs: tuple[tuple[np.dtype, tuple[int, ...]], ...], head: bytes) -> None:
        sizes = [dtype.itemsize * int(np.prod(shape)) for dtype, shape in specs]
        before = len(head) + SEQ.size + len(body)
        buffer = bytearray(64 + before + sum(sizes))
        # The arrays start on a 64-byte boundary (the buffer itself may start anywhere).
        shift = -(np.frombuffer(buffer, np.uint8).ctypes.data + before) % 64
        buffer[shift : shift + len(head)] = head
        buffer[shift + len(head) + SEQ.size : shift + before] = body
        self.body = body
        self.seq_at = len(head)  # in ``wire``
        self.wire = memoryview(buffer)[shift : shift + before + sum(sizes)]
        outputs, offset = [], shift + before
        for (dtype, shape), size in zip(specs, sizes, strict=True):
            outputs.append(np.ndarray(shape, dtype, buffer, offset))
            offset += size
        self.outputs = tuple(outputs)
        self.send: Callable[[], None] = _nothing


def reply_frame(body: bytes, specs: Any) -> _ReplyFrame | None:
    """A :class:`_ReplyFrame` for this reply body and result arrays, or None where
    one cannot serve (too many arrays, a frame over 64 KiB, an array that would
    not be aligned for its dtype)."""
    offset, sizes = 0, []
    for dtype, shape in specs:
        if offset % dtype.alignment:
            return None
        sizes.append(dtype.itemsize * int(np.prod(shape)))
        offset += sizes[-1]
    head = fast_head(MSG_FAST_REPLY, body, sizes) if specs else None
    return None if head is None else _ReplyFrame(body, specs, head)


#: Numbers that name a worker's objects to its peers (in id-packs, and as their
#: hash): unique in the process and never reused, from a random start so that an
#: id-pack of another worker's session names nothing here.  RPyC's own id-packs are
#: made of ``id()``, memory addresses, which would tell a peer the layout of the
#: worker's memory.
_WIRE_NUMBERS = itertools.count(secrets.randbits(62) + 1)


def next_wire_number() -> int:
    return next(_WIRE_NUMBERS)


_yield = getattr(os, "sched_yield", lambda: None)
_PREEMPTED = 50e-6  # a yield that took longer than this let another thread run
#: A try of a spin that does not yield counts as descheduled only past this gap.  On a
#: VM, gaps of 50-300 µs are interrupts and the hypervisor, not a thread of this
#: machine that wants the CPU: at 100k vectors (2 ms searches) 12-39% of the
#: client's spins saw one, and the sleep they then fell into cost 50 µs per call.
#: A thread that does take the CPU from a spinner runs for longer (a search).
_DESCHEDULED = 300e-6


class ProtocolError(EOFError):
    """The peer sent a frame that breaks the protocol; the connection is closed."""


def set_nodelay(sock: socket.socket) -> None:
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class FrameChannel:
    """A framed, size-bounded channel over a connected socket (see module doc)."""

    def __init__(self, sock: socket.socket, max_frame: int = DEFAULT_MAX_FRAME, spin: float = 0.0) -> None:
        sock.setblocking(True)
        self.spin = spin
        # The last call was answered within ``spin``: the next one spins too.  (A
        # call that outlasted the spin sends the next one straight to sleep, so a
        # client of long calls does not burn ``spin`` of CPU on each.)
        self.brisk = True
        set_nodelay(sock)
        self.sock = sock
        self.max_frame = max_frame
        self._closed = False
        self._local = threading.local()
        self._buf = bytearray(_SMALL)
        self._view = memoryview(self._buf)
        self._start = self._end = 0
        self._spare: np.ndarray | None = None
        self._arena = memoryview(bytearray())  # (see _aligned_copy)
        self._arena_at = 0
        self._poller = select.poll()
        self._poller.register(sock.fileno(), select.POLLIN | select.POLLPRI | select.POLLHUP)
        self._tls = isinstance(sock, ssl.SSLSocket)

    # --- the interface rpyc.Connection uses -------------------------------------
    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()

    def fileno(self) -> int:
        return self.sock.fileno()

    def poll(self, timeout: Any) -> bool:
        if self._closed:
            raise EOFError("connection closed")
        if self._end > self._start:
            return True
        if self._tls and self.sock.pending():  # type: ignore[attr-defined]  # decrypted bytes in the SSL object
            return True
        if self.spin > 0 and self.brisk and self.spin_recv(self.spin):
            return True
        if type(timeout) is float:
            left: float | None = timeout
        else:
            left = (timeout if isinstance(timeout, Timeout) else Timeout(timeout)).timeleft()
        return bool(self._poller.poll(None if left is None else max(0, int(left * 1000))))

    def spin_recv(self, seconds: float, give_way: bool = False) -> bool:
        """Busy-wait up to ``seconds`` for data (no sleep, no wake-up); True when
        some is buffered.

        A message that arrives within a few hundred microseconds is picked up at
        once instead of after the scheduler wakes this thread (15-50 µs on a VM,
        paid again in the sender's ``send``); longer waits fall through to a
        blocking read or poll.  The spin stops as soon as the scheduler gave this
        CPU to another thread (the machine is busy: spinning would only steal CPU
        from the work being waited for); with ``give_way`` it also yields the CPU
        between tries, so that happens at once, and a yield of more than 50 µs
        ends the spin; without it, a gap of more than 300 µs does (shorter ones
        are interrupts and the hypervisor).  (The worker's spins give way; the
        client's do not: a yielding client measured no faster, and in one of two
        comparisons on this VM 40-60 µs slower.)  Not for TLS sockets (no
        ``MSG_DONTWAIT`` reads)."""
        if self._end > self._start:
            return True
        self._start = self._end = 0
        last = time.perf_counter()
        deadline = last + seconds
        gap = _PREEMPTED if give_way else _DESCHEDULED
        view = self._view[self._end :]
        while True:
            try:
                self._end += self._recv_into(view, socket.MSG_DONTWAIT)
                return True
            except BlockingIOError:
                now = time.perf_counter()
                if now > deadline or now - last > gap:
                    return False  # (preempted: another thread had the CPU; wait asleep instead)
                last = now
                if give_way:
                    _yield()  # to any other thread that wants this CPU

    def recv(self) -> bytes:
        self._local.attachments = ()  # drop the previous frame's buffers first
        if self._end - self._start < HEADER.size:
            self._ensure(HEADER.size)
        buf = self._buf
        meta_len, count, flags = _unpack_header(buf, self._start)
        if flags != 0 or count > MAX_ATTACHMENTS or meta_len > self.max_frame:
            self.close()
            raise ProtocolError("malformed frame header")
        head = HEADER.size + LENGTH.size * count
        if self._end - self._start < head:
            self._ensure(head)
        if count == 0:
            lengths: tuple[int, ...] = ()
            body = meta_len
        elif count == 1:
            lengths = LENGTH.unpack_from(buf, self._start + HEADER.size)
            body = meta_len + lengths[0]
        else:
            lengths = struct.unpack_from(f"!{count}Q", buf, self._start + HEADER.size)
            body = meta_len + sum(lengths)
        if body > self.max_frame:
            self.close()
            raise ProtocolError(f"frame of {body} bytes exceeds the limit of {self.max_frame}")
        if head + body <= len(buf):
            # A small frame: parse it out of the read buffer.
            if self._end - self._start < head + body:
                self._ensure(head + body)
            pos = self._start + head
            meta = bytes(self._view[pos : pos + meta_len])
            attachments = self._copy_out(pos + meta_len, lengths)
        else:
            self._start += head
            meta = self._read_exact(meta_len)
            attachments = []
            for n in lengths:
                large = self._buffer(n)
                self._read_into(memoryview(large))  # type: ignore[arg-type]
                attachments.append(large)
        self._local.attachments = attachments
        return meta

    def take_fast(
        self, types: tuple[int, ...], aligned: bool = False
    ) -> tuple[int, int, bytes, tuple[Any, ...]] | None:
        """The next frame, consumed, if the read buffer already holds all of it and
        it is a fast message of one of ``types`` with at most three attachments:
        ``(type, sequence number, body, attachments)``, the body being the meta
        after the sequence number and the attachments ``bytearray`` copies (one
        allocation and one ``memcpy`` each, where a uint8 array copy runs through
        NumPy's dtype-transfer code, which right after a 100k search, with the
        caches cold, cost the worker 5-7 µs a call and the client 3-6 µs); with
        ``aligned``, writable memoryviews on 64-byte boundaries
        (:meth:`_aligned_copy`: the worker's, since they become faiss's inputs).
        None, with nothing consumed, for anything else: :meth:`recv` reads that
        (and refuses what is malformed).

        The hot path of both ends: a single query and its answer are such frames,
        and this is :meth:`recv` and :meth:`take_attachments` in one step, without
        the thread-local slot (the caller gets the attachments itself)."""
        start = self._start
        have = self._end - start
        if have < HEADER.size:
            return None
        buf = self._buf
        meta_len, count, flags = _unpack_header(buf, start)
        if count >= len(_HEADS) or flags or meta_len < _TYPE_SEQ.size:
            return None
        head = _HEADS[count]
        if have < head.size:
            return None
        lengths = head.unpack_from(buf, start)[3:]
        pos = start + head.size
        size = meta_len + sum(lengths)
        if pos + size > self._end or size > self.max_frame:
            return None
        msg, seq = _TYPE_SEQ.unpack_from(buf, pos)
        if msg not in types:
            return None
        view = self._view
        body = bytes(view[pos + _TYPE_SEQ.size : pos + meta_len])
        pos += meta_len
        copies: list[Any] = []
        for n in lengths:
            copies.append(self._aligned_copy(pos, n) if aligned else bytearray(view[pos : pos + n]))
            pos += n
        self._start = pos
        return msg, seq, body, tuple(copies)

    def take_repeat(self, prefix: bytes, body: bytes, sizes: tuple[int, ...]) -> tuple[int, tuple[Any, ...]] | None:
        """The next frame, consumed, if the read buffer already holds all of it and it
        repeats an earlier small fast frame but for its sequence number and the bytes
        of its attachments: ``prefix`` (header, attachment lengths and message type,
        :func:`fast_head`), any sequence number, ``body``, then attachments of
        ``sizes`` bytes.  Returns ``(sequence number, attachments)``, the attachments
        as :meth:`take_fast` with ``aligned`` takes them.  None, with nothing
        consumed, for anything else.

        The worker's hot path for a client calling the same method in a loop: two
        byte comparisons instead of parsing the frame, and no body to copy or hash
        (the caller already knows what the body means).  The frame is as well formed
        as the one it repeats: its header says the same."""
        start = self._start
        at = start + len(prefix) + SEQ.size
        end = at + len(body) + sum(sizes)
        buf = self._buf
        if end > self._end or not buf.startswith(prefix, start) or not buf.startswith(body, at):
            return None
        (seq,) = SEQ.unpack_from(buf, at - SEQ.size)
        pos = at + len(body)
        copies = []
        for n in sizes:
            copies.append(self._aligned_copy(pos, n))
            pos += n
        self._start = end
        return seq, tuple(copies)

    def _aligned_copy(self, pos: int, n: int) -> memoryview:
        """A copy of ``n`` buffered bytes from ``pos`` on a 64-byte boundary, as a
        writable memoryview: carved from an arena of :data:`_ARENA` bytes, which is
        never written twice (each copy is fresh memory, so an array faiss keeps,
        an ``IDSelectorArray``'s ids say, stays as it was) and is freed when no
        copy of it is left."""
        at = -(-self._arena_at // 64) * 64
        if at + n > len(self._arena):
            size = max(_ARENA, n)
            block = np.empty(size + 64, np.uint8)
            shift = -block.ctypes.data % 64
            self._arena = block.data[shift : shift + size]
            at = 0
        end = at + n
        copy = self._arena[at:end]
        copy[:] = self._view[pos : pos + n]
        self._arena_at = end
        return copy

    def _copy_out(self, pos: int, lengths: tuple[int, ...]) -> list[np.ndarray]:
        """Copies of the attachments buffered from ``pos`` on, which are then consumed."""
        buf = self._buf
        attachments = []
        for n in lengths:
            attachments.append(np.frombuffer(buf, np.uint8, n, pos).copy())
            pos += n
        self._start = pos
        return attachments

    def _buffer(self, n: int) -> np.ndarray:
        """A buffer for a large attachment.

        Fresh memory costs a page fault per 4 KiB (for a 50 MB ``add`` that was a
        quarter of the time), so the last large buffer is kept and reused once
        nothing refers to it any more (faiss copies what it keeps)."""
        # getrefcount == 2: this attribute and the call's own argument, so no
        # array or view handed out earlier is still alive.
        if self._spare is not None and self._spare.nbytes >= n and sys.getrefcount(self._spare) == 2:
            return self._spare[:n]
        try:
            buf = np.empty(n, dtype=np.uint8)
        except MemoryError:
            self.close()
            raise ProtocolError(f"no memory for a frame of {n} bytes") from None
        if n <= _SPARE_MAX:
            self._spare = buf
        return buf

    def _ensure(self, n: int) -> None:
        """Have at least ``n`` (<= buffer size) bytes buffered."""
        if self._end - self._start >= n:
            return
        if len(self._buf) - self._start < n:
            left = self._end - self._start
            self._view[:left] = self._view[self._start : self._end]
            self._start, self._end = 0, left
        while self._end - self._start < n:
            self._fill()

    def take_attachments(self) -> tuple[np.ndarray, ...]:
        """The raw buffers of the frame this thread received last, handed over: the
        channel keeps no reference to them, so once the caller drops them the
        receive buffer is free for the next large frame, whichever thread reads it
        (a reference left in a thread's slot would force a fresh, page-faulting
        buffer for every large frame read by another thread)."""
        attachments = tuple(getattr(self._local, "attachments", ()))
        self._local.attachments = ()
        return attachments

    def attachment(self, index: Any) -> np.ndarray:
        """The ``index``-th raw buffer of the frame this thread received last."""
        attachments: Any = getattr(self._local, "attachments", ())
        if type(index) is not int or not 0 <= index < len(attachments):
            raise ValueError("reference to a missing frame attachment")
        return attachments[index]

    def send(self, frame: tuple[bytes | memoryview, Any]) -> None:
        """Send ``(meta, attachments)`` as one frame, or ``(frame bytes, None)``: a
        frame already encoded whole."""
        meta, attachments = frame
        if attachments is None:
            try:
                self.sock.sendall(meta)
            except OSError as exc:
                self.close()
                raise EOFError(str(exc)) from exc
            return
        count = len(attachments)
        if count < len(_HEADS):
            head = _HEADS[count].pack(len(meta), count, 0, *[a.nbytes for a in attachments])
        else:
            head = HEADER.pack(len(meta), count, 0) + struct.pack(f"!{count}Q", *[a.nbytes for a in attachments])
        # Attachments are C-contiguous (the Packer makes them so): their buffer is
        # their bytes, whatever the dtype.
        views = [a.data if a.flags.c_contiguous else wire_view(a) for a in attachments if a.nbytes]
        size = len(meta)
        for v in views:
            size += v.nbytes
        try:
            if size <= _SMALL:
                # One syscall, one TCP segment: small replies do not trickle out.
                self.sock.sendall(b"".join([head, meta, *views]))
                return
            self.sock.sendall(head + meta if len(meta) <= _SMALL else head)
            if len(meta) > _SMALL:
                self.sock.sendall(meta)
            for v in views:
                self.sock.sendall(v)
        except OSError as exc:
            self.close()
            raise EOFError(str(exc)) from exc

    # --- buffered reading -------------------------------------------------------------
    def _recv_into(self, view: memoryview, flags: int = 0) -> int:
        """One ``recv_into``; a closed or broken socket closes the channel.
        (With ``MSG_DONTWAIT``, "no data yet" surfaces as ``BlockingIOError``.)"""
        try:
            n = self.sock.recv_into(view, len(view), flags)
        except BlockingIOError:
            raise
        except OSError as exc:
            self.close()
            raise EOFError(str(exc)) from exc
        if n == 0:
            self.close()
            raise EOFError("connection closed by peer")
        return n

    def _fill(self) -> None:
        if self._start == self._end:
            self._start = self._end = 0
        self._end += self._recv_into(self._view[self._end :])

    def _read_exact(self, n: int) -> bytes:
        if n > _SMALL:
            # np.empty does not touch its pages: memory is committed as data
            # arrives, not when a peer merely claims a large size.
            buf = np.empty(n, dtype=np.uint8)
            self._read_into(memoryview(buf))  # type: ignore[arg-type]
            return buf.tobytes()
        self._ensure(n)
        out = bytes(self._view[self._start : self._start + n])
        self._start += n
        return out

    def _read_into(self, view: memoryview) -> None:
        total = len(view)
        got = min(total, self._end - self._start)
        if got:
            view[:got] = self._view[self._start : self._start + got]
            self._start += got
        while got < total:
            got += self._recv_into(view[got : got + (1 << 22)])


def _attachments(buffers: tuple[Any, ...]) -> list[np.ndarray]:
    out = []
    for b in buffers:
        if type(b) is Blob:
            out.append(b.array)
        elif type(b) is bytes:
            out.append(np.frombuffer(b, dtype=np.uint8))
        else:
            raise TypeError("a message buffer must be bytes or a Blob")
    return out


def _exception_from(name: Any, args: Any) -> Exception:
    cls = getattr(builtins, name, None) if isinstance(name, str) else None
    if not (isinstance(cls, type) and issubclass(cls, Exception)):
        cls = RuntimeError
    try:
        exc: Exception = cls(*args) if isinstance(args, list) else cls(str(args))
    except Exception:
        exc = RuntimeError(*args) if isinstance(args, list) else RuntimeError(str(args))
    return exc


class FramedConnection(Connection):
    """An RPyC connection whose messages may carry raw buffers (see module doc)."""

    _channel: FrameChannel

    def _box_into(self, obj: Any, attachments: list[np.ndarray]) -> Any:
        if type(obj) is Blob:
            attachments.append(obj.array)
            return LABEL_ATTACH, len(attachments) - 1
        if type(obj) is tuple:
            if brine.dumpable(obj):
                return consts.LABEL_VALUE, obj
            return consts.LABEL_TUPLE, tuple(self._box_into(item, attachments) for item in obj)
        return self._box(obj)

    def _box(self, obj: Any) -> Any:
        if type(obj) is Blob:
            raise TypeError("a Blob must be boxed with its message")
        return Connection._box(self, obj)

    def _unbox(self, package: Any) -> Any:
        label, value = package
        if label == LABEL_ATTACH:
            return self._channel.attachment(value)
        if label == consts.LABEL_TUPLE:
            return tuple(self._unbox(item) for item in value)
        return Connection._unbox(self, package)

    def _send(self, msg: int, seq: int, args: Any, attachments: list[np.ndarray] | None = None) -> None:
        # Same queue discipline as rpyc: a netref __del__ may call in here while
        # this thread already holds the send lock.
        self._send_raw(brine.I1.pack(msg) + brine.dump((seq, args)), attachments or [])

    def _send_raw(self, meta: bytes | memoryview, attachments: list[np.ndarray] | None) -> None:
        """Queue an already encoded frame (same discipline as :meth:`_send`);
        ``attachments`` None: ``meta`` is the whole frame (:meth:`FrameChannel.send`)."""
        if not self._send_queue and self._sendlock.acquire(False):
            # Nothing queued and nobody sending: this frame goes first anyway.
            try:
                self._channel.send((meta, attachments))
            finally:
                self._sendlock.release()
            if not self._send_queue:  # (a netref __del__ may have queued one meanwhile)
                return
        else:
            # (A frame in a reusable buffer, a memoryview, is copied: it may be
            # written again before the queue gets to it.)
            self._send_queue.append((bytes(meta) if type(meta) is memoryview else meta, attachments))
        self._drain()

    def _send_now(self, wire: memoryview) -> None:
        """Send a whole frame (a filled :class:`_ReplyFrame`) from where the call
        runs, with :meth:`_send_raw`'s discipline (at once when nobody is sending,
        else queued as a copy).  A closed connection is left to the reading
        thread, which ends the session."""
        try:
            self._send_raw(wire, None)
        except EOFError:
            pass

    def _drain(self) -> None:
        """Send what waits in the send queue, unless another thread is sending."""
        while self._send_queue:
            if not self._sendlock.acquire(False):
                return
            try:
                if not self._send_queue:
                    continue
                self._channel.send(self._send_queue.pop(0))
            finally:
                self._sendlock.release()

    def _async_request(self, handler: int, args: Any = (), callback: Any = (lambda a, b: None)) -> None:
        seq = self._get_seq_id()
        self._request_callbacks[seq] = callback
        attachments: list[np.ndarray] = []
        try:
            boxed = self._box_into(args, attachments)
            self._send(consts.MSG_REQUEST, seq, (handler, boxed), attachments)
        except Exception:
            self._request_callbacks.pop(seq, None)
            raise

    def _dispatch_request(self, seq: int, raw_args: Any) -> None:
        try:
            handler, args = raw_args
            args = self._unbox(args)
            res = self._HANDLERS[handler](self, *args)
        except BaseException:
            t, v, tb = sys.exc_info()
            if t is KeyboardInterrupt and self._config["propagate_KeyboardInterrupt_locally"]:
                raise
            self._send(consts.MSG_EXCEPTION, seq, self._box_exc(t, v, tb))
        else:
            attachments: list[np.ndarray] = []
            try:
                boxed = self._box_into(res, attachments)
            except Exception:
                t, v, tb = sys.exc_info()
                self._send(consts.MSG_EXCEPTION, seq, self._box_exc(t, v, tb))
                return
            self._send(consts.MSG_REPLY, seq, boxed, attachments)


class _OpaqueRef(netref.BaseNetref):
    """A netref we only hold and pass back; its class is never fetched."""

    __slots__ = ()


class _ClientRoot:
    """What the server would see as the client's root object: nothing at all."""

    def _rpyc_getattr(self, name: str) -> Any:
        raise AttributeError("access denied")

    def on_connect(self, conn: Any) -> None:
        pass

    def on_disconnect(self, conn: Any) -> None:
        pass


class _Slot:
    """Where a fast reply lands (RPyC calls it like an ``AsyncResult``)."""

    __slots__ = ("done", "is_exc", "value")

    def __init__(self) -> None:
        self.done = False
        self.is_exc = False
        self.value: Any = None

    def __call__(self, is_exc: bool, value: Any) -> None:
        self.is_exc = is_exc
        self.value = value
        self.done = True


class ClientConnection(FramedConnection):
    def __init__(self, channel: FrameChannel, config: dict[str, Any]) -> None:
        self._replies: dict[bytes, Any] = {}  # fast reply bodies parsed (see _parse_reply)
        super().__init__(_ClientRoot(), channel, config)

    def fast_request(
        self, op: str, name: str, target: Any, tree: Any, buffers: tuple[Any, ...], refs: tuple[Any, ...]
    ) -> tuple[Any, tuple[np.ndarray, ...], tuple[Any, ...]]:
        """One hot-path call; returns the reply's tree, buffers and object refs."""
        return self.fast_request_body(self.request_body(op, name, target, tree, refs), _attachments(buffers))

    @staticmethod
    def request_body(op: str, name: str, target: Any, tree: Any, refs: tuple[Any, ...]) -> bytes:
        """The encoded body of a fast request (what follows its sequence number)."""
        idpacks = [r.____id_pack__ for r in refs]
        target_index = None
        if target is not None:
            idpacks.append(target.____id_pack__)
            target_index = len(idpacks) - 1
        return pack_json([op, name, target_index, idpacks, tree])

    @staticmethod
    def request_head(body: bytes, attachments: list[np.ndarray]) -> bytes | None:
        """The head (header, attachment lengths, message type) of every frame that
        carries ``body`` and arrays of these sizes, when such frames are small; else None."""
        return fast_head(MSG_FAST_REQUEST, body, [a.nbytes for a in attachments])

    def fast_request_body(
        self, body: bytes, attachments: list[np.ndarray], head: bytes | None = None
    ) -> tuple[Any, tuple[np.ndarray, ...], tuple[Any, ...]]:
        """A fast request whose body is already encoded (:meth:`request_body`), with
        its buffers as C-contiguous arrays, and, where known, the head of its frame
        (:meth:`request_head` of the same body and array sizes): the frame is then
        sent as one piece."""
        seq = self._get_seq_id()
        slot = _Slot()
        self._request_callbacks[seq] = slot
        try:
            if head is not None:
                self._send_raw(b"".join([head, SEQ.pack(seq), body, *attachments]), None)  # type: ignore[list-item]
            else:
                self._send_raw(_TYPE_SEQ.pack(MSG_FAST_REQUEST, seq) + body, attachments)
        except Exception:
            self._request_callbacks.pop(seq, None)
            raise
        return self._await(seq, slot)

    def _await(self, seq: int, slot: _Slot) -> Any:
        """Serve the connection until ``slot`` has its reply (RPyC's ``serve`` loop,
        without its per-iteration Timeout objects and closures)."""
        channel = self._channel
        started = time.monotonic()
        deadline = started + (self._config["sync_request_timeout"] or 1e9)
        while not slot.done:
            left = deadline - time.monotonic()
            if left <= 0:
                self._request_callbacks.pop(seq, None)
                raise AsyncResultTimeout("result expired")
            if self._recvlock.acquire(False):
                fast = data = None
                try:
                    if not slot.done and channel.poll(left):
                        fast = channel.take_fast(_REPLIES)
                        if fast is None:
                            data = channel.recv()
                except EOFError:
                    self._recvlock.release()
                    self.close()
                    raise
                except BaseException:
                    self._recvlock.release()
                    raise
                if fast is not None:
                    self._dispatch_fast(*fast)  # releases the lock
                elif data is not None:
                    self._dispatch(data)  # releases the lock, like RPyC's dispatch
                else:
                    self._recvlock.release()
                if self._request_callbacks:  # other threads wait for replies: one may read now
                    with self._recv_event:
                        self._recv_event.notify_all()
            else:
                with self._recv_event:
                    if not slot.done:
                        self._recv_event.wait(min(left, 0.01))
        channel = self._channel
        channel.brisk = time.monotonic() - started <= channel.spin
        if slot.is_exc:
            raise slot.value
        return slot.value

    def _dispatch(self, data: bytes) -> None:
        msg = data[0]
        if msg not in _REPLIES:
            Connection._dispatch(self, data)
            return
        if len(data) < _TYPE_SEQ.size:
            self._recvlock.release()
            raise ProtocolError("short fast reply")
        (seq,) = SEQ.unpack_from(data, 1)
        self._dispatch_fast(msg, seq, data[_TYPE_SEQ.size :], self._channel.take_attachments())

    def _dispatch_fast(self, msg: int, seq: int, body: bytes, buffers: tuple[np.ndarray, ...]) -> None:
        """Hand a fast reply (or error) to the call waiting for it; releases the read lock."""
        try:
            if msg == MSG_FAST_REPLY:
                tree, idpacks = self._parse_reply(body)
                refs = tuple(self._unbox((consts.LABEL_REMOTE_REF, tuple(p))) for p in idpacks) if idpacks else ()
                obj: Any = (tree, buffers, refs)
                is_exc = False
            else:
                error = unpack_json(body)
                obj, is_exc = _exception_from(error[0], error[1]), True
        finally:
            self._recvlock.release()
        self._seq_request_callback(msg, seq, is_exc, obj)

    def _parse_reply(self, key: bytes) -> Any:
        """The parsed body of a fast reply (``key``: the reply after its sequence
        number).  A client calling in a loop gets the same reply header each time
        (the arrays' shapes and dtypes, no objects): such bodies are parsed once,
        and the same (never changed) tree comes back, so the caller can keep what
        it derived from it (see ``Connection``)."""
        parsed = self._replies.get(key)
        if parsed is None:
            parsed = unpack_json(key)
            if not parsed[1] and len(key) <= _MAX_PLAN_KEY:  # no object refs in it
                if len(self._replies) >= _MAX_PLANS:
                    self._replies.clear()
                self._replies[key] = parsed
        return parsed

    def _netref_factory(self, id_pack: Any) -> Any:
        return _OpaqueRef(self, id_pack)


def _nothing(ok: bool = True) -> None:
    pass


class ServerConnection(FramedConnection):
    """The worker's end of a session; :meth:`serve_session` runs it to the end.

    After each answer it calls the service's ``settle(ok)``, if it has one: the
    place for bookkeeping that need not delay the answer (``ok`` is False when an
    error went back instead).

    **Plans.**  A client in a loop sends the same request bytes again and again,
    but for the sequence number and the arrays' contents (``index.search(q, 10)``
    with a new ``q`` of the same shape).  After a fast request has been answered,
    the service's ``plan(op, name, target, tree, buffers, refs)``, if it has one,
    may return a *plan* for it: an object with ``sizes`` (the byte size of each
    buffer) and a ``__call__(target, buffers)`` that answers the same request
    (``buffers``: its raw buffers, uint8 arrays or aligned memoryview copies),
    returning a hot operation's reply or, where it can, ``(encoded body,
    attachments)``.  A plan may also have ``fills()``, giving a reply body and the
    dtypes and shapes of arrays it can write its result into: answered on the
    leading thread, it is then called as ``__call__(target, buffers, frame)``
    with a reply frame kept for it (:class:`_ReplyFrame`, its sequence number
    written), and when faiss has written the frame's ``outputs`` it calls
    ``frame.send()`` at once and returns :data:`FILLED`.  (Sent from the plan,
    the reply leaves before the call's own bookkeeping and without a return
    through the transport: right after a 100k scan, with the caches cold, the
    steps between the scan and the ``sendall`` cost 11-16 µs more when the
    transport sent the frame.)  The session keeps the plans by
    the request's bytes after the sequence number (at most 64, requests up to
    2 KiB), and a request with the same bytes and buffer sizes is answered by its
    plan: no JSON to parse, no tree to decode or encode.  The target is still
    looked up in the object table per request, so a released object is an error as
    before, and id-packs are never reused.  (At 100k vectors, where a search
    leaves the caches cold, parsing, decoding and encoding took 90 µs per call.)
    """

    _settle: Any = staticmethod(_nothing)
    _plans: dict[bytes, tuple[Any, tuple[Any, ...] | None] | None]  # request bytes: (plan, target's id-pack)
    _reply_heads: dict[bytes, tuple[bytes, int]]  # a plan's reply body: its frames' head and length
    _frames: dict[Any, tuple[bytes, _ReplyFrame | None]]  # a plan: its reply body, the frame (see _frame_for)

    def serve_session(self, threads: int, spin: float = 0.0) -> None:
        """Serve requests with ``threads`` threads, leader/follower style.

        One thread at a time, the leader, holds ``read_lock`` and reads.  A *quick*
        request (no attachment over 64 KiB: a single query, an attribute, a small
        call) is executed by the leader while it keeps the lock, so the common
        case costs no thread switch and wakes nobody.  Before executing a *heavy*
        request (a batch) the leader releases the lock, which wakes one follower to
        read on; so calls from several client threads still run in parallel while
        a batch runs.  A request is never handed between threads.  (RPyC's own
        ``serve_threaded`` wakes every thread per message and does not read while a
        request executes; waking a follower per request cost 40-100 µs on 2 cores.)

        After answering a quick request the leader busy-waits up to ``spin`` seconds
        for the next one before it sleeps in ``recv``: a client calling in a loop
        then costs no scheduler wake-up per call, on either side (the sender's
        ``send`` pays for waking a sleeping reader).  The spin is adaptive: a
        thread spins only while its client's last request came within ``spin`` of
        the previous answer, so a session that calls now and then costs no CPU, and
        nobody spins while a batch runs (the leader spins only right after a reply).
        """
        read_lock = threading.Lock()
        self._settle = getattr(self._local_root, "settle", None) or _nothing
        self._plans = {}
        self._reply_heads = {}
        self._frames = {}
        if self._channel._tls:
            spin = 0.0  # no MSG_DONTWAIT reads on an SSL socket
        channel = self._channel

        def read() -> tuple[Any, ...] | None:
            """The next request as ``(quick, kind, payload...)``; None when closed."""
            try:
                data = self._channel.recv()
                msg = data[0]
                if msg == MSG_FAST_REQUEST:
                    attachments = self._channel.take_attachments()
                    quick = all(a.nbytes < _SMALL for a in attachments)
                    return (quick, "fast", self._parse_fast(data, attachments))
                if msg != consts.MSG_REQUEST:
                    raise ProtocolError("clients may only send requests")
                seq, raw = brine.load(data[1:])
            except ProtocolError:
                self._channel.close()  # first: RPyC's close() would wait for the peer
                self.close()
                raise
            except EOFError:
                self._channel.close()
                self.close()
                return None
            except Exception as exc:
                self._channel.close()  # first: RPyC's close() would wait for the peer
                self.close()
                raise ProtocolError(f"malformed message: {type(exc).__name__}") from None
            try:
                handler, args = raw
                unboxed = self._unbox(args)
                quick = all(a.nbytes < _SMALL for a in self._channel.take_attachments())
                return (quick, "rpyc", (seq, handler, unboxed))
            except Exception:
                self._channel.take_attachments()
                self._reply_exception(seq)
                return (True, "done", None)

        def execute(kind: str, payload: Any, quick: bool = False) -> None:
            if kind == "fast" and payload is not None:
                self._execute_fast(*payload, quick=quick)
            elif kind == "rpyc":
                self._execute(*payload)

        def loop() -> None:
            brisk = True  # this thread's client sent its last request soon after an answer
            repeat = None  # how a repeat of the last planned request looks (see _repeat_of)
            while True:
                with read_lock:
                    answered = False  # this thread has just answered (and still leads)
                    while True:
                        if self.closed:
                            return
                        waited = 0.0
                        if answered and spin > 0:
                            if brisk:
                                try:
                                    brisk = channel.spin_recv(spin, give_way=True)
                                except EOFError:  # closed: read() below says so
                                    brisk = True
                            if not brisk:  # about to sleep: time the client's pause
                                waited = time.perf_counter()
                        if repeat is not None:  # the client calls in a loop: the common case
                            again = self._repeated(repeat)
                            if again is not None:
                                self._execute_fast(*again, quick=True)
                                again = None
                                answered = True
                                continue
                        fast = channel.take_fast(_REQUESTS, aligned=True)
                        if fast is not None:  # a small fast request, all there
                            payload = self._resolve(fast[1], fast[2], fast[3])
                            if payload is not None:
                                repeat = self._repeat_of(payload) or repeat
                                self._execute_fast(*payload, quick=True)
                                payload = None
                            fast = None
                            answered = True
                            continue
                        request = read()
                        if waited:
                            brisk = time.perf_counter() - waited <= spin
                        if request is None:
                            return
                        quick, kind, payload = request
                        request = None
                        if not quick:
                            break
                        execute(kind, payload, True)
                        payload = None  # its buffers may be reused by the next read
                        answered = True
                execute(kind, payload)
                payload = None

        errors: list[BaseException] = []

        def run() -> None:
            try:
                loop()
            except BaseException as exc:
                errors.append(exc)
                self.close()

        workers = [threading.Thread(target=run, daemon=True) for _ in range(max(1, threads) - 1)]
        for t in workers:
            t.start()
        run()
        for t in workers:
            t.join()
        self.close()
        if errors:
            raise errors[0]

    def _parse_fast(self, data: bytes, buffers: tuple[np.ndarray, ...]) -> tuple[Any, ...] | None:
        """Resolve a fast request read by :meth:`FrameChannel.recv`."""
        if len(data) < 1 + SEQ.size:
            raise ProtocolError("short fast request")
        (seq,) = SEQ.unpack_from(data, 1)
        return self._resolve(seq, data[_TYPE_SEQ.size :], buffers)

    def _resolve(self, seq: int, key: bytes, buffers: tuple[Any, ...]) -> tuple[Any, ...] | None:
        """Resolve a fast request (``key``: its body after the sequence number) while
        holding the read lock (the object table is consistent there): the arguments
        of :meth:`_execute_fast`, or None when an error has been answered.

        ``buffers``: the request's uint8 arrays, or its aligned memoryview copies
        (taken whole, see :meth:`FrameChannel.take_fast`).  A plan gets them as they
        are (it builds its arrays on them); anything else gets uint8 arrays, as a
        frame read by :meth:`FrameChannel.recv` has."""
        planned = self._plans.get(key)
        if planned is not None and planned[0].sizes == tuple(map(len, buffers)):
            try:
                target = None if planned[1] is None else self._local_objects[planned[1]]
            except KeyError:
                pass  # released since: the full path below answers the error
            else:
                return seq, key, planned[0], None, None, target, None, buffers, ()
        try:
            op, name, target_index, idpacks, tree = unpack_json(key)
            refs = tuple(self._local_objects[tuple(p)] for p in idpacks)
            target = refs[target_index] if target_index is not None else None
        except Exception as exc:
            self._reply_fast_error(seq, TypeError(f"malformed request ({type(exc).__name__})"))
            return None
        arrays = tuple([b if type(b) is np.ndarray else np.frombuffer(b, np.uint8) for b in buffers])
        return seq, key, None, op, name, target, tree, arrays, refs

    def _repeat_of(self, payload: tuple[Any, ...]) -> tuple[Any, ...] | None:
        """How a repeat of this resolved fast request would look, when it went to a
        plan: ``(frame prefix, body, attachment sizes, plan, target's id-pack)``
        (:meth:`_repeated`); else None."""
        key, plan = payload[1], payload[2]
        if plan is None:
            return None
        prefix = fast_head(MSG_FAST_REQUEST, key, list(plan.sizes))  # (the buffers' sizes: _resolve checked)
        planned = self._plans.get(key)
        if prefix is None or planned is None or planned[0] is not plan:
            return None
        return prefix, key, plan.sizes, plan, planned[1]

    def _repeated(self, repeat: tuple[Any, ...]) -> tuple[Any, ...] | None:
        """The next request, consumed and resolved (the arguments of
        :meth:`_execute_fast`, as :meth:`_resolve` gives them), if it repeats the
        planned one ``repeat`` describes (:meth:`_repeat_of`): the same bytes but for
        the sequence number and the attachments' contents, so the same plan answers
        it, without parsing the frame or looking the plan up.  None, with nothing
        consumed, for anything else, and once the plan's target has been released
        (the full path then answers the error)."""
        prefix, key, sizes, plan, pack = repeat
        if pack is None:
            target = None
        else:
            try:
                target = self._local_objects[pack]
            except KeyError:
                return None
        taken = self._channel.take_repeat(prefix, key, sizes)
        if taken is None:
            return None
        return taken[0], key, plan, None, None, target, None, taken[1], ()

    def _execute_fast(
        self,
        seq: int,
        key: bytes,
        plan: Any,
        op: Any,
        name: Any,
        target: Any,
        tree: Any,
        buffers: tuple[Any, ...],
        refs: tuple[Any, ...],
        *,
        quick: bool = False,
    ) -> None:
        """Answer a fast request.  ``quick``: run on the session's leading thread,
        one call at a time, so a plan may write its result into this session's
        reply frame for it, and send it (see :class:`_ReplyFrame`)."""
        meta: bytes | memoryview = b""
        attachments: Any = None
        try:
            frame = self._frame_for(plan) if quick and plan is not None else None
            if frame is not None:
                SEQ.pack_into(frame.wire, frame.seq_at, seq)
                reply = plan(target, buffers, frame)
            elif plan is not None:
                reply = plan(target, buffers)
            else:
                reply = self._local_root.fast_operation(op)(target, name, tree, buffers, refs)
            if reply is FILLED:
                pass  # written into the frame, and sent, by the plan
            elif len(reply) == 2:  # a plan's reply, body already encoded
                body, attachments = reply
                known = self._reply_heads.get(body)
                wire = None
                if known is not None:
                    try:
                        # The whole frame in one piece (a TypeError: an array is not
                        # C-contiguous; another length: not the arrays the head was
                        # made for; either way, the general way below).
                        wire = b"".join([known[0], SEQ.pack(seq), body, *attachments])
                    except TypeError:
                        pass
                if wire is not None and known is not None and len(wire) == known[1]:
                    meta, attachments = wire, None
                else:
                    meta = _TYPE_SEQ.pack(MSG_FAST_REPLY, seq) + body
                    attachments = list(attachments)
                    self._learn_head(body, attachments)
            else:
                out_tree, out_buffers, out_refs = reply
                idpacks = [self._box(h)[1] for h in out_refs]
                meta = _TYPE_SEQ.pack(MSG_FAST_REPLY, seq) + pack_json([out_tree, idpacks])
                attachments = _attachments(out_buffers)
        except Exception as exc:
            self._reply_fast_error(seq, exc)
            self._settle(False)
            return
        if reply is not FILLED:
            try:
                self._send_raw(meta, attachments)
            except EOFError:
                pass
        if plan is None and key not in self._plans and len(key) <= _MAX_PLAN_KEY:
            self._learn(key, op, name, target, tree, buffers, refs)
        self._settle()

    def _frame_for(self, plan: Any) -> _ReplyFrame | None:
        """This session's reply frame for ``plan``, made (or made again) for the reply
        the plan knows now; None when the plan has none to fill (``plan.fills()``
        gives the reply body and the result arrays' dtypes and shapes, or None)."""
        fills = getattr(plan, "fills", None)
        known = fills() if fills is not None else None
        if known is None:
            return None
        made = self._frames.get(plan)
        if made is None or made[0] is not known[0]:
            if len(self._frames) >= _MAX_PLANS:
                self._frames.clear()
            frame = reply_frame(*known)
            if frame is not None:
                frame.send = functools.partial(self._send_now, frame.wire)
            made = self._frames[plan] = (known[0], frame)
        return made[1]

    def _learn_head(self, body: bytes, attachments: list[np.ndarray]) -> None:
        """Keep the frame head (header, attachment lengths, message type) of a plan's
        reply body, when its frames are small: the body says the arrays' dtypes and
        shapes, so the head is the same for every reply with this body."""
        sizes = [a.nbytes for a in attachments]
        head = fast_head(MSG_FAST_REPLY, body, sizes)
        if head is None:
            return
        if len(self._reply_heads) >= _MAX_PLANS:
            self._reply_heads.clear()
        self._reply_heads[body] = (head, len(head) + SEQ.size + len(body) + sum(sizes))

    def _learn(self, key: bytes, *request: Any) -> None:
        """Ask the service for a plan of a request that worked (after its answer went
        out): the next request with the same bytes skips parsing and decoding."""
        make = getattr(self._local_root, "plan", None)
        if make is None:
            return
        if len(self._plans) >= _MAX_PLANS:
            self._plans.clear()  # a client of ever new requests: start over
        target = request[2]
        try:
            plan = make(*request)
            self._plans[key] = None if plan is None else (plan, None if target is None else self._id_pack(target))
        except Exception:
            self._plans[key] = None

    def _reply_fast_error(self, seq: int, exc: Exception) -> None:
        args = [a if type(a) in (str, int, float, bool, type(None)) else str(a) for a in exc.args]
        body = json.dumps([type(exc).__name__, args])
        try:
            self._send_raw(bytes((MSG_FAST_ERROR,)) + SEQ.pack(seq) + body.encode(), [])
        except EOFError:
            pass

    def _reply_exception(self, seq: int) -> None:
        t, v, tb = sys.exc_info()
        try:
            self._send(consts.MSG_EXCEPTION, seq, self._box_exc(t, v, tb))
        except EOFError:
            pass

    def _execute(self, seq: int, handler: Any, args: Any) -> None:
        try:
            res = self._HANDLERS[handler](self, *args)
            attachments: list[np.ndarray] = []
            boxed = self._box_into(res, attachments)
        except Exception:
            self._reply_exception(seq)
            self._settle(False)
            return
        try:
            self._send(consts.MSG_REPLY, seq, boxed, attachments)
        except EOFError:
            pass
        self._settle()

    # --- references: named by number, never by address -------------------------------
    @staticmethod
    def _id_pack(obj: Any) -> tuple[str, int, int]:
        """The id-pack a client names ``obj`` by.  RPyC's own (``get_id_pack``) holds
        ``id(type(obj))`` and ``id(obj)``, memory addresses of this process; the
        worker's objects carry a ``wire_number`` instead (:func:`next_wire_number`),
        and nothing else is sent by reference."""
        number = getattr(obj, "wire_number", None)
        if type(number) is not int:
            raise TypeError(f"{type(obj).__name__} objects are not sent by reference")
        return (type(obj).__name__, 0, number)

    def _box(self, obj: Any) -> Any:
        if type(obj) is Blob or brine.dumpable(obj) or type(obj) is tuple or isinstance(obj, netref.BaseNetref):
            return FramedConnection._box(self, obj)
        id_pack = self._id_pack(obj)
        self._local_objects.add(id_pack, obj)
        return consts.LABEL_REMOTE_REF, id_pack

    def _handle_del(self, obj: Any, count: int = 1) -> None:
        self._local_objects.decref(self._id_pack(obj), count)

    def _unbox(self, package: Any) -> Any:
        if package[0] == consts.LABEL_REMOTE_REF:
            raise TypeError(
                "objects that live in the client cannot be passed to the server; "
                "pass NumPy arrays, plain values or remote faiss objects"
            )
        return FramedConnection._unbox(self, package)


_STRICT = dict(
    allow_safe_attrs=True,
    safe_attrs={"__eq__", "__ne__", "__hash__", "__repr__", "__str__"},
    allow_exposed_attrs=True,
    allow_public_attrs=False,
    allow_all_attrs=False,
    allow_getattr=True,
    allow_setattr=False,
    allow_delattr=False,
    allow_pickle=False,
    import_custom_exceptions=False,
    instantiate_custom_exceptions=False,
    instantiate_oldstyle_exceptions=False,
    include_local_traceback=False,
    include_local_version=False,
    bind_threads=False,
    log_exceptions=False,
)


def client_config(timeout: float) -> dict[str, Any]:
    return dict(_STRICT, sync_request_timeout=timeout)


def server_config(connid: str) -> dict[str, Any]:
    return dict(_STRICT, connid=connid, sync_request_timeout=30)

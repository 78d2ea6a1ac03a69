"""The frame channel: limits, and reuse of large receive buffers without aliasing."""

from __future__ import annotations

import socket
import threading
from typing import Any

import numpy as np
import pytest

from faiss_proxy._transport import HEADER, FrameChannel, ProtocolError


def _pair(max_frame: int = 1 << 30) -> tuple[FrameChannel, FrameChannel]:
    a, b = socket.socketpair()
    return FrameChannel(a, max_frame), FrameChannel(b, max_frame)


def _send(tx: FrameChannel, frame: Any) -> threading.Thread:
    """Send from another thread: a large frame does not fit the socket buffer."""
    t = threading.Thread(target=tx.send, args=(frame,))
    t.start()
    return t


def test_large_buffers_are_reused_only_when_free() -> None:
    tx, rx = _pair()
    big = np.arange(300_000, dtype=np.uint8)
    t = _send(tx, (b"m1", [big]))
    assert rx.recv() == b"m1"
    t.join()
    first = rx.attachment(0)
    np.testing.assert_array_equal(first, big)
    held = first  # the caller keeps the array: it must not be overwritten
    del first
    rx._local.attachments = []
    t = _send(tx, (b"m2", [big[::-1].copy()]))
    assert rx.recv() == b"m2"
    t.join()
    second = rx.attachment(0)
    np.testing.assert_array_equal(held, big)  # untouched
    np.testing.assert_array_equal(second, big[::-1])
    assert not np.shares_memory(held, second)
    del held, second
    rx._local.attachments = []
    t = _send(tx, (b"m3", [big]))
    rx.recv()
    t.join()
    third = rx.attachment(0)
    np.testing.assert_array_equal(third, big)
    assert np.shares_memory(third, rx._spare)  # reused once nothing referred to it


def test_a_large_buffer_taken_by_one_thread_is_reused_by_the_next_reader() -> None:
    """The worker's leader/follower threads: the thread that read a large frame
    executes it while another reads the next one.  Once the first thread has taken
    and dropped its buffers, the next large frame lands in the same memory, not in
    fresh pages (a 51 MB ``add`` into fresh pages ran at a quarter of the speed)."""
    tx, rx = _pair()
    big = np.arange(400_000, dtype=np.uint8)
    taken: list[tuple[np.ndarray, ...]] = []
    released: list[bool] = []

    def leader() -> None:
        assert rx.recv() == b"add-1"
        taken.append(rx.take_attachments())
        try:
            rx.attachment(0)
        except ValueError:  # taken: the channel keeps no reference
            released.append(True)

    t = _send(tx, (b"add-1", [big]))
    reader = threading.Thread(target=leader)
    reader.start()
    reader.join()
    t.join()
    (first,) = taken.pop()
    assert released == [True]
    np.testing.assert_array_equal(first, big)
    del first  # the call that used it is done
    t = _send(tx, (b"add-2", [big[::-1].copy()]))
    assert rx.recv() == b"add-2"  # read by another thread
    t.join()
    (second,) = rx.take_attachments()
    np.testing.assert_array_equal(second, big[::-1])
    assert np.shares_memory(second, rx._spare)


def test_small_frames_and_several_attachments() -> None:
    tx, rx = _pair()
    parts = [np.full(n, n % 251, dtype=np.uint8) for n in (0, 1, 100, 70_000)]
    for i in range(3):
        t = _send(tx, (b"x" * i, parts))
        assert rx.recv() == b"x" * i
        t.join()
        for j, p in enumerate(parts):
            np.testing.assert_array_equal(rx.attachment(j), p)
    with pytest.raises(ValueError):
        rx.attachment(99)


def test_frame_over_the_limit_closes_without_allocating() -> None:
    tx, rx = _pair(max_frame=1000)
    tx.sock.sendall(HEADER.pack(2000, 0, 0))
    with pytest.raises(ProtocolError, match=r"malformed frame header|exceeds"):
        rx.recv()
    assert rx.closed


def test_spin_recv_picks_up_data_times_out_and_gives_way(monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    from faiss_proxy import _transport

    tx, rx = _pair()
    with monkeypatch.context() as m:  # an idle machine: nobody takes the CPU during a yield
        m.setattr(_transport, "_PREEMPTED", 10.0)
        started = time.perf_counter()
        assert rx.spin_recv(0.005, give_way=True) is False  # nothing came: gives up after the spin
        assert time.perf_counter() - started >= 0.005
    tx.sock.sendall(b"x")
    assert rx.spin_recv(1.0) is True  # data: at once
    assert rx.spin_recv(1.0) is True  # still buffered, not read again
    # Another thread takes the CPU during a yield: stop spinning long before the deadline.
    monkeypatch.setattr(_transport, "_yield", lambda: time.sleep(0.001))
    tx2, rx2 = _pair()
    started = time.perf_counter()
    assert rx2.spin_recv(5.0, give_way=True) is False
    assert time.perf_counter() - started < 1.0


def test_spin_recv_without_yielding_rides_out_short_gaps(monkeypatch: pytest.MonkeyPatch) -> None:
    """A spin that does not yield (the client's) keeps spinning through gaps of 100 µs
    (interrupts, the hypervisor: a VM has them all the time) and stops at the first
    gap of a millisecond (another thread had this CPU); a yielding spin (the
    worker's) stops at a 100 µs gap, since its yield let another thread run."""
    import types

    from faiss_proxy import _transport

    class Clock:
        """Every reading is ``step`` seconds after the previous one."""

        def __init__(self, step: float) -> None:
            self.now, self.step = 0.0, step

        def perf_counter(self) -> float:
            self.now += self.step
            return self.now

    _tx, rx = _pair()
    for step, give_way, spins_to_the_deadline in ((100e-6, False, True), (1e-3, False, False), (100e-6, True, False)):
        clock = Clock(step)
        monkeypatch.setattr(_transport, "time", types.SimpleNamespace(perf_counter=clock.perf_counter))
        monkeypatch.setattr(_transport, "_yield", lambda: None)
        assert rx.spin_recv(0.05, give_way=give_way) is False  # nothing comes
        assert (clock.now >= 0.05) is spins_to_the_deadline, (step, give_way, clock.now)


def _session(service: Any, spin: float = 0.0) -> tuple[Any, threading.Thread]:
    """A client connection to ``service`` served by a ServerConnection on a thread
    (with ``spin``, the worker's busy-wait between calls, the serving thread takes
    each request whole from its read buffer, as a server's worker does)."""
    from faiss_proxy._transport import ClientConnection, ServerConnection, client_config, server_config

    a, b = socket.socketpair()
    server = ServerConnection(service, FrameChannel(b), server_config("t"))
    serving = threading.Thread(target=server.serve_session, args=(1, spin), daemon=True)
    serving.start()
    return ClientConnection(FrameChannel(a), client_config(10)), serving


def _flat_data(seed: int, nb: int, nq: int, d: int) -> tuple[np.ndarray, np.ndarray, Any]:
    """Seeded vectors and queries, and a local ``IndexFlatL2`` holding the vectors."""
    import faiss

    rng = np.random.default_rng(seed)
    xb = rng.random((nb, d), dtype=np.float32)
    xq = rng.random((nq, d), dtype=np.float32)
    local = faiss.IndexFlatL2(d)
    local.add(xb)
    return xb, xq, local


def test_the_service_counts_a_call_after_its_answer_went_out() -> None:
    """``settle(ok)`` runs after the answer is sent: ok for an answer, not ok when the
    call worked but its result could not be sent (the client gets the error)."""

    class Service:
        def __init__(self) -> None:
            self.settled: list[bool] = []
            self.pending = False

        def fast_operation(self, op: str) -> Any:
            def handler(target: Any, name: Any, tree: Any, buffers: Any, refs: Any) -> Any:
                self.pending = True  # the call worked
                return ([tree, []] if op == "echo" else [{1, 2}, []]), (), ()  # a set is no JSON

            return handler

        def on_connect(self, conn: Any) -> None:
            pass

        def on_disconnect(self, conn: Any) -> None:
            pass

        def settle(self, ok: bool = True) -> None:
            if self.pending:
                self.settled.append(ok)
                self.pending = False

    service = Service()
    client, serving = _session(service)
    try:
        tree, buffers, refs = client.fast_request("echo", "x", None, [1, "two"], (), ())
        assert tree == [[1, "two"], []]
        with pytest.raises(TypeError):
            client.fast_request("broken", "x", None, None, (), ())
        client.fast_request("echo", "x", None, 3, (), ())  # the session goes on
    finally:
        client._channel.close()
        serving.join(5)
    # the last settle may run after the client already has its answer: the session's end
    # (it settles before it reads the next frame) is when all three are counted
    assert not serving.is_alive()
    assert service.settled == [True, False, True]


@pytest.mark.parametrize("spin", [0.0, 0.05])
def test_a_repeated_request_is_answered_by_the_services_plan(spin: float) -> None:
    """After a fast request worked, the service may plan it; the same request bytes
    (but for the sequence number) with the same buffer sizes then go to the plan,
    anything else to the full path.  A plan may answer with an encoded body."""
    from faiss_proxy._wire import Blob, pack_json

    class Plan:
        def __init__(self, sizes: tuple[int, ...]) -> None:
            self.sizes = sizes
            self.calls = 0

        def __call__(self, target: Any, buffers: Any) -> Any:
            self.calls += 1
            arrays = [np.frombuffer(x, np.uint8).copy() for x in buffers]
            if self.calls == 1:  # a reply to encode, as a handler gives
                return ["planned", []], tuple(Blob(x) for x in arrays), ()
            return pack_json([["planned-encoded", []], []]), [arrays[0] * 2]

    class Service:
        def __init__(self) -> None:
            self.full: list[Any] = []
            self.plans: list[Plan] = []

        def fast_operation(self, op: str) -> Any:
            def handler(target: Any, name: Any, tree: Any, buffers: Any, refs: Any) -> Any:
                self.full.append(tree)
                if tree == "fail":
                    raise ValueError("no")
                return [tree, []], tuple(Blob(x) for x in buffers), ()

            return handler

        def plan(self, op: Any, name: Any, target: Any, tree: Any, buffers: Any, refs: Any) -> Any:
            if tree == "unplanned":
                return None
            self.plans.append(Plan(tuple(len(bytes(b)) for b in buffers)))
            return self.plans[-1]

        def on_connect(self, conn: Any) -> None:
            pass

        def on_disconnect(self, conn: Any) -> None:
            pass

    service = Service()
    client, serving = _session(service, spin)
    four = np.arange(4, dtype=np.uint8)
    try:

        def call(tree: Any, data: np.ndarray = four) -> Any:
            out, buffers, _ = client.fast_request("call", "m", None, tree, (Blob(data),), ())
            return out, [bytes(x) for x in buffers]

        assert call("t") == (["t", []], [bytes(four)])  # full path, then planned
        assert call("t", four + 1) == (["planned", []], [bytes(four + 1)])
        assert call("t", four + 2) == (["planned-encoded", []], [bytes((four + 2) * 2)])
        assert call("t", np.arange(5, dtype=np.uint8))[0] == ["t", []]  # another size: full path
        assert call("unplanned") == call("unplanned") == (["unplanned", []], [bytes(four)])
        with pytest.raises(ValueError):
            call("fail")
        with pytest.raises(ValueError):
            call("fail")  # a failed request is never planned
        assert service.full == ["t", "t", "unplanned", "unplanned", "fail", "fail"]
        assert [p.calls for p in service.plans] == [2]  # one plan per request: the 4-byte one
    finally:
        client._channel.close()
        serving.join(5)


def test_a_calls_request_body_is_cached_by_what_makes_it() -> None:
    """The client reuses a method call's encoded request when the method, the object
    and each argument's dtype and shape (arrays) or type and value (plain values)
    are the same; anything else is encoded again."""
    from faiss_proxy._client import _call_key

    class Ref:
        def __init__(self, number: int) -> None:
            self.____id_pack__ = ("Handle", 0, number)

    a, b = Ref(1), Ref(2)
    q = np.zeros((1, 8), dtype="float32")
    key = _call_key("search", a, (q, 10))
    assert key == _call_key("search", a, (np.ones((1, 8), dtype="float32"), 10))
    different = [
        _call_key("search", b, (q, 10)),
        _call_key("assign", a, (q, 10)),
        _call_key("search", a, (q.astype("float64"), 10)),
        _call_key("search", a, (np.zeros((2, 8), dtype="float32"), 10)),
        _call_key("search", a, (q, 11)),
        _call_key("search", a, (q, 10.0)),
        _call_key("search", a, (q, True)),
        _call_key("search", a, (q,)),
    ]
    assert key not in different and len(set(different)) == len(different)
    assert _call_key("search", a, (True,)) != _call_key("search", a, (1,))
    # not cached: a non-contiguous array, an ndarray subclass, a NumPy scalar, any object
    for arg in (np.zeros((8, 2), dtype="float32")[:, :1], np.zeros(3).view(np.matrix), np.float32(1), [1], object()):
        assert _call_key("search", a, (arg,)) is None


@pytest.mark.parametrize("spin", [0.0, 0.05])
@pytest.mark.parametrize("k", [4, 5])
def test_the_service_plans_a_repeated_search_and_answers_it_as_faiss_does(
    k: int, spin: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real service plans a search repeated with new queries of the same shape
    (its request decoded once, its reply encoded once), and every planned answer is
    local faiss's: with k=4 faiss writes D and I straight into the session's reply
    frame; with k=5, I would not be aligned there, so the reply is joined as usual.
    A planned call whose result changes shape (``range_search``) is answered the
    general way, again as faiss does.  Planned calls are counted."""
    import time

    import faiss

    from faiss_proxy import _transport
    from faiss_proxy import _wire as w

    frames: list[Any] = []
    real = _transport.reply_frame

    def recording(body: bytes, specs: Any) -> Any:
        frames.append(real(body, specs))
        return frames[-1]

    monkeypatch.setattr(_transport, "reply_frame", recording)
    from faiss_proxy_server.metrics import OperationStats
    from faiss_proxy_server.reflection import Reflection
    from faiss_proxy_server.service import CallPlan, FaissService, ThreadPolicy

    made: list[Any] = []

    class Spy(FaissService):
        def plan(self, *request: Any) -> Any:
            plan = super().plan(*request)
            made.append(plan)
            return plan

    stats = OperationStats()
    service = Spy(Reflection(faiss), ThreadPolicy(faiss.omp_set_num_threads, 1, 20), "test", op_stats=stats)
    client, serving = _session(service, spin)
    xb, xq, local = _flat_data(7, 300, 12, 16)

    def call(op: str, name: str, target: Any, *args: Any) -> tuple[Any, tuple[Any, ...], tuple[Any, ...]]:
        out = w.Packer()
        tree = [[out.array(a) if isinstance(a, np.ndarray) else a for a in args], []]
        return client.fast_request(op, name, target, *out.message(tree))

    try:
        (node, _), _, refs = call("new", "IndexFlatL2", None, 16)
        index = refs[node[1]]
        call("call", "add", index, xb)
        for i in range(len(xq)):
            (result, _), buffers, _ = call("call", "search", index, xq[i : i + 1], k)
            D, I = (w.array_from_buffer(n, buffers) for n in result[1:])
            D0, I0 = local.search(xq[i : i + 1], k)
            np.testing.assert_array_equal(I, I0)
            np.testing.assert_array_equal(D, D0)
        for i in range(4):
            (result, _), buffers, _ = call("call", "range_search", index, xq[i : i + 1], 1.5 + i)
            lims, D, I = (w.array_from_buffer(n, buffers) for n in result[1:])
            lims0, D0, I0 = local.range_search(xq[i : i + 1], 1.5 + i)
            np.testing.assert_array_equal(lims, lims0)
            np.testing.assert_array_equal(I, I0)
        searches = [p for p in made if isinstance(p, CallPlan) and p.name == "search"]
        assert len(searches) == 1 and searches[0].reply[0] is not None  # planned once, its reply known
        assert searches[0].fills() is not None  # faiss's search takes D= and I=
        assert len(frames) == 1 and (frames[0] is not None) == (k == 4)  # one frame, made once, where aligned
        assert any(isinstance(p, CallPlan) and p.name == "range_search" for p in made)
        deadline = time.monotonic() + 5
        while service.stats.calls < 2 + len(xq) + 4 and time.monotonic() < deadline:
            time.sleep(0.01)  # (counted after each answer went out)
        assert service.stats.calls == 2 + len(xq) + 4 and service.stats.errors == 0
        assert stats.inflight == 0
        assert [row[1] for row in stats.drain() if row[0] == "call.search"] == [len(xq)]
    finally:
        client.close()
        serving.join(5)


def test_a_frame_in_a_reusable_buffer_is_copied_when_it_has_to_wait() -> None:
    """A whole frame passed as a memoryview (a reply frame the next call writes
    again) goes out at once when nobody is sending; when it has to wait in the send
    queue, the queue holds a copy, so what is sent is what was passed."""
    from faiss_proxy._transport import _HEADS, ClientConnection, client_config

    a, b = socket.socketpair()
    sender, receiver = ClientConnection(FrameChannel(a), client_config(10)), FrameChannel(b)
    try:
        meta = b"\x42" + bytes(8) + b"first"
        buffer = bytearray(_HEADS[0].pack(len(meta), 0, 0) + meta)
        sender._send_raw(memoryview(buffer), None)  # nobody sending: at once
        assert receiver.recv() == meta
        assert sender._sendlock.acquire(False)  # somebody is sending
        sender._send_raw(memoryview(buffer), None)  # so it waits in the queue...
        buffer[-5:] = b"later"  # ...while its buffer is written again
        sender._sendlock.release()
        sender._send_raw(bytes(_HEADS[0].pack(1, 0, 0)) + b"x", None)  # the next send drains the queue
        assert receiver.recv() == meta  # the frame as it was passed
        assert receiver.recv() == b"x"
    finally:
        sender._channel.close()
        receiver.close()


def test_a_filled_frame_sent_from_the_call_keeps_the_send_discipline() -> None:
    """``_send_now`` (a plan sends its filled reply frame with it, straight after
    the scan) sends at once when nobody is sending; when somebody is, the frame
    waits in the queue as a copy, in order; a frame queued while it sent goes out
    after it; and a closed connection is not the plan's error."""
    from faiss_proxy._transport import _HEADS, ClientConnection, client_config

    def whole(meta: bytes) -> bytearray:
        return bytearray(_HEADS[0].pack(len(meta), 0, 0) + meta)

    a, b = socket.socketpair()
    sender, receiver = ClientConnection(FrameChannel(a), client_config(10)), FrameChannel(b)
    b.settimeout(5)  # (a frame that never comes fails the test)
    try:
        first = whole(b"\x42" + bytes(8) + b"first")
        sender._send_now(memoryview(first))  # nobody sending: at once
        assert receiver.recv() == bytes(first[_HEADS[0].size :])
        assert sender._sendlock.acquire(False)  # somebody is sending
        sender._send_raw(bytes(whole(b"queued")), None)  # a frame already waiting
        sender._send_now(memoryview(first))  # so this one waits behind it...
        first[-5:] = b"later"  # ...while its buffer is written again
        sender._sendlock.release()
        sender._drain()
        assert receiver.recv() == b"queued"
        assert receiver.recv() == b"\x42" + bytes(8) + b"first"  # as it was passed
        real = sender._channel.sock

        class Meanwhile:  # its first sendall: a netref __del__ queues a frame meanwhile
            def sendall(self, data: Any) -> None:
                real.sendall(data)
                sender._channel.sock = real
                sender._send_queue.append((bytes(whole(b"meanwhile")), None))

        sender._channel.sock = Meanwhile()  # type: ignore[assignment]
        sender._send_now(memoryview(whole(b"now")))
        assert receiver.recv() == b"now"
        assert receiver.recv() == b"meanwhile"  # drained after it
        assert not sender._send_queue
        receiver.close()
        for _ in range(50):  # the peer is gone: the send fails quietly, the channel is closed
            sender._send_now(memoryview(whole(b"x" * 60_000)))
            if sender._channel.closed:
                break
        assert sender._channel.closed
    finally:
        sender._channel.close()
        receiver.close()


@pytest.mark.parametrize("body_len", [1, 7, 64, 200])
def test_a_reply_frame_is_one_well_formed_frame_with_aligned_arrays(body_len: int) -> None:
    """What a plan fills is exactly one frame: a reader gets the body and the arrays
    written into the frame's outputs, and nothing after them; the outputs start on a
    64-byte boundary and are aligned for their dtypes.  Arrays that could not be
    aligned there, or too many or too large, get no frame."""
    from faiss_proxy._transport import _SMALL, MSG_FAST_REPLY, SEQ, reply_frame

    body = b"x" * body_len
    specs = ((np.dtype("float32"), (2, 3)), (np.dtype("int64"), (2, 3)))
    frame = reply_frame(body, specs)
    assert frame is not None
    assert frame.outputs[0].ctypes.data % 64 == 0 and frame.outputs[1].ctypes.data % 8 == 0
    frame.outputs[0][:] = np.arange(6, dtype=np.float32).reshape(2, 3)
    frame.outputs[1][:] = -np.arange(6).reshape(2, 3)
    SEQ.pack_into(frame.wire, frame.seq_at, 77)
    a, b = socket.socketpair()
    receiver = FrameChannel(b)
    b.settimeout(5)  # a frame that says more than it holds fails, not hangs
    try:
        a.sendall(frame.wire)
        a.sendall(bytes(frame.wire))  # twice: the first frame must end where it says
        for _ in range(2):
            meta = receiver.recv()
            assert meta[0] == MSG_FAST_REPLY and SEQ.unpack_from(meta, 1)[0] == 77 and meta[9:] == body
            d, i = receiver.take_attachments()
            np.testing.assert_array_equal(d.view(np.float32).reshape(2, 3), frame.outputs[0])
            np.testing.assert_array_equal(i.view(np.int64).reshape(2, 3), frame.outputs[1])
    finally:
        a.close()
        receiver.close()
    assert reply_frame(body, ((np.dtype("float32"), (1, 5)), (np.dtype("int64"), (1, 5)))) is None  # I unaligned
    assert reply_frame(body, specs * 2) is None  # four arrays
    assert reply_frame(body, ((np.dtype("uint8"), (_SMALL,)),)) is None  # over 64 KiB


def test_the_worker_takes_small_attachments_onto_fresh_64_byte_boundaries() -> None:
    """``take_fast(aligned=True)`` (the worker's: the copies become faiss's inputs,
    and a query vector off a 64-byte boundary made a 100k flat scan 27-40 µs slower)
    gives writable copies of the attachments, each on a 64-byte boundary, in fresh
    memory: taking more frames, past the end of one arena and into the next, never
    changes a copy handed out before.  Copies larger than an arena are aligned too."""
    from faiss_proxy._transport import _ARENA, _REQUESTS, MSG_FAST_REQUEST, fast_head

    a, b = socket.socketpair()
    sender, receiver = FrameChannel(a), FrameChannel(b)
    rng = np.random.default_rng(3)
    taken: list[tuple[list[bytes], tuple[Any, ...]]] = []
    try:
        sizes = [[0], [512], [40, 80], [1], [0, 7, 300], [_ARENA + 100], [512, 512]] * 8
        for seq, lengths in enumerate(sizes):
            payloads = [rng.integers(0, 256, n, dtype=np.uint8).tobytes() for n in lengths]
            body = b"planned request"
            head = fast_head(MSG_FAST_REQUEST, body, lengths)
            if head is None:  # over a small frame: only what take_fast takes is checked
                continue
            a.sendall(b"".join([head, seq.to_bytes(8, "big"), body, *payloads]))
            receiver.spin_recv(5.0)
            while (fast := receiver.take_fast(_REQUESTS, aligned=True)) is None:
                receiver.spin_recv(5.0)
            msg, got_seq, got_body, copies = fast
            assert (msg, got_seq, got_body) == (MSG_FAST_REQUEST, seq, body)
            for payload, copy in zip(payloads, copies, strict=True):
                assert type(copy) is memoryview and not copy.readonly and bytes(copy) == payload
                if len(copy):
                    assert np.frombuffer(copy, np.uint8).ctypes.data % 64 == 0
            taken.append((payloads, copies))
        assert len(taken) > 2 * (_ARENA // 1024)  # through several arenas
        for payloads, copies in taken:  # nothing handed out was written again
            assert [bytes(c) for c in copies] == payloads
    finally:
        sender.close()
        receiver.close()


def test_take_repeat_takes_a_whole_frame_with_the_same_bytes_or_nothing() -> None:
    """``take_repeat`` (the worker's hot path for a client calling in a loop) takes a
    frame only when the read buffer holds all of it and its bytes are those of the
    frame it repeats but for the sequence number and the attachments' contents; the
    attachments come as ``take_fast(aligned=True)`` gives them.  Anything else (another
    body, another attachment size, half a frame) is left where it is, for the general
    path."""
    from faiss_proxy._transport import _REQUESTS, MSG_FAST_REQUEST, fast_head

    a, b = socket.socketpair()
    sender, receiver = FrameChannel(a), FrameChannel(b)
    body, sizes = b'["call","search",0,[["Handle",0,7]],[[1],[]]]', (512, 24)
    prefix = fast_head(MSG_FAST_REQUEST, body, list(sizes))
    assert prefix is not None
    rng = np.random.default_rng(5)

    def frame(seq: int, key: bytes = body, lengths: tuple[int, ...] = sizes) -> tuple[bytes, list[bytes]]:
        payloads = [rng.integers(0, 256, n, dtype=np.uint8).tobytes() for n in lengths]
        head = fast_head(MSG_FAST_REQUEST, key, list(lengths))
        assert head is not None
        return b"".join([head, seq.to_bytes(8, "big"), key, *payloads]), payloads

    def buffered() -> bytes:
        return bytes(receiver._buf[receiver._start : receiver._end])

    try:
        for seq in (1, 2, 1 << 40):  # repeats: new sequence numbers, new contents
            wire, payloads = frame(seq)
            a.sendall(wire)
            while receiver._end - receiver._start < len(wire):
                receiver._ensure(len(wire))
            got = receiver.take_repeat(prefix, body, sizes)
            assert got is not None and got[0] == seq
            assert [bytes(c) for c in got[1]] == payloads
            assert all(type(c) is memoryview and not c.readonly for c in got[1])
            assert all(np.frombuffer(c, np.uint8).ctypes.data % 64 == 0 for c in got[1])
            assert buffered() == b""
        others = [
            frame(3, body.replace(b"search", b"assign")),  # another request
            frame(4, body, (512, 16)),  # another attachment size: another header
            frame(5, body, (512,)),  # another attachment count
        ]
        for (wire, payloads), seq in zip(others, (3, 4, 5), strict=True):
            after, after_payloads = frame(seq + 10)  # a repeat right behind it
            a.sendall(wire + after)
            receiver._ensure(len(wire) + len(after))
            assert receiver.take_repeat(prefix, body, sizes) is None and buffered() == wire + after
            fast = receiver.take_fast(_REQUESTS, aligned=True)
            assert fast is not None and fast[1] == seq and [bytes(c) for c in fast[3]] == payloads
            got = receiver.take_repeat(prefix, body, sizes)
            assert got is not None and got[0] == seq + 10 and [bytes(c) for c in got[1]] == after_payloads
        wire, payloads = frame(6)
        a.sendall(wire[:100])  # half a frame: nothing taken
        receiver._ensure(100)
        assert receiver.take_repeat(prefix, body, sizes) is None and buffered() == wire[:100]
        a.sendall(wire[100:])
        receiver._ensure(len(wire))
        got = receiver.take_repeat(prefix, body, sizes)
        assert got is not None and got[0] == 6 and [bytes(c) for c in got[1]] == payloads
    finally:
        sender.close()
        receiver.close()


@pytest.mark.parametrize("spin", [0.0, 0.05])
def test_a_repeated_planned_request_is_taken_by_its_bytes_until_its_target_is_released(
    spin: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worker recognises a repeat of the last planned request by its bytes and
    answers it with the same plan: the answers are local faiss's, for every new
    query.  Another request in between (another k) goes the full way and does not
    break the run of repeats that follows.  Once the client has released the index,
    the same request bytes are not answered from the stale plan: the full path
    refuses them.  (The searches are sent in one go, so that the worker finds them
    in its read buffer, as a spinning worker finds a client's next request; threads
    of one process take turns at the GIL, which would make a spin give way.)"""
    import faiss

    from faiss_proxy import _wire as w
    from faiss_proxy._transport import (
        _REPLIES,
        MSG_FAST_ERROR,
        MSG_FAST_REPLY,
        MSG_FAST_REQUEST,
        SEQ,
        ServerConnection,
        fast_head,
    )
    from faiss_proxy_server.reflection import Reflection
    from faiss_proxy_server.service import FaissService, ThreadPolicy

    repeats: list[tuple[int, bytes]] = []
    real = ServerConnection._repeated

    def counting(self: Any, repeat: Any) -> Any:
        again = real(self, repeat)
        if again is not None:
            repeats.append((again[0], repeat[1]))
        return again

    monkeypatch.setattr(ServerConnection, "_repeated", counting)
    service = FaissService(Reflection(faiss), ThreadPolicy(faiss.omp_set_num_threads, 1, 20), "test")
    client, serving = _session(service, spin)
    xb, xq, local = _flat_data(11, 200, 10, 8)

    def message(target: Any, *args: Any) -> tuple[bytes, list[Any]]:
        out = w.Packer()
        tree, buffers, refs = out.message([[out.array(a) if isinstance(a, np.ndarray) else a for a in args], []])
        return client.request_body("call", "search", target, tree, refs), [b.array for b in buffers]

    def search_frame(seq: int, target: Any, i: int, k: int) -> bytes:
        body, arrays = message(target, xq[i : i + 1], k)
        head = fast_head(MSG_FAST_REQUEST, body, [a.nbytes for a in arrays])
        assert head is not None
        return b"".join([head, SEQ.pack(seq), body, *[a.tobytes() for a in arrays]])

    def replies(n: int) -> dict[int, tuple[int, Any]]:
        channel, got = client._channel, {}
        channel.sock.settimeout(10)  # a missing reply fails the test instead of hanging it
        while len(got) < n:
            data = channel.recv()
            buffers = channel.take_attachments()
            if data[0] not in _REPLIES:
                continue  # (RPyC's answer to the release of the index)
            (seq,) = SEQ.unpack_from(data, 1)
            body = data[1 + SEQ.size :]
            got[seq] = (data[0], (client._parse_reply(body), buffers) if data[0] == MSG_FAST_REPLY else body)
        return got

    try:
        (node, _), _, refs = client.fast_request("new", "IndexFlatL2", None, [[8], []], (), ())
        index = refs[node[1]]
        out = w.Packer()
        client.fast_request("call", "add", index, *out.message([[out.array(xb)], []]))
        for i in range(2):  # learnt, then planned
            out = w.Packer()
            client.fast_request("call", "search", index, *out.message([[out.array(xq[i : i + 1]), 4], []]))
        calls = [(100 + i, i, 4) for i in range(10)]
        calls.insert(5, (200, 0, 3))  # another request in between
        client._channel.sock.sendall(b"".join(search_frame(seq, index, i, k) for seq, i, k in calls))
        got = replies(len(calls))
        for seq, i, k in calls:
            msg, (((result, _), _), buffers) = got[seq]
            assert msg == MSG_FAST_REPLY
            D, I = (w.array_from_buffer(n, buffers) for n in result[1:])
            D0, I0 = local.search(xq[i : i + 1], k)
            np.testing.assert_array_equal(I, I0)
            np.testing.assert_array_equal(D, D0)
        # All but 200 are repeats, but for the first one or two where the worker read
        # before they had all arrived (the general way, which remembers the plan).
        taken = [seq for seq, _ in repeats]
        assert set(taken) <= {seq for seq, _, k in calls if k == 4} and len(taken) >= 6
        assert 200 not in taken and taken == sorted(taken)
        assert len({key for _, key in repeats}) == 1

        class Released:
            ____id_pack__ = index.____id_pack__

        del index, refs
        client._channel.sock.sendall(search_frame(300, Released(), 0, 4))
        msg, error = replies(1)[300]
        assert msg == MSG_FAST_ERROR and b"malformed request" in error  # (the index is gone)
        assert len(repeats) == len(taken)
    finally:
        client.close()
        serving.join(5)

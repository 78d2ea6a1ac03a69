"""Property tests (hypothesis) for the array codec and the server's decoder of call trees.

What crosses the wire is a JSON header plus raw buffers (see :mod:`faiss_proxy._wire`).
The properties:

* **round trip**: every array of every dtype FAISS takes (``_wire.ALLOWED_DTYPES``: bool,
  int8/16/32/64, uint8/16/32/64, float16/32/64), of any shape up to ``MAX_NDIM`` dimensions,
  0-size and 0-d arrays included, C-, Fortran-ordered or non-contiguous (slices, transposes,
  broadcasts), comes back with the same dtype, shape and bytes: through ``Packer`` +
  ``pack_json``/``unpack_json`` + ``array_from_buffer``, and through a real
  :class:`~faiss_proxy._transport.FrameChannel`;
* **refusals**: whatever a peer puts in an array node (unknown, object, string, complex,
  datetime or big-endian dtypes; negative, non-integer, too many or huge dimensions, a shape
  whose element count overflows int64; a payload of the wrong size, type or dtype) is
  refused with ``TypeError`` or ``ValueError`` -- before anything is allocated;
* the sender refuses what cannot be sent (object/str/complex/... arrays, > 8 dimensions);
* the server's decoder (:meth:`faiss_proxy_server.reflection.Reflection.decode`, with the
  real ``faiss`` module) rebuilds every value the client's encoder produces, and for
  arbitrary trees (random tags, arities, indexes, buffers and object references) either
  returns a value made only of plain values, views of the received buffers and faiss
  objects, or raises a plain ``TypeError``/``ValueError`` (``OverflowError`` for a scalar out
  of its dtype's range, ``RecursionError`` for nesting deeper than the interpreter allows).

Frames themselves (sizes, flags, garbage) are covered by ``tests/test_transport.py``,
``tests/test_security.py`` and ``tests/test_hostile.py``.
"""

from __future__ import annotations

import math
import socket
import threading
import time
import tracemalloc
from typing import Any

import faiss
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from faiss_proxy import _wire as w
from faiss_proxy._client import Connection
from faiss_proxy._transport import FrameChannel
from faiss_proxy_server.reflection import Handle, Reflection

settings.register_profile(
    "codec", max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)
CODEC = settings.get_profile("codec")

ALLOWED = sorted(w.ALLOWED_DTYPES)
#: each allowed dtype, as its wire code and in its native spelling ("=f4" on little-endian hosts)
DTYPES = st.sampled_from([np.dtype(code) for code in ALLOWED] + [np.dtype(code).newbyteorder("=") for code in ALLOWED])
SHAPES = hnp.array_shapes(min_dims=0, max_dims=w.MAX_NDIM, min_side=0, max_side=3)
REFUSED = (TypeError, ValueError)
#: dtypes that must never cross the wire (codes a peer might send, or that an array might have)
BAD_DTYPE_CODES = [
    "|O",
    "O",
    "<U4",
    "|S3",
    "|V4",
    "<c8",
    "<c16",
    "<M8[s]",
    "<m8[ns]",
    ">f4",
    ">i8",
    ">u2",
    ">f2",
    "float32",
    "f4",
    "int64",
    "<f4 ",
    " <f4",
    "<F4",
    "<f3",
    "<i16",
    "",
    "\x00nd",
]


def _received(blob: w.Blob | bytes) -> np.ndarray:
    """What the receiving transport hands the decoder: a fresh, writable uint8 buffer."""
    raw = bytes(w.wire_view(blob.array)) if isinstance(blob, w.Blob) else bytes(blob)
    return np.frombuffer(raw, dtype=np.uint8).copy()


@st.composite
def arrays(draw: st.DrawFn) -> np.ndarray:
    """Arrays of every allowed dtype and shape, C-ordered, Fortran-ordered or strided views."""
    dtype = draw(DTYPES)
    base = draw(hnp.arrays(dtype, SHAPES))
    layout = draw(st.sampled_from(["c", "fortran", "transpose", "step", "reverse", "broadcast"]))
    if layout == "fortran":
        return np.asfortranarray(base)
    if layout == "transpose":
        return base.T
    if layout == "step" and base.ndim:
        return base[..., ::2]
    if layout == "reverse" and base.ndim:
        return base[::-1]
    if layout == "broadcast" and base.ndim < w.MAX_NDIM:
        reps = draw(st.integers(0, 3))
        return np.broadcast_to(base, (reps, *base.shape))  # a zero stride, read-only
    return base


def _same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal dtype, shape and bytes (NaN payloads and -0.0 included)."""
    return a.shape == b.shape and np.ascontiguousarray(a).tobytes() == np.ascontiguousarray(b).tobytes()


# ----------------------------------------------------------------------------------
# round trips
# ----------------------------------------------------------------------------------
@CODEC
@given(arrays())
def test_array_round_trip_is_exact(x: np.ndarray) -> None:
    out = w.Packer()
    node = out.array(x)
    assert node[1] == (x.dtype.newbyteorder("<").str if x.dtype.itemsize > 1 else x.dtype.str)
    header = w.unpack_json(w.pack_json(node))  # the JSON header, as the peer parses it
    buffers = tuple(_received(b) for b in out.buffers)
    y = w.array_from_buffer(header, buffers)
    assert y.dtype.str == node[1] and y.dtype == x.dtype
    assert _same_bits(x, y)
    assert y.flags.writeable and y.flags.c_contiguous
    assert np.shares_memory(y, buffers[node[3]]) or y.nbytes == 0  # a view, not a copy


@CODEC
@given(st.lists(arrays(), min_size=1, max_size=3))
def test_arrays_round_trip_through_a_frame_channel(xs: list[np.ndarray]) -> None:
    a, b = socket.socketpair()
    tx, rx = FrameChannel(a, 1 << 24), FrameChannel(b, 1 << 24)
    try:
        out = w.Packer()
        tree = [out.array(x) for x in xs]
        meta = w.pack_json(tree)
        sender = threading.Thread(target=tx.send, args=((meta, [blob.array for blob in out.buffers]),))
        sender.start()
        got = rx.recv()
        sender.join()
        header = w.unpack_json(got)
        received = tuple(rx.attachment(i) for i in range(len(out.buffers)))
        for x, node in zip(xs, header, strict=True):
            assert _same_bits(x, w.array_from_buffer(node, received))
    finally:
        tx.close()
        rx.close()


@CODEC
@given(DTYPES, st.data())
def test_scalars_round_trip(dtype: np.dtype, data: st.DataObject) -> None:
    value = data.draw(hnp.from_dtype(dtype))
    scalar = dtype.type(value)
    out = w.Packer()
    node = w.unpack_json(w.pack_json(out.scalar(scalar)))
    back = REFLECTION.decode(node, (), (), [])
    assert back.dtype == scalar.dtype
    assert np.array(back).tobytes() == np.array(scalar).tobytes() or (np.isnan(back) and np.isnan(scalar))


# ----------------------------------------------------------------------------------
# what a peer may send: refused, never allocated
# ----------------------------------------------------------------------------------
def _assert_no_allocation(fn: Any, *args: Any) -> BaseException | None:
    """Run ``fn(*args)``; return its TypeError/ValueError; it must not allocate more than 1 MiB."""
    tracemalloc.start()
    started = time.monotonic()
    try:
        fn(*args)
    except REFUSED as exc:
        return exc
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert peak < 1 << 20, f"{fn.__name__}{args!r:.200} allocated {peak} bytes"
        assert time.monotonic() - started < 1.0
    return None


@CODEC
@given(
    st.one_of(
        st.sampled_from(BAD_DTYPE_CODES),
        st.text(max_size=8).filter(lambda s: s not in w.ALLOWED_DTYPES),
        st.integers(),
        st.none(),
        st.lists(st.text(max_size=3), max_size=2),
        st.sampled_from(ALLOWED).map(lambda code: np.dtype(code)),  # a dtype object, not its wire code
    )
)
def test_unknown_dtypes_are_refused(dtype: Any) -> None:
    buf = np.zeros(16, dtype=np.uint8)
    with pytest.raises(TypeError, match="refused array dtype"):
        w.decode_array(dtype, (4,), buf)
    with pytest.raises(TypeError, match="refused array dtype"):
        w.array_from_buffer([w.ND, dtype, [4], 0], (buf,))


@CODEC
@given(
    st.sampled_from(ALLOWED),
    st.lists(st.integers(min_value=-(2**70), max_value=2**70), max_size=w.MAX_NDIM + 4),
    st.integers(0, 64),
)
def test_shapes_are_checked_before_anything_is_allocated(code: str, dims: list[int], nbytes: int) -> None:
    """Negative, too many, or huge dimensions (whose product overflows int64) and payloads of
    another size are refused; only a shape that exactly matches the payload decodes."""
    buf = np.zeros(nbytes, dtype=np.uint8)
    itemsize = np.dtype(code).itemsize
    ok = (
        len(dims) <= w.MAX_NDIM
        and all(0 <= n <= w.MAX_DIMENSION for n in dims)
        and math.prod(dims) * itemsize == nbytes
        and math.prod(n for n in dims if n) * itemsize < 2**63  # numpy's limit, even for empty arrays
    )
    error = _assert_no_allocation(w.array_from_buffer, [w.ND, code, dims, 0], (buf,))
    if ok:
        assert error is None
        y = w.array_from_buffer([w.ND, code, dims, 0], (buf,))
        assert y.shape == tuple(dims) and np.shares_memory(y, buf) | (y.nbytes == 0)
    else:
        assert isinstance(error, ValueError), (dims, nbytes, error)


@CODEC
@given(
    st.sampled_from([*ALLOWED, "<f3", "O", "|V8", ">f4"]),
    st.lists(st.integers(min_value=-(2**70), max_value=2**70), max_size=w.MAX_NDIM + 4),
    st.integers(0, 64),
    st.booleans(),
    st.booleans(),
)
def test_a_cached_reply_decoder_decodes_as_the_general_path(
    code: str, dims: list[int], nbytes: int, pair: bool, taken_whole: bool
) -> None:
    """``arrays_decoder`` (made once per reply header by a client calling in a loop)
    accepts and refuses exactly what ``array_from_buffer`` does, with the same error,
    for both kinds of buffer the transport hands out: uint8 arrays, and the
    ``bytearray`` copies of a small frame taken whole (``FrameChannel.take_fast``)."""
    buf: Any = bytearray(nbytes) if taken_whole else np.zeros(nbytes, dtype=np.uint8)
    node = [w.ND, code, dims, 0]
    decoder = w.arrays_decoder([w.TUP, node, node] if pair else node)
    try:
        expected, error = w.array_from_buffer(node, (buf,)), None
    except REFUSED as exc:
        expected, error = None, exc
    if decoder is None:  # refused when made: the general path decodes (and refuses) it
        assert error is not None
        return
    if error is not None:
        with pytest.raises(type(error)) as refused:
            decoder((buf,))
        assert str(refused.value) == str(error)
        return
    got = decoder((buf,))
    for y in got if pair else (got,):
        assert expected is not None and y.dtype == expected.dtype and y.shape == expected.shape
        assert np.shares_memory(y, buf) | (y.nbytes == 0)
    with pytest.raises(ValueError, match="malformed array reference"):
        decoder(())


def test_cached_reply_decoders_are_made_only_for_arrays() -> None:
    nd = [w.ND, "<f4", [1, 2], 0]
    for node in (None, 3, "x", [], [w.TUP], [w.LST, nd], [w.TUP, nd, 5], [w.TUP, nd, [w.OBJ, 0, "Index"]], [w.ND]):
        assert w.arrays_decoder(node) is None, node


@pytest.mark.parametrize(
    "shape",
    [
        [0, 114639694, 40227654642],  # empty, yet over numpy's limit (found by hypothesis)
        [2**62, 2**62],  # product overflows int64
        [2**32, 2**32, 2**32],
        [2**63],
        [2**64 + 1],
        [1 << 40],  # a terabyte of float32 claimed by a 9-byte header
        [-1],
        [4, -4],
        [1] * (w.MAX_NDIM + 1),
        [1] * 10_000,
        [True, 4],
        [1.0, 4],
        ["4"],
        [None],
        [[4]],
        {"0": 4},
        "4",
        4,
        None,
    ],
)
def test_hostile_shapes(shape: Any) -> None:
    buf = np.zeros(16, dtype=np.uint8)
    error = _assert_no_allocation(w.array_from_buffer, [w.ND, "<f4", shape, 0], (buf,))
    assert isinstance(error, ValueError), error


@CODEC
@given(
    st.one_of(
        st.binary(max_size=32),
        st.binary(max_size=32).map(memoryview),
        st.sampled_from(["<f4", "<i8", "|i1", "<f2"]).map(lambda c: np.zeros(4, dtype=c)),
        st.just(np.zeros((4, 4), dtype=np.uint8)),
        st.just(np.zeros(16, dtype=np.uint8).view("<u2")),
        st.text(max_size=8),
        st.none(),
        st.integers(),
        st.just([0] * 16),
    )
)
def test_payloads_that_are_not_raw_buffers_are_refused(payload: Any) -> None:
    with pytest.raises(TypeError, match="refused array payload"):
        w.decode_array("|u1", (16,), payload)


@CODEC
@given(st.sampled_from(ALLOWED), st.integers(0, 40))
def test_strided_and_read_only_payloads_decode_or_are_refused(code: str, n: int) -> None:
    base = np.arange(2 * n * 8, dtype=np.uint8)
    buf = base[::2]  # a non-contiguous uint8 buffer (never produced by the transport)
    itemsize = np.dtype(code).itemsize
    try:
        y = w.decode_array(code, (len(buf) // itemsize,), buf)
    except ValueError:
        return
    assert y.nbytes == len(buf) // itemsize * itemsize and np.shares_memory(y, base) | (y.nbytes == 0)


@CODEC
@given(st.lists(st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=6)), max_size=6))
def test_malformed_array_nodes_are_refused(node: list[Any]) -> None:
    buf = np.zeros(8, dtype=np.uint8)
    try:
        y = w.array_from_buffer([w.ND, *node], (buf,))
    except REFUSED:
        return
    assert np.shares_memory(y, buf) or y.nbytes == 0


@pytest.mark.parametrize(
    "node",
    [
        [w.ND, "<f4", [1]],  # no buffer index
        [w.ND, "<f4", [1], 0, 0],  # one field too many
        [w.ND, "<f4", [1], 1],  # index past the buffers
        [w.ND, "<f4", [1], -1],  # negative index
        [w.ND, "<f4", [1], True],  # a bool is not an index
        [w.ND, "<f4", [1], 0.0],
        [w.ND, "<f4", [1], "0"],
        [w.ND, "<f4", [1], 2**64],
    ],
)
def test_malformed_buffer_references_are_refused(node: list[Any]) -> None:
    with pytest.raises(ValueError, match="malformed array reference"):
        w.array_from_buffer(node, (np.zeros(4, dtype=np.uint8),))


# ----------------------------------------------------------------------------------
# what the sender refuses
# ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "x",
    [
        np.array([object()], dtype=object),
        np.array(["a", "bc"]),
        np.array([b"a", b"bc"]),
        np.zeros(3, dtype="<c8"),
        np.zeros(3, dtype="<c16"),
        np.zeros(3, dtype="M8[s]"),
        np.zeros(3, dtype="m8[ns]"),
        np.zeros(3, dtype=[("a", "<f4"), ("b", "<i4")]),
        np.zeros(3, dtype="V8"),
        np.zeros(3, dtype=np.longdouble),
        np.zeros(3, dtype=">f4"),
        np.zeros(3, dtype=">i8"),
        np.zeros(3, dtype=">f2"),
    ],
    ids=lambda x: str(x.dtype),
)
def test_packer_refuses_dtypes_faiss_does_not_take(x: np.ndarray) -> None:
    with pytest.raises(TypeError, match=r"cannot be sent|big-endian"):
        w.Packer().array(x)


@CODEC
@given(DTYPES, st.integers(w.MAX_NDIM + 1, 32))
def test_packer_refuses_too_many_dimensions(dtype: np.dtype, ndim: int) -> None:
    with pytest.raises(ValueError, match="dimensions are not supported"):
        w.Packer().array(np.zeros((1,) * ndim, dtype=dtype))


@CODEC
@given(st.one_of(st.binary(max_size=64), st.text(max_size=64)))
def test_unpack_json_takes_any_bytes(data: bytes | str) -> None:
    try:
        w.unpack_json(data)
    except (ValueError, TypeError):
        pass  # UnicodeDecodeError is a ValueError


#: Header trees as the codecs build them: plain JSON values, with the values the
#: fast encoder (orjson) writes differently or refuses (NaN, infinities, integers
#: past 64 bits, lone surrogates, None).
_TREE_LEAVES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
    st.sampled_from(["\ud800", "\x00nd", "é", "null", ""]),
)
_TREES = st.recursive(_TREE_LEAVES, lambda inner: st.lists(inner, max_size=4), max_leaves=12)


def _same_json(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a):
        return math.isnan(b)
    if type(a) is not type(b):
        return False
    if isinstance(a, list):
        return len(a) == len(b) and all(_same_json(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


@CODEC
@given(_TREES)
def test_pack_json_reads_back_as_the_stdlib_writes_it(tree: Any) -> None:
    """``pack_json`` takes orjson's output only where it is exact: whatever the
    tree, the peer reads back what ``json.dumps`` would have sent."""
    import json

    packed = w.pack_json(tree)
    assert isinstance(packed, bytes)
    assert _same_json(w.unpack_json(packed), json.loads(json.dumps(tree)))
    assert _same_json(w.unpack_json(packed), tree)


def test_unpack_json_nesting_bomb() -> None:
    with pytest.raises(RecursionError):
        w.unpack_json("[" * 100_000 + "]" * 100_000)


# ----------------------------------------------------------------------------------
# the server's decoder, with the real faiss module
# ----------------------------------------------------------------------------------
REFLECTION = Reflection(faiss)
_ENCODER = object.__new__(Connection)  # the client's encoder (it needs no session for values)

_leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=False),
    st.text(max_size=10).filter(lambda s: not s.startswith("\x00")),
    arrays(),
    DTYPES.flatmap(lambda dt: hnp.from_dtype(dt, allow_nan=False).map(dt.type)),
)
VALUES = st.recursive(
    _leaves,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.lists(inner, max_size=3).map(tuple),
        st.dictionaries(st.one_of(st.text(max_size=4), st.integers(-5, 5)), inner, max_size=3),
    ),
    max_leaves=12,
)


def _equal(a: Any, b: Any) -> bool:
    if type(a) is not type(b) and not (isinstance(a, np.ndarray) and isinstance(b, np.ndarray)):
        return False
    if isinstance(a, np.ndarray):
        return a.dtype == b.dtype and _same_bits(a, b)
    if isinstance(a, np.generic):
        return a.dtype == b.dtype and np.array(a).tobytes() == np.array(b).tobytes()
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return list(a) == list(b) and all(_equal(a[k], b[k]) for k in a)
    return bool(a == b)


@CODEC
@given(VALUES)
def test_server_decodes_what_the_client_encodes(value: Any) -> None:
    out = w.Packer()
    node = _ENCODER.encode(value, out)
    header = w.unpack_json(w.pack_json(node))
    buffers = tuple(_received(b) for b in out.buffers)
    arrays_seen: list[np.ndarray] = []
    back = REFLECTION.decode(header, buffers, (), arrays_seen)
    assert _equal(value, back), (value, back)


_HANDLES = (Handle(faiss.IndexFlatL2(4)), Handle(faiss.IndexHNSWFlat(4, 8)))
_TAGS = [w.ND, w.TUP, w.LST, w.DCT, w.OBJ, w.SCA, w.BYT, w.MTH, w.ARG, "\x00x", "", "nd"]
_JSON_LEAVES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(),
    st.text(max_size=6),
    st.sampled_from(_TAGS),
    st.sampled_from(ALLOWED + BAD_DTYPE_CODES[:6]),
    st.integers(-2, 4),
)
TREES = st.recursive(
    _JSON_LEAVES,
    lambda inner: st.one_of(
        st.lists(inner, max_size=5),
        st.tuples(st.sampled_from(_TAGS), st.lists(inner, max_size=4)).map(lambda t: [t[0], *t[1]]),
        st.tuples(st.sampled_from(ALLOWED), st.lists(st.integers(-2, 20), max_size=3), st.integers(-1, 3)).map(
            lambda t: [w.ND, t[0], t[1], t[2]]
        ),
        st.lists(st.tuples(inner, inner).map(list), max_size=3).map(lambda pairs: [w.DCT, *pairs]),
    ),
    max_leaves=20,
)
BUFFERS = st.lists(
    st.one_of(st.integers(0, 64).map(lambda n: np.zeros(n, dtype=np.uint8)), st.binary(max_size=16)),
    max_size=3,
).map(tuple)
REFS = st.lists(st.sampled_from([*_HANDLES, object(), "x", None]), max_size=3).map(tuple)


def _only_safe_values(value: Any, buffers: tuple[Any, ...]) -> None:
    """A decoded value holds plain values, views of the received buffers and faiss objects only."""
    if isinstance(value, np.ndarray):
        assert value.nbytes == 0 or any(isinstance(b, np.ndarray) and np.shares_memory(value, b) for b in buffers), (
            "an array that is not a view of a received buffer"
        )
    elif isinstance(value, (list, tuple)):
        for v in value:
            _only_safe_values(v, buffers)
    elif isinstance(value, dict):
        for k, v in value.items():
            _only_safe_values(k, buffers)
            _only_safe_values(v, buffers)
    else:
        allowed = (type(None), bool, int, float, str, bytes, np.generic, faiss.Index)
        assert isinstance(value, allowed), type(value)


@settings(CODEC, max_examples=400)
@given(TREES, BUFFERS, REFS)
def test_server_decoder_refuses_malformed_trees(tree: Any, buffers: tuple[Any, ...], refs: tuple[Any, ...]) -> None:
    arrays_seen: list[np.ndarray] = []
    try:
        value = REFLECTION.decode(tree, buffers, refs, arrays_seen)
    except (TypeError, ValueError, OverflowError):
        return
    _only_safe_values(value, buffers)
    for a in arrays_seen:
        _only_safe_values(a, buffers)


@pytest.mark.parametrize(
    ("tree", "error"),
    [
        ([w.OBJ, 0], "not a remote faiss object"),  # refs[0] is not a Handle
        ([w.OBJ, 5], "malformed argument"),
        ([w.OBJ, True], "malformed argument"),
        ([w.OBJ, 1, "IndexFlatL2"], "malformed argument"),  # the reply form is not accepted from a client
        ([w.BYT, 0], "malformed bytes argument"),  # buffers from the wire are arrays, not bytes
        ([w.SCA, "|O", 1], "refused scalar dtype"),
        ([w.SCA, "<c8", 1], "refused scalar dtype"),
        ([w.SCA, "<f4", "1.0"], "malformed scalar"),
        ([w.SCA, "<f4", [1.0]], "malformed scalar"),
        ([w.DCT, [[w.LST], 1]], "unhashable dict key"),
        ([w.DCT, [1]], "malformed dict argument"),
        ([w.MTH, "search"], "malformed argument"),
        ([w.ARG, 0], "malformed argument"),
        ([], "malformed argument"),
        ([1, 2], "malformed argument"),
        ({"a": 1}, "malformed argument of type dict"),
    ],
)
def test_server_decoder_refusals(tree: Any, error: str) -> None:
    with pytest.raises(TypeError, match=error):
        REFLECTION.decode(tree, (np.zeros(4, dtype=np.uint8),), (object(),), [])


def test_server_decoder_resolves_handles_to_faiss_objects() -> None:
    index = faiss.IndexFlatL2(4)
    assert REFLECTION.decode([w.LST, [w.OBJ, 0]], (), (Handle(index),), []) == [index]


def test_server_decoder_nesting_bomb() -> None:
    tree: Any = 1
    for _ in range(50_000):
        tree = [w.LST, tree]
    with pytest.raises(RecursionError):
        REFLECTION.decode(tree, (), (), [])

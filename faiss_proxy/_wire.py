"""How values cross the wire between the client library and a tenant worker.

RPyC's own serializer (brine) carries only immutable scalars, strings, bytes and
tuples; anything else would become a *netref*, a remote reference whose every
element access is a network round trip (and whose ``__array__`` is a known code
execution path).  And brine, with RPyC's boxing around it, is pure Python: a call
with a couple of arrays costs a hundred nested dump/load steps per direction.

So a call's values travel as three flat parts, in one message (the hot operations
use the transport's brine-free fast path, see :mod:`faiss_proxy._transport`):

* a JSON **header** (parsed by the C JSON codec) describing the values, with
  tagged list nodes for everything that is not a plain number or string:
  ``[ND, dtype, shape, i]`` an array whose bytes are ``buffers[i]``,
  ``[OBJ, j]`` / ``[OBJ, j, class]`` the server object ``refs[j]``,
  ``[TUP, ...]``, ``[LST, ...]``, ``[DCT, [k, v], ...]``, ``[SCA, dtype, value]``,
  ``[BYT, i]`` for ``bytes``;
* a tuple of **buffers**: each array as a :class:`Blob` that the transport sends
  raw after the message, from the array's own memory; the receiver reads it into
  the buffer that becomes the array -- never pickled, never serialized element by
  element;
* a tuple of **refs**: RPyC netrefs of opaque server handles (named on the wire by
  their RPyC id-packs, so their lifetime stays RPyC's).

Only plain numeric dtypes are accepted; an object array can never be decoded.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = [
    "Packer",
    "pack_json",
    "unpack_json",
    "array_from_buffer",
    "BYT",
    "ND",
    "TUP",
    "LST",
    "DCT",
    "OBJ",
    "SCA",
    "MTH",
    "ARG",
    "Blob",
    "ALLOWED_DTYPES",
    "MAX_NDIM",
    "decode_array",
    "array_spec",
    "arrays_decoder",
    "wire_view",
]

ND = "\x00nd"  # ndarray: (ND, dtype str, shape tuple, Blob | received buffer)
TUP = "\x00t"  # a user tuple: (TUP, item, ...)
LST = "\x00l"  # a list: (LST, item, ...)
DCT = "\x00d"  # a dict: (DCT, (key, value), ...)
OBJ = "\x00o"  # a server object: (OBJ, ref) client->server, (OBJ, ref, class) back
SCA = "\x00s"  # a NumPy scalar: (SCA, dtype str, bytes)
MTH = "\x00m"  # an attribute that is a bound method: (MTH, name)
ARG = "\x00a"  # a result that *is* one of the caller's arguments: (ARG, position | name)
BYT = "\x00b"  # a bytes value: (BYT, buffer index)

#: Little-endian numeric dtypes FAISS takes or returns; nothing else is decoded.
ALLOWED_DTYPES = frozenset(
    np.dtype(t).str
    for t in (
        "bool",
        "int8",
        "uint8",
        "<i2",
        "<u2",
        "<i4",
        "<u4",
        "<i8",
        "<u8",
        "<f2",
        "<f4",
        "<f8",
    )
)
#: No real array has a dimension this large (numpy cannot even represent some).
MAX_DIMENSION = 1 << 40
MAX_NDIM = 8
_MAX_ARRAY_BYTES = 1 << 63  # numpy's limit on size * itemsize (of the non-zero dimensions)


class Blob:
    """A contiguous buffer that the transport sends raw, next to the message."""

    __slots__ = ("array",)

    def __init__(self, array: np.ndarray) -> None:
        self.array = array

    @property
    def nbytes(self) -> int:
        return int(self.array.nbytes)


def wire_view(array: np.ndarray) -> memoryview:
    """A flat byte view of a C-contiguous array, for ``socket.sendall``."""
    return memoryview(array.reshape(-1).view(np.uint8))  # type: ignore[arg-type]


_UINT8 = np.dtype(np.uint8)
_DTYPE_CODES: dict[np.dtype, str] = {}
_DTYPES: dict[str, np.dtype] = {code: np.dtype(code) for code in ALLOWED_DTYPES}


def _check_dtype(dtype: np.dtype) -> str:
    code = _DTYPE_CODES.get(dtype)
    if code is not None:
        return code
    code = _dtype_code(dtype)
    _DTYPE_CODES[dtype] = code
    return code


def _dtype_code(dtype: np.dtype) -> str:
    if dtype.byteorder == ">" or (dtype.byteorder == "=" and not _LITTLE):
        raise TypeError(f"big-endian arrays are not supported (dtype {dtype})")
    code = dtype.newbyteorder("<").str if dtype.itemsize > 1 else dtype.str
    if code not in ALLOWED_DTYPES:
        raise TypeError(f"arrays of dtype {dtype} cannot be sent; use a numeric dtype")
    return code


_LITTLE = np.little_endian


def array_spec(dtype: Any, shape: Any) -> tuple[np.dtype, tuple[int, ...], int]:
    """Validate an array's dtype and shape as a peer sent them; return the dtype,
    the shape and the byte size its buffer must have."""
    dt = _DTYPES.get(dtype) if type(dtype) is str else None
    if dt is None:
        raise TypeError(f"refused array dtype {dtype!r}")
    if type(shape) is not tuple or len(shape) > MAX_NDIM:
        raise ValueError("refused array shape: not a tuple of at most 8 dimensions")
    for n in shape:
        if type(n) is not int or n < 0:
            raise ValueError(f"refused array shape {shape!r}: dimensions must be ints >= 0")
        if n > MAX_DIMENSION:
            raise ValueError(f"refused array shape {shape!r}: a dimension over {MAX_DIMENSION}")
    expected = math.prod(shape) * dt.itemsize
    if expected == 0 and math.prod(n for n in shape if n) * dt.itemsize >= _MAX_ARRAY_BYTES:
        # numpy refuses such a shape even when a 0 makes the array empty (a shape
        # without a 0 fails the size check: no buffer is that large)
        raise ValueError(f"refused array shape {shape!r}: larger than any array can be")
    return dt, shape, expected


def decode_array(dtype: Any, shape: Any, buf: Any) -> np.ndarray:
    """Rebuild an array from the wire, validating everything a peer controls.

    ``buf`` is the uint8 buffer the transport received (or the ``bytearray`` it
    took a small frame's attachment into).  The result is a writable view of it,
    not a copy.
    """
    dt, shape, expected = array_spec(dtype, shape)
    if type(buf) is bytearray:
        buf = np.frombuffer(buf, np.uint8)
    if type(buf) is not np.ndarray or buf.dtype is not _UINT8 or buf.ndim != 1:
        raise TypeError("refused array payload: not a raw buffer")
    if expected != buf.nbytes:
        raise ValueError(f"refused array: shape {shape} of {dt} needs {expected} bytes, got {buf.nbytes}")
    return buf.view(dt).reshape(shape)


def arrays_decoder(node: Any) -> Callable[[tuple[Any, ...]], Any] | None:
    """For a result node that is an array (``[ND, ...]``) or a tuple of arrays
    (``[TUP, [ND, ...], ...]``, the ``(D, I)`` of a search): a function that
    decodes such a result from a message's buffers, its nodes validated once;
    None for any other node.  (A client decodes the same reply header again and
    again when it calls in a loop.)"""
    if type(node) is not list or not node:
        return None
    single = node[0] == ND
    items = [node] if single else node[1:] if node[0] == TUP else None
    if not items:
        return None
    specs = []
    for item in items:
        if type(item) is not list or len(item) != 4 or item[0] != ND:
            return None
        index, shape = item[3], item[2]
        if type(index) is not int or index < 0 or not isinstance(shape, list):
            return None
        try:
            specs.append((index, *array_spec(item[1], tuple(shape))))
        except (TypeError, ValueError):
            return None  # decoded (and refused) the general way

    def decode(buffers: tuple[Any, ...]) -> Any:
        out = []
        for index, dt, shape, expected in specs:
            if index >= len(buffers):
                raise ValueError("malformed array reference")
            buf = buffers[index]  # (a uint8 array or a bytearray: len() is its bytes)
            if expected != len(buf):
                raise ValueError(f"refused array: shape {shape} of {dt} needs {expected} bytes, got {len(buf)}")
            out.append(np.ndarray(shape, dt, buf))  # (one call: view and reshape in one)
        return out[0] if single else tuple(out)

    return decode


class Packer:
    """Collects the buffers and refs of one message while its header is built."""

    __slots__ = ("buffers", "refs")

    def __init__(self) -> None:
        self.buffers: list[Any] = []
        self.refs: list[Any] = []

    def array(self, array: np.ndarray) -> list[Any]:
        code = _check_dtype(array.dtype)
        if array.ndim > MAX_NDIM:
            raise ValueError(f"arrays of more than {MAX_NDIM} dimensions are not supported")
        contiguous = array if array.flags.c_contiguous else np.ascontiguousarray(array)
        self.buffers.append(Blob(contiguous))
        return [ND, code, list(contiguous.shape), len(self.buffers) - 1]

    def scalar(self, value: np.generic) -> list[Any]:
        return [SCA, _check_dtype(value.dtype), value.item()]

    def raw(self, value: bytes) -> list[Any]:
        self.buffers.append(value)
        return [BYT, len(self.buffers) - 1]

    def ref(self, ref: Any, *extra: Any) -> list[Any]:
        self.refs.append(ref)
        return [OBJ, len(self.refs) - 1, *extra]

    def message(self, tree: Any) -> tuple[Any, tuple[Any, ...], tuple[Any, ...]]:
        return tree, tuple(self.buffers), tuple(self.refs)


def _make_encoder() -> Any:
    """The C JSON encoder, built once (``json.dumps`` builds one per call)."""
    from json import encoder

    c_make = getattr(encoder, "c_make_encoder", None)
    if c_make is None:  # pragma: no cover - pure-Python json
        return json.JSONEncoder(separators=(",", ":")).encode

    def fail(obj: Any) -> Any:
        raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")

    c_encoder = c_make(None, fail, encoder.encode_basestring_ascii, None, ":", ",", False, False, True)

    def encode(tree: Any) -> str:
        return "".join(c_encoder(tree, 0))

    return encode


_encode_str = _make_encoder()
_scan = json.JSONDecoder().scan_once  # type: ignore[attr-defined]  # the C scanner

try:  # the server's dependency; a client without it uses the C json codec alone
    import orjson as _orjson
except ImportError:  # pragma: no cover - depends on what is installed
    _orjson = None  # type: ignore[assignment]


def pack_json(tree: Any) -> bytes:
    """``json.dumps(tree, separators=(",", ":")).encode()``, faster.

    orjson writes the header when it can write it exactly: it refuses integers
    outside 64 bits (raises) and writes NaN and infinities as ``null`` (so any
    ``null`` in its output sends the tree through the stdlib encoder, which writes
    ``None`` as ``null`` and NaN as ``NaN``, as ``json`` does)."""
    if _orjson is not None:
        try:
            out = _orjson.dumps(tree)
        except TypeError:  # orjson.JSONEncodeError: a big int, a non-str key, ...
            pass
        else:
            if b"null" not in out:
                return out
    return _encode_str(tree).encode()


def unpack_json(text: Any) -> Any:
    """``json.loads`` for str or UTF-8 bytes (one JSON value, no surrounding space).

    (The stdlib's C scanner: on a header of a hundred bytes it is as fast as
    orjson, and orjson reads integers past 64 bits as floats.)"""
    if isinstance(text, (bytes, bytearray, memoryview)):
        text = str(text, "utf-8")
    elif not isinstance(text, str):
        raise TypeError("malformed message header")
    try:
        value, end = _scan(text, 0)
    except StopIteration:
        raise ValueError("malformed message header: not JSON") from None
    if end != len(text):
        raise ValueError("malformed message header: trailing data")
    return value


def array_from_buffer(node: list[Any], buffers: tuple[Any, ...]) -> np.ndarray:
    """Decode an ``[ND, dtype, shape, i]`` node against the message's buffers
    (the received uint8 arrays); the result is a writable view, not a copy."""
    if len(node) != 4 or type(node[3]) is not int or not 0 <= node[3] < len(buffers):
        raise ValueError("malformed array reference")
    shape = node[2]
    if not isinstance(shape, list):
        raise ValueError("refused array shape: not a list")
    return decode_array(node[1], tuple(shape), buffers[node[3]])

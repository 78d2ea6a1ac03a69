"""How values cross the wire between the client library and a tenant worker.

RPyC's own serializer (brine) carries only immutable scalars, strings, bytes and
tuples; anything else would become a *netref*, a remote reference whose every
element access is a network round trip (and whose ``__array__`` is a known code
execution path).  So both ends agree on a small tagged encoding on top of brine:

* a NumPy array is ``(ND, dtype, shape, Blob(array))``.  The :class:`Blob` is not
  serialized by brine at all: the transport sends its buffer raw, after the brine
  message, and the receiver reads it straight into a fresh aligned buffer
  (see :mod:`faiss_proxy._transport`).  No pickle, no copy into a bytes object;
* lists, dicts and user tuples are tagged (``LST``, ``DCT``, ``TUP``) so that a bare
  tuple on the wire is always a protocol structure;
* a server-side object travels as ``(OBJ, ref, class name)`` where ``ref`` is the RPyC
  netref of an opaque server handle;
* NumPy scalars are ``(SCA, dtype, raw bytes)``.

Only plain numeric dtypes are accepted; an object array can never be decoded.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = [
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
    "encode_array",
    "decode_array",
    "encode_scalar",
    "decode_scalar",
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
MAX_NDIM = 8


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


def _check_dtype(dtype: np.dtype) -> str:
    if dtype.byteorder == ">" or (dtype.byteorder == "=" and not _LITTLE):
        raise TypeError(f"big-endian arrays are not supported (dtype {dtype})")
    code = dtype.newbyteorder("<").str if dtype.itemsize > 1 else dtype.str
    if code not in ALLOWED_DTYPES:
        raise TypeError(f"arrays of dtype {dtype} cannot be sent; use a numeric dtype")
    return code


_LITTLE = np.little_endian


def encode_array(array: np.ndarray) -> tuple[Any, ...]:
    """Encode ``array`` by value.  Non-contiguous arrays are made contiguous first."""
    code = _check_dtype(array.dtype)
    if array.ndim > MAX_NDIM:
        raise ValueError(f"arrays of more than {MAX_NDIM} dimensions are not supported")
    contiguous = np.ascontiguousarray(array)
    return (ND, code, tuple(int(n) for n in contiguous.shape), Blob(contiguous))


def decode_array(dtype: Any, shape: Any, buf: Any) -> np.ndarray:
    """Rebuild an array from the wire, validating everything a peer controls.

    ``buf`` is the uint8 buffer the transport received.  The result is a
    writable view of it, not a copy.
    """
    if not isinstance(dtype, str) or dtype not in ALLOWED_DTYPES:
        raise TypeError(f"refused array dtype {dtype!r}")
    if not isinstance(shape, tuple) or len(shape) > MAX_NDIM:
        raise ValueError("refused array shape: not a tuple of at most 8 dimensions")
    for n in shape:
        if type(n) is not int or n < 0:
            raise ValueError(f"refused array shape {shape!r}: dimensions must be ints >= 0")
    if not isinstance(buf, np.ndarray) or buf.dtype != np.uint8 or buf.ndim != 1:
        raise TypeError("refused array payload: not a raw buffer")
    dt = np.dtype(dtype)
    expected = math.prod(shape) * dt.itemsize
    if expected != buf.nbytes:
        raise ValueError(f"refused array: shape {shape} of {dt} needs {expected} bytes, got {buf.nbytes}")
    return buf.view(dt).reshape(shape)


def encode_scalar(value: np.generic) -> tuple[Any, ...]:
    code = _check_dtype(value.dtype)
    return (SCA, code, np.asarray(value).tobytes())


def decode_scalar(dtype: Any, raw: Any) -> np.generic:
    if not isinstance(dtype, str) or dtype not in ALLOWED_DTYPES:
        raise TypeError(f"refused scalar dtype {dtype!r}")
    dt = np.dtype(dtype)
    if not isinstance(raw, bytes) or len(raw) != dt.itemsize:
        raise ValueError("refused scalar payload")
    value: np.generic = np.frombuffer(raw, dtype=dt)[0]
    return value

"""The registry of a named index: string ids, int64 FAISS ids, metadata, filters.

**Ids.**  REST callers name vectors with strings; FAISS wants int64.  The mapping
is stable without any stored counter: a canonical non-negative decimal string
(``"42"``) is the FAISS id 42 itself (so an id added from Python with
``add_with_ids`` is ``"42"`` over REST), and any other string is hashed
(BLAKE2b, 62 bits, with bit 62 set so hashed ids never look like small
integers).  A collision between two strings is refused with 409, never merged.

**Metadata** is a JSON object per vector.  Equality-style conditions use an
inverted index (field -> value -> ids) kept up to date on every change; range
conditions use a sorted array per field, rebuilt lazily after that field changed.
A list value matches each of its elements (``{"tags": "news"}`` matches
``{"tags": ["news", "sport"]}``).

**Filter language** (a JSON object; all keys of one object must hold)::

    {"genre": "jazz"}                          equality
    {"year": {"$gte": 1990, "$lt": 2000}}      numeric $gt $gte $lt $lte
    {"genre": {"$in": ["jazz", "soul"]}}       membership
    {"genre": {"$ne": "pop"}}                  not equal (also matches vectors without the field)
    {"$or": [{...}, {...}]}, {"$and": [...]}   combinations
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from typing import Any

import numpy as np

from .errors import BadRequest, Conflict

__all__ = ["Registry", "string_to_id", "MAX_ID_LENGTH", "MAX_METADATA_BYTES"]

MAX_ID_LENGTH = 512
MAX_METADATA_BYTES = 64 * 1024
_INT63 = (1 << 63) - 1
_HASH_BIT = 1 << 62
_RANGE_OPS = {"$gt", "$gte", "$lt", "$lte"}
_FIELD_OPS = _RANGE_OPS | {"$eq", "$ne", "$in", "$nin"}


def string_to_id(s: Any) -> int:
    """The FAISS id of a string id (see module doc)."""
    if type(s) is not str or not s or len(s) > MAX_ID_LENGTH:
        raise BadRequest(f"vector ids are non-empty strings of at most {MAX_ID_LENGTH} characters")
    if s.isascii() and s.isdigit() and (s == "0" or s[0] != "0") and len(s) <= 19:
        value = int(s)
        if value <= _INT63:
            return value
    digest = hashlib.blake2b(s.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return (int.from_bytes(digest, "big") & (_HASH_BIT - 1)) | _HASH_BIT


def _key(value: Any) -> Any:
    """Hashable key of a scalar metadata value (bools apart from 0/1)."""
    if type(value) is bool:
        return ("bool", value)
    return value


def _is_number(value: Any) -> bool:
    return type(value) in (int, float)


class Registry:
    """Every id stored in one named index, with its string id and metadata."""

    def __init__(self) -> None:
        self.entries: dict[int, tuple[str | None, dict[str, Any] | None]] = {}
        self._eq: dict[str, dict[Any, set[int]]] = {}
        self._ranges: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def __len__(self) -> int:
        return len(self.entries)

    def __contains__(self, ident: int) -> bool:
        return ident in self.entries

    # --- ids --------------------------------------------------------------------------
    def label(self, ident: int) -> str:
        entry = self.entries.get(ident)
        return entry[0] if entry is not None and entry[0] is not None else str(ident)

    def metadata(self, ident: int) -> dict[str, Any] | None:
        entry = self.entries.get(ident)
        return entry[1] if entry is not None else None

    def resolve(self, s: Any) -> int:
        ident = string_to_id(s)
        entry = self.entries.get(ident)
        if entry is not None and entry[0] is not None and entry[0] != s:
            raise Conflict(f"vector id {s!r} collides with the stored id {entry[0]!r}; choose another id")
        return ident

    def ids(self) -> np.ndarray:
        return np.fromiter(self.entries.keys(), dtype=np.int64, count=len(self.entries))

    # --- changes ------------------------------------------------------------------------
    def put(self, ident: int, label: str | None, meta: dict[str, Any] | None) -> None:
        if ident in self.entries:
            self.discard(ident)
        if label is not None and label == str(ident):
            label = None
        self.entries[ident] = (label, meta or None)
        if meta:
            for field, value in meta.items():
                self._index(field, value, ident, add=True)

    def put_plain(self, ids: Iterable[int]) -> None:
        """Ids added from Python (no string id, no metadata)."""
        for ident in ids:
            ident = int(ident)
            if ident in self.entries:
                self.discard(ident)
            self.entries[ident] = (None, None)

    def discard(self, ident: int) -> None:
        entry = self.entries.pop(ident, None)
        if entry is not None and entry[1]:
            for field, value in entry[1].items():
                self._index(field, value, ident, add=False)

    def clear(self) -> None:
        self.entries.clear()
        self._eq.clear()
        self._ranges.clear()

    def _index(self, field: str, value: Any, ident: int, add: bool) -> None:
        values = value if type(value) is list else [value]
        by_value = self._eq.setdefault(field, {})
        for v in values:
            if isinstance(v, (dict, list)):
                continue
            key = _key(v)
            if add:
                by_value.setdefault(key, set()).add(ident)
            else:
                ids = by_value.get(key)
                if ids is not None:
                    ids.discard(ident)
                    if not ids:
                        del by_value[key]
            if _is_number(v):
                self._ranges.pop(field, None)

    # --- persistence --------------------------------------------------------------------
    def dump(self) -> list[list[Any]]:
        return [[ident, label, meta] for ident, (label, meta) in self.entries.items()]

    @classmethod
    def load(cls, rows: list[list[Any]]) -> Registry:
        reg = cls()
        for ident, label, meta in rows:
            reg.put(int(ident), label, meta)
        return reg

    # --- filters ------------------------------------------------------------------------
    def match(self, flt: Any) -> np.ndarray:
        """Sorted int64 ids of the vectors that satisfy ``flt``."""
        if not isinstance(flt, dict):
            raise BadRequest("filter must be a JSON object")
        ids = self._match(flt, depth=0)
        out = np.fromiter(ids, dtype=np.int64, count=len(ids))
        out.sort()
        return out

    def _all(self) -> set[int]:
        return set(self.entries)

    def _match(self, flt: dict[str, Any], depth: int) -> set[int]:
        if depth > 16:
            raise BadRequest("filter nests too deeply")
        result: set[int] | None = None
        for key, cond in flt.items():
            if key in ("$and", "$or"):
                if not isinstance(cond, list) or not cond or not all(isinstance(c, dict) for c in cond):
                    raise BadRequest(f"'{key}' takes a non-empty list of filter objects")
                parts = [self._match(c, depth + 1) for c in cond]
                part = set.intersection(*parts) if key == "$and" else set().union(*parts)
            elif key.startswith("$"):
                raise BadRequest(f"unknown filter operator '{key}' (use $and, $or, or a field name)")
            else:
                part = self._field(key, cond)
            result = part if result is None else result & part
            if not result:
                return set()
        return self._all() if result is None else result

    def _field(self, field: str, cond: Any) -> set[int]:
        if isinstance(cond, dict):
            if not cond:
                raise BadRequest(f"empty condition for field '{field}'")
            result: set[int] | None = None
            for op, arg in cond.items():
                if op not in _FIELD_OPS:
                    raise BadRequest(f"unknown operator '{op}' for field '{field}'; known: {sorted(_FIELD_OPS)}")
                part = self._op(field, op, arg)
                result = part if result is None else result & part
            return result if result is not None else set()
        return self._op(field, "$eq", cond)

    def _op(self, field: str, op: str, arg: Any) -> set[int]:
        by_value = self._eq.get(field, {})
        if op in ("$eq", "$ne"):
            _check_scalar(field, op, arg)
            hit = set(by_value.get(_key(arg), ()))
            return hit if op == "$eq" else self._all() - hit
        if op in ("$in", "$nin"):
            if not isinstance(arg, list):
                raise BadRequest(f"'{op}' for field '{field}' takes a list")
            hit = set()
            for v in arg:
                _check_scalar(field, op, v)
                hit |= by_value.get(_key(v), set())
            return hit if op == "$in" else self._all() - hit
        if not _is_number(arg):
            raise BadRequest(f"'{op}' for field '{field}' takes a number")
        values, ids = self._range_arrays(field)
        if op == "$gt":
            sl = slice(np.searchsorted(values, arg, side="right"), None)
        elif op == "$gte":
            sl = slice(np.searchsorted(values, arg, side="left"), None)
        elif op == "$lt":
            sl = slice(None, np.searchsorted(values, arg, side="left"))
        else:
            sl = slice(None, np.searchsorted(values, arg, side="right"))
        return set(ids[sl].tolist())

    def _range_arrays(self, field: str) -> tuple[np.ndarray, np.ndarray]:
        cached = self._ranges.get(field)
        if cached is None:
            vals: list[float] = []
            idents: list[int] = []
            for key, ids in self._eq.get(field, {}).items():
                if _is_number(key):
                    vals.extend([float(key)] * len(ids))
                    idents.extend(ids)
            values = np.array(vals, dtype=np.float64)
            order = np.argsort(values, kind="stable")
            cached = (values[order], np.array(idents, dtype=np.int64)[order])
            self._ranges[field] = cached
        return cached


def _check_scalar(field: str, op: str, value: Any) -> None:
    if isinstance(value, (dict, list)):
        raise BadRequest(f"'{op}' for field '{field}' compares with a string, number, boolean or null")


def check_metadata(meta: Any) -> dict[str, Any] | None:
    """Validate one vector's metadata (a JSON object of bounded size)."""
    if meta is None:
        return None
    if not isinstance(meta, dict):
        raise BadRequest("metadata must be a JSON object")
    if any(k.startswith("$") for k in meta):
        raise BadRequest("metadata field names may not start with '$'")
    if len(json.dumps(meta)) > MAX_METADATA_BYTES:
        raise BadRequest(f"metadata of one vector is limited to {MAX_METADATA_BYTES} bytes of JSON")
    return meta

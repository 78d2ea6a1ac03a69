"""The REST operations on named indexes, as a tenant worker runs them.

The gateway authenticates a REST request, picks the operation from the route and
hands ``(operation, path arguments, query, body)`` to the tenant's worker
(:mod:`.restchannel`); this module parses the JSON body, checks it, runs the
operation against the tenant's :class:`~.named.NamedIndexStore` and returns
``(status, JSON body)``.  Keeping the work here means a slow or crashing request
affects only its own tenant, and the gateway's event loop never parses vectors.

Every failure is a :class:`~.errors.ProxyError` rendered as
``{"error": {"code": ..., "message": ...}}``: bad input is 400, a missing index or
vector 404, a duplicate name or an untrained index 409, FAISS's own refusals
400 with FAISS's message.

**Scores.**  ``score`` is the value FAISS returns for the metric: the *squared* L2
distance for ``L2`` indexes (smaller is closer) and the inner product for ``IP``
indexes (larger is closer; with normalized vectors, the cosine similarity).

**Filters** (see :mod:`.metadata`) select ids first; FAISS then searches only those
(an ``IDSelectorBatch`` in the search parameters).  When at most
:data:`EXACT_FILTER_MAX` vectors match, or when the approximate search found
fewer than ``k`` of the matching vectors (an IVF list not probed, an HNSW graph
cut by the filter), the matching vectors are ranked exactly instead (reconstructed
from the index, compared with ``faiss.knn``), so ``k`` results come back whenever
``k`` vectors match.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from .errors import BadRequest, Conflict, NotFound, OutOfMemory, PayloadTooLarge, ProxyError, StorageError
from .metadata import check_metadata, string_to_id
from .named import NamedIndex, NamedIndexStore

__all__ = ["RestApi", "RestLimits", "EXACT_FILTER_MAX", "MUTATING_OPERATIONS"]

log = logging.getLogger("faiss_proxy.rest")

#: Up to this many matching vectors, a filtered search ranks them exactly.
EXACT_FILTER_MAX = 4096

#: Operations a read-only key may not call.
MUTATING_OPERATIONS = frozenset({"create", "drop", "upsert", "delete_vector", "train", "reset"})


@dataclass(frozen=True)
class RestLimits:
    max_k: int = 1024
    max_batch: int = 100_000
    max_range_results: int = 100_000


class RestApi:
    """``handle(op, path, query, body) -> (status, body)`` for one tenant."""

    def __init__(
        self,
        store: NamedIndexStore,
        apply_threads: Callable[[int], None] | None = None,
        limits: RestLimits | None = None,
    ) -> None:
        self.store = store
        self.faiss = store.faiss
        self.apply_threads = apply_threads or (lambda rows: None)
        self.limits = limits or RestLimits()
        self._ops: dict[str, Callable[[dict[str, str], dict[str, Any]], tuple[int, Any]]] = {
            "create": self.create,
            "list": self.list_indexes,
            "info": self.info,
            "drop": self.drop,
            "upsert": self.upsert,
            "get_vector": self.get_vector,
            "delete_vector": self.delete_vector,
            "search": self.search,
            "train": self.train,
            "ntotal": self.ntotal,
            "reset": self.reset,
            "specialized_search": self.specialized_search,
        }

    # --- entry point -------------------------------------------------------------------
    def handle(self, op: str, path: dict[str, str], query: dict[str, str], body: bytes) -> tuple[int, bytes]:
        try:
            fn = self._ops.get(op)
            if fn is None:
                raise NotFound(f"no such operation: {op}")
            request = _parse_body(body)
            if op == "search" and query:
                request = {**_search_from_query(query), **request}
            status, payload = fn(path, request)
            return status, orjson.dumps(payload)
        except ProxyError as exc:
            return exc.status, _error(exc.code, exc.message)
        except MemoryError:
            exc2 = OutOfMemory("the tenant's memory limit was reached; the request was not applied")
            return exc2.status, _error(exc2.code, exc2.message)
        except OSError as exc:
            err = StorageError(f"the data dir could not be used ({exc.strerror or exc}); nothing was changed")
            return err.status, _error(err.code, err.message)
        except (RuntimeError, AssertionError, ValueError, TypeError) as exc:
            return 400, _error("faiss_error", _faiss_message(exc))
        except Exception:
            log.exception("REST operation %s failed", op)
            return 500, _error("internal", "internal server error")

    # --- indexes -----------------------------------------------------------------------
    def create(self, path: dict[str, str], req: dict[str, Any]) -> tuple[int, Any]:
        _only(req, {"name", "dimension", "index_type", "metric", "params"})
        if "name" not in req or "dimension" not in req:
            raise BadRequest("creating an index needs 'name' and 'dimension'")
        named = self.store.create(
            req["name"],
            req["dimension"],
            req.get("index_type", "IndexFlatL2"),
            req.get("metric", "L2"),
            req.get("params"),
        )
        return 201, named.info()

    def list_indexes(self, path: dict[str, str], req: dict[str, Any]) -> tuple[int, Any]:
        infos = []
        for name in self.store.names():
            try:
                infos.append(self.store.open(name).info())
            except NotFound:
                continue  # dropped meanwhile
            except Exception as exc:  # one damaged index must not hide the others
                infos.append({"name": name, "error": _faiss_message(exc)})
        return 200, {"indexes": infos}

    def info(self, path: dict[str, str], req: dict[str, Any]) -> tuple[int, Any]:
        return 200, self._index(path).info()

    def drop(self, path: dict[str, str], req: dict[str, Any]) -> tuple[int, Any]:
        self.store.drop(path["index"])
        return 200, {"dropped": path["index"]}

    def ntotal(self, path: dict[str, str], req: dict[str, Any]) -> tuple[int, Any]:
        named = self._index(path)
        with named.reading() as index:
            return 200, {"ntotal": int(index.ntotal)}

    def reset(self, path: dict[str, str], req: dict[str, Any]) -> tuple[int, Any]:
        named = self._index(path)
        named.write({"op": "reset"})
        return 200, {"ntotal": 0}

    def train(self, path: dict[str, str], req: dict[str, Any]) -> tuple[int, Any]:
        _only(req, {"vectors", "values_b64"})
        named = self._index(path)
        x = self._matrix(named, req, "vectors")
        self.apply_threads(len(x))
        named.write({"op": "train", "n": len(x)}, x.tobytes())
        with named.reading() as index:
            return 200, {"is_trained": bool(index.is_trained), "ntotal": int(index.ntotal)}

    # --- vectors -----------------------------------------------------------------------
    def upsert(self, path: dict[str, str], req: dict[str, Any]) -> tuple[int, Any]:
        _only(req, {"vectors"})
        named = self._index(path)
        items = req.get("vectors")
        if not isinstance(items, list) or not items:
            raise BadRequest("'vectors' must be a non-empty list of {id, values | values_b64, metadata}")
        if len(items) > self.limits.max_batch:
            raise PayloadTooLarge(f"at most {self.limits.max_batch} vectors per request")
        d = named.definition.dimension
        latest: dict[int, int] = {}  # FAISS id -> position of its last occurrence
        labels: list[str] = []
        rows: list[Any] = []
        metas: list[Any] = []
        for pos, item in enumerate(items):
            if not isinstance(item, dict):
                raise BadRequest(f"vectors[{pos}] must be an object")
            extra = set(item) - {"id", "values", "values_b64", "metadata"}
            if extra:
                raise BadRequest(f"vectors[{pos}]: unknown field(s) {sorted(extra)}")
            label = item.get("id")
            if type(label) is int and label >= 0:
                label = str(label)
            if type(label) is not str:
                raise BadRequest(f"vectors[{pos}]: 'id' must be a string")
            ident = string_to_id(label)
            latest[ident] = pos
            labels.append(label)
            rows.append(_one_vector(item, d, f"vectors[{pos}]"))
            metas.append(check_metadata(item.get("metadata")))
        keep = sorted(latest.values())
        ids = np.array([string_to_id(labels[p]) for p in keep], dtype="<i8")
        x = np.stack([rows[p] for p in keep]).astype("<f4", copy=False)
        _check_finite(x, "vectors")
        kept_labels = [labels[p] for p in keep]
        header = {
            "op": "upsert",
            "n": len(keep),
            "labels": [None if lab == str(i) else lab for lab, i in zip(kept_labels, ids.tolist(), strict=True)],
            "meta": [metas[p] for p in keep],
        }

        def check() -> None:
            new = sum(1 for ident in ids.tolist() if ident not in named.registry)
            self.store.check_vectors(new)
            if not named.index.is_trained:
                raise Conflict(f"index '{named.name}' is not trained: POST /v1/index/{named.name}/train first")
            for lab, ident in zip(kept_labels, ids.tolist(), strict=True):
                if ident in named.registry and named.registry.label(ident) != lab:
                    raise Conflict(f"vector id {lab!r} collides with stored id {named.registry.label(ident)!r}")

        self.apply_threads(len(x))
        named.write(header, ids.tobytes() + x.tobytes(), check=check)
        return 200, {"upserted": len(keep), "ntotal": int(named.index.ntotal)}

    def get_vector(self, path: dict[str, str], req: dict[str, Any]) -> tuple[int, Any]:
        named = self._index(path)
        label = path["vector"]
        ident = string_to_id(label)
        with named.reading() as index:
            if ident not in named.registry or named.registry.label(ident) != label:
                raise NotFound(f"no vector '{label}' in index '{named.name}'")
            values = _reconstruct(index, np.array([ident], dtype=np.int64))[0]
            return 200, {"id": label, "values": values.tolist(), "metadata": named.registry.metadata(ident)}

    def delete_vector(self, path: dict[str, str], req: dict[str, Any]) -> tuple[int, Any]:
        named = self._index(path)
        label = path["vector"]
        ident = string_to_id(label)

        def check() -> None:
            if ident not in named.registry or named.registry.label(ident) != label:
                raise NotFound(f"no vector '{label}' in index '{named.name}'")

        named.write({"op": "delete"}, np.array([ident], dtype="<i8").tobytes(), check=check)
        return 200, {"deleted": label, "ntotal": int(named.index.ntotal)}

    # --- searches ----------------------------------------------------------------------
    def search(self, path: dict[str, str], req: dict[str, Any]) -> tuple[int, Any]:
        _only(req, {"vector", "vectors", "k", "filter", "params", "include"})
        named = self._index(path)
        xq, single = self._queries(named, req)
        k = self._k(req.get("k", 10))
        include = _include(req.get("include"))
        flt = req.get("filter")
        params = req.get("params")
        self.apply_threads(len(xq))
        with named.reading() as index:
            _require_trained(named, index)
            D, I = self._search(named, index, xq, k, flt, params)
            results = [self._hits(named, index, D[i], I[i], include) for i in range(len(xq))]
        return 200, {"results": results[0] if single else results}

    def specialized_search(self, path: dict[str, str], req: dict[str, Any]) -> tuple[int, Any]:
        named = self._index(path)
        operation = req.get("operation")
        if operation == "reconstruct":
            _only(req, {"operation", "id"})
            label = req.get("id")
            if type(label) is not str:
                raise BadRequest("reconstruct takes 'id', a vector id string")
            status, body = self.get_vector({**path, "vector": label}, {})
            return status, {"id": label, "values": body["values"]}
        if operation == "range_search":
            _only(req, {"operation", "vector", "vectors", "radius", "filter", "include"})
            xq, single = self._queries(named, req)
            radius: Any = req.get("radius")
            if type(radius) not in (int, float) or not np.isfinite(radius):
                raise BadRequest("range_search takes a finite number 'radius'")
            include = _include(req.get("include"))
            self.apply_threads(len(xq))
            with named.reading() as index:
                _require_trained(named, index)
                params = None
                if req.get("filter") is not None:
                    matches = named.registry.match(req["filter"])
                    params = self._params(named, index, None, matches)
                lims, D, I = index.range_search(xq, float(radius), params=params)
                cap = self.limits.max_range_results
                results = []
                for q in range(len(xq)):
                    lo, hi = int(lims[q]), int(lims[q + 1])
                    order = np.argsort(D[lo:hi] if named.definition.metric == "L2" else -D[lo:hi], kind="stable")
                    sel = order[:cap] + lo
                    hits = self._hits(named, index, D[sel], I[sel], include)
                    results.append({"results": hits, "truncated": hi - lo > cap})
            return 200, {"results": results[0] if single else results}
        if operation == "search_and_reconstruct":
            _only(req, {"operation", "vector", "vectors", "k", "filter", "params", "include"})
            wanted = sorted(set(_include(req.get("include"))) | {"values"})
            return self.search(path, {**{k: v for k, v in req.items() if k != "operation"}, "include": wanted})
        raise BadRequest("'operation' must be one of range_search, search_and_reconstruct, reconstruct")

    def _search(
        self, named: NamedIndex, index: Any, xq: np.ndarray, k: int, flt: Any, params: Any
    ) -> tuple[np.ndarray, np.ndarray]:
        if flt is None:
            result: tuple[np.ndarray, np.ndarray] = index.search(xq, k, params=self._params(named, index, params, None))
            return result
        matches = named.registry.match(flt)
        nq = len(xq)
        if not len(matches):
            return np.full((nq, k), np.nan, dtype=np.float32), np.full((nq, k), -1, dtype=np.int64)
        if len(matches) <= EXACT_FILTER_MAX:
            exact = self._exact(named, index, xq, k, matches)
            if exact is not None:
                return exact
        D, I = index.search(xq, k, params=self._params(named, index, params, matches))
        wanted = min(k, len(matches))
        short = np.flatnonzero((I >= 0).sum(axis=1) < wanted)
        if len(short):
            exact = self._exact(named, index, xq[short], k, matches)
            if exact is not None:
                D[short], I[short] = exact
        return D, I

    def _exact(
        self, named: NamedIndex, index: Any, xq: np.ndarray, k: int, matches: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """Rank ``matches`` exactly; None when this index cannot reconstruct."""
        try:
            xb = index.reconstruct_batch(matches)
        except RuntimeError:
            return None
        faiss = self.faiss
        metric = faiss.METRIC_L2 if named.definition.metric == "L2" else faiss.METRIC_INNER_PRODUCT
        kk = min(k, len(matches))
        D, pos = faiss.knn(xq, xb, kk, metric=metric)
        I = np.where(pos >= 0, matches[np.maximum(pos, 0)], -1)
        if kk < k:
            D = np.pad(D, ((0, 0), (0, k - kk)), constant_values=np.nan)
            I = np.pad(I, ((0, 0), (0, k - kk)), constant_values=-1)
        return D, I

    def _params(self, named: NamedIndex, index: Any, params: Any, matches: np.ndarray | None) -> Any:
        faiss = self.faiss
        if params is None:
            params = {}
        if not isinstance(params, dict):
            raise BadRequest('\'params\' must be an object like {"nprobe": 16} or {"efSearch": 64}')
        unknown = set(params) - {"nprobe", "efSearch"}
        if unknown:
            raise BadRequest(f"unknown search parameter(s) {sorted(unknown)} (known: nprobe, efSearch)")
        for key, value in params.items():
            if type(value) is not int or not 0 < value <= 1 << 20:
                raise BadRequest(f"search parameter '{key}' must be a positive integer")
        if not params and matches is None:
            return None
        inner = _inner(faiss, index)
        if "nprobe" in params:
            if not isinstance(inner, faiss.IndexIVF):
                raise BadRequest(f"'nprobe' applies to IVF indexes; '{named.name}' is {type(inner).__name__}")
            p = faiss.SearchParametersIVF()
            p.nprobe = params["nprobe"]
        elif "efSearch" in params:
            if not isinstance(inner, faiss.IndexHNSW):
                raise BadRequest(f"'efSearch' applies to HNSW indexes; '{named.name}' is {type(inner).__name__}")
            p = faiss.SearchParametersHNSW()
            p.efSearch = params["efSearch"]
        elif isinstance(inner, faiss.IndexIVF):
            p = faiss.SearchParametersIVF()
            p.nprobe = inner.nprobe
        elif isinstance(inner, faiss.IndexHNSW):
            p = faiss.SearchParametersHNSW()
            p.efSearch = inner.hnsw.efSearch
        else:
            p = faiss.SearchParameters()
        if matches is not None:
            sel = faiss.IDSelectorBatch(matches)
            p.sel = sel
            p.referenced_objects = [sel]  # keeps the selector alive as long as p
        return p

    def _hits(self, named: NamedIndex, index: Any, D: np.ndarray, I: np.ndarray, include: list[str]) -> list[Any]:
        entries = named.registry.entries
        ids = I.tolist()
        scores = D.tolist()
        if -1 in ids:  # fewer than k found: FAISS pads with -1
            valid = I >= 0
            ids = I[valid].tolist()
            scores = D[valid].tolist()
        with_meta = "metadata" in include
        values = _reconstruct(index, np.array(ids, dtype=np.int64)).tolist() if "values" in include and ids else None
        hits = []
        for j, ident in enumerate(ids):
            label, meta = entries.get(ident, (None, None))
            hit: dict[str, Any] = {"id": label if label is not None else str(ident), "score": scores[j]}
            if with_meta:
                hit["metadata"] = meta
            if values is not None:
                hit["values"] = values[j]
            hits.append(hit)
        return hits

    # --- input helpers -----------------------------------------------------------------
    def _index(self, path: dict[str, str]) -> NamedIndex:
        return self.store.open(path["index"])

    def _k(self, k: Any) -> int:
        if type(k) is not int or not 0 < k <= self.limits.max_k:
            raise BadRequest(f"'k' must be an integer from 1 to {self.limits.max_k}")
        return k

    def _queries(self, named: NamedIndex, req: dict[str, Any]) -> tuple[np.ndarray, bool]:
        d = named.definition.dimension
        if ("vector" in req) == ("vectors" in req):
            raise BadRequest("give either 'vector' (one query) or 'vectors' (a list of queries)")
        if "vector" in req:
            x = _one_vector({"values": req["vector"]}, d, "vector")
            _check_finite(x, "vector")
            return x[None, :], True
        x = self._matrix(named, req, "vectors")
        return x, False

    def _matrix(self, named: NamedIndex, req: dict[str, Any], key: str) -> np.ndarray:
        d = named.definition.dimension
        if "values_b64" in req:
            x = _from_b64(req["values_b64"], "values_b64")
            if x.size % d:
                raise BadRequest(f"'values_b64' holds {x.size} floats, not a multiple of the dimension {d}")
            x = x.reshape(-1, d)
        elif key in req:
            x = _numeric(req[key], key)
            if x.ndim != 2 or x.shape[1] != d:
                raise BadRequest(f"'{key}' must be a list of vectors of dimension {d}")
        else:
            raise BadRequest(f"'{key}' (a list of vectors) or 'values_b64' is needed")
        if not len(x):
            raise BadRequest(f"'{key}' is empty")
        if len(x) > self.limits.max_batch:
            raise PayloadTooLarge(f"at most {self.limits.max_batch} vectors per request")
        _check_finite(x, key)
        return np.ascontiguousarray(x, dtype=np.float32)


# --- module helpers -----------------------------------------------------------------------
def _error(code: str, message: str) -> bytes:
    return orjson.dumps({"error": {"code": code, "message": message}})


def _faiss_message(exc: BaseException) -> str:
    text = str(exc).strip()
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else type(exc).__name__


def _parse_body(body: bytes) -> dict[str, Any]:
    if not body.strip():
        return {}
    try:
        request = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"malformed JSON body: {exc}") from None
    if not isinstance(request, dict):
        raise BadRequest("the JSON body must be an object")
    return request


def _only(req: dict[str, Any], known: set[str]) -> None:
    unknown = set(req) - known
    if unknown:
        raise BadRequest(f"unknown field(s) {sorted(unknown)}; known: {sorted(known)}")


def _numeric(values: Any, what: str) -> np.ndarray:
    if not isinstance(values, list) or not values:
        raise BadRequest(f"'{what}' must be a non-empty list of numbers")
    try:
        x = np.array(values)
    except (ValueError, TypeError):
        raise BadRequest(f"'{what}' must hold numbers only, all of the same length") from None
    if x.dtype.kind not in "iuf":
        raise BadRequest(f"'{what}' must hold numbers only, all of the same length")
    return x.astype(np.float32)


def _from_b64(text: Any, what: str) -> np.ndarray:
    if type(text) is not str:
        raise BadRequest(f"'{what}' must be a base64 string of little-endian float32 values")
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest(f"'{what}' is not valid base64") from None
    if len(raw) % 4:
        raise BadRequest(f"'{what}' must decode to whole float32 values (a multiple of 4 bytes)")
    return np.frombuffer(raw, dtype="<f4")


def _one_vector(item: dict[str, Any], d: int, what: str) -> np.ndarray:
    if "values_b64" in item:
        if "values" in item:
            raise BadRequest(f"{what}: give 'values' or 'values_b64', not both")
        x = _from_b64(item["values_b64"], f"{what}.values_b64")
    elif "values" in item:
        x = _numeric(item["values"], f"{what}.values")
    else:
        raise BadRequest(f"{what}: 'values' (a list of numbers) or 'values_b64' is needed")
    if x.ndim != 1 or x.shape[0] != d:
        raise BadRequest(f"{what}: expected {d} values, got {x.shape[0] if x.ndim == 1 else list(x.shape)}")
    return x


def _check_finite(x: np.ndarray, what: str) -> None:
    if not np.isfinite(x).all():
        raise BadRequest(f"'{what}' contains NaN or infinite values")


def _include(include: Any) -> list[str]:
    if include is None:
        return ["metadata"]
    if isinstance(include, str):
        include = [s for s in include.split(",") if s]
    if not isinstance(include, list) or any(v not in ("metadata", "values") for v in include):
        raise BadRequest("'include' is a list of 'metadata' and 'values'")
    return list(include)


def _search_from_query(query: dict[str, str]) -> dict[str, Any]:
    """``GET .../search?vector=0.1,0.2&k=5&filter={...}&nprobe=8&include=metadata``."""
    out: dict[str, Any] = {}
    params: dict[str, Any] = {}
    for key, value in query.items():
        try:
            if key == "vector":
                out["vector"] = [float(v) for v in value.split(",")]
            elif key == "k":
                out["k"] = int(value)
            elif key == "filter":
                out["filter"] = json.loads(value)
            elif key in ("nprobe", "efSearch"):
                params[key] = int(value)
            elif key == "include":
                out["include"] = value
            else:
                raise BadRequest(f"unknown query parameter '{key}'")
        except ValueError:
            raise BadRequest(f"query parameter '{key}' is malformed") from None
    if params:
        out["params"] = params
    return out


def _require_trained(named: NamedIndex, index: Any) -> None:
    if not index.is_trained:
        raise Conflict(f"index '{named.name}' is not trained: POST /v1/index/{named.name}/train first")


def _reconstruct(index: Any, ids: np.ndarray) -> np.ndarray:
    try:
        values: np.ndarray = index.reconstruct_batch(ids)
        return values
    except RuntimeError as exc:
        raise BadRequest(f"this index type cannot return stored vectors: {_faiss_message(exc)}") from None


def _inner(faiss: Any, index: Any) -> Any:
    """The index that does the searching, below IDMap and pre-transform wrappers."""
    top = faiss.downcast_index(index)
    while isinstance(top, (faiss.IndexIDMap, faiss.IndexPreTransform)):
        top = faiss.downcast_index(top.index)
    return top

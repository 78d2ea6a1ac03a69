"""Named indexes: durable, shared FAISS indexes that belong to a tenant.

A :class:`NamedIndex` lives in the tenant's worker and is shared by every client
of the tenant, RPC and REST alike.  It is the real FAISS object (RPC clients get
it from ``faiss_proxy.open_index(name)`` as a remote index) plus:

* a :class:`~.metadata.Registry` of its ids (string ids, metadata, filters);
* a reader-writer lock: FAISS allows concurrent searches, not search during add;
* a write-ahead log and snapshots (:mod:`.storage`).

**Ids everywhere.**  A named index always takes ``add_with_ids``: an index type
with ids of its own (IVF, ``IDMap``) is kept as it is (IVF gets a hash-table
direct map, so ``reconstruct`` and ``remove_ids`` work with any id); any other type
is wrapped in ``IndexIDMap2``, as ``index_factory(d, "IDMap2,HNSW32")`` would.

**Every mutation is logged** and acknowledged only after the log is on disk; the
write lock is held until then, so no reader sees a change a crash could take back.
What is logged is the operation itself (``upsert`` with its ids, vectors and
metadata; ``delete``; ``train``; ``reset``; or, from Python, a method call or
attribute change with its arguments), so replaying the log after a crash repeats
exactly what was acknowledged.  A change FAISS refuses is not logged.

**Objects reached from a named index** (``index.index``, ``index.hnsw``,
``faiss.downcast_index(index)``) remember their path from the index, so
``index.index.hnsw.efSearch = 64`` is logged and replayed too.  A named index
cannot be handed to another object's constructor or to a function that could
change it behind the log (``faiss.IndexIDMap(named)``): clone it first.
"""

from __future__ import annotations

import contextlib
import logging
import re
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import BadRequest, Conflict, LimitExceeded, NotFound, StorageError
from .metadata import Registry
from .reflection import check_factory
from .storage import SnapshotError, WriteAheadLog, read_snapshot, write_snapshot

__all__ = [
    "NamedIndex",
    "NamedIndexStore",
    "RWLock",
    "Definition",
    "READ_METHODS",
    "PATH_FUNCTIONS",
    "READ_FUNCTIONS",
    "CLASS_FACTORIES",
]

log = logging.getLogger("faiss_proxy.named")

INDEX_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
MAX_DIMENSION = 65536

#: Methods that only read an index: they run under the read lock and are not logged.
#: Any other method of a named index is taken as a mutation.
READ_METHODS = frozenset(
    {
        "search",
        "range_search",
        "reconstruct",
        "reconstruct_n",
        "reconstruct_batch",
        "search_and_reconstruct",
        "search_preassigned",
        "range_search_preassigned",
        "assign",
        "sa_encode",
        "sa_decode",
        "sa_code_size",
        "compute_residual",
        "compute_residual_n",
        "get_list_size",
        "get_codes",
        "get_ids",
        "check_compatible_for_merge",
        "get_distance_computer",
        "get_FlatCodesDistanceComputer",
        "get_distance",
        "print_stats",
    }
)

#: Functions that return an object *inside* the index: the result keeps the path.
PATH_FUNCTIONS = frozenset({"downcast_index", "extract_index_ivf", "try_extract_index_ivf"})
#: Functions that only read the index they are given.
READ_FUNCTIONS = frozenset({"clone_index", "serialize_index"}) | PATH_FUNCTIONS

#: REST ``index_type`` class names and the ``index_factory`` string each stands for.
#: ``{nlist}``, ``{M}``, ``{m}`` and ``{nbits}`` come from the request's ``params``.
CLASS_FACTORIES: dict[str, tuple[str, str | None]] = {
    "IndexFlat": ("Flat", None),
    "IndexFlatL2": ("Flat", "L2"),
    "IndexFlatIP": ("Flat", "IP"),
    "IndexHNSWFlat": ("HNSW{M}", None),
    "IndexHNSWSQ": ("HNSW{M}_SQ8", None),
    "IndexHNSWPQ": ("HNSW{M}_PQ{m}", None),
    "IndexIVFFlat": ("IVF{nlist},Flat", None),
    "IndexIVFPQ": ("IVF{nlist},PQ{m}x{nbits}", None),
    "IndexIVFScalarQuantizer": ("IVF{nlist},SQ8", None),
    "IndexPQ": ("PQ{m}x{nbits}", None),
    "IndexScalarQuantizer": ("SQ8", None),
    "IndexLSH": ("LSH", None),
}
_DEFAULT_PARAMS = {"nlist": 100, "M": 32, "nbits": 8}


class RWLock:
    """Many readers or one writer; a waiting writer stops new readers (no starvation)."""

    def __init__(self) -> None:
        # Readers take the condition's lock directly (``with self._lock`` is C code,
        # ``with self._cond`` a Python call): they run on every search.
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._readers = 0
        self._writer = False
        self._writers_waiting = 0

    def acquire_read(self) -> None:
        with self._lock:
            while self._writer or self._writers_waiting:
                self._cond.wait()
            self._readers += 1

    def release_read(self) -> None:
        with self._lock:
            self._readers -= 1
            # Only a writer can be waiting for the last reader to leave (readers
            # wait for writers, and a writer still waiting keeps them waiting).
            if not self._readers and self._writers_waiting:
                self._cond.notify_all()

    @contextlib.contextmanager
    def read(self) -> Iterator[None]:
        self.acquire_read()
        try:
            yield
        finally:
            self.release_read()

    @contextlib.contextmanager
    def write(self) -> Iterator[None]:
        with self._cond:
            self._writers_waiting += 1
            try:
                while self._writer or self._readers:
                    self._cond.wait()
            except BaseException:  # interrupted while waiting: readers may go on
                self._writers_waiting -= 1
                self._cond.notify_all()
                raise
            self._writers_waiting -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()


class _Reading:
    """The context of :meth:`NamedIndex.reading` (a class, not a generator: every
    search enters one)."""

    __slots__ = ("named",)

    def __init__(self, named: NamedIndex) -> None:
        self.named = named

    def __enter__(self) -> Any:
        named = self.named
        named.lock.acquire_read()
        if named.dropped:
            named.lock.release_read()
            named.check_alive()
        return named.index

    def __exit__(self, *exc: object) -> None:
        self.named.lock.release_read()


@dataclass(frozen=True)
class Definition:
    name: str
    dimension: int
    index_type: str
    factory: str
    metric: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "dimension": self.dimension,
            "index_type": self.index_type,
            "factory": self.factory,
            "metric": self.metric,
        }


#: Search/build settings a create request may give for any index type they apply to.
TUNING_PARAMS = ("efConstruction", "efSearch", "nprobe")
#: Shape settings of the REST class names (a factory string carries its own).
SHAPE_PARAMS = ("nlist", "M", "m", "nbits")
#: Defaults for HNSW indexes created by class name: FAISS's own (40 / 16) give poor
#: recall when vectors arrive in many small batches, as they do over REST.
HNSW_CLASS_DEFAULTS = {"efConstruction": 80, "efSearch": 32}


def factory_string(index_type: Any, dimension: int, metric: str, params: Any) -> tuple[str, str, dict[str, int]]:
    """``index_type`` (a class name or an index_factory string) -> (factory, metric, tuning)."""
    if type(index_type) is not str or not index_type.strip():
        raise BadRequest("index_type must be a faiss class name (IndexFlatL2, ...) or an index_factory string")
    if params is not None and not isinstance(params, dict):
        raise BadRequest("params must be a JSON object")
    params = dict(params or {})
    for key, value in params.items():
        if key not in TUNING_PARAMS + SHAPE_PARAMS:
            raise BadRequest(f"unknown index parameter '{key}' (known: {', '.join(SHAPE_PARAMS + TUNING_PARAMS)})")
        if type(value) is not int or value <= 0 or value > 1 << 20:
            raise BadRequest(f"index parameter '{key}' must be a positive integer")
    tuning = {k: v for k, v in params.items() if k in TUNING_PARAMS}
    entry = CLASS_FACTORIES.get(index_type)
    if entry is None:
        if index_type.startswith("Index") and "," not in index_type:
            raise BadRequest(
                f"unknown index class '{index_type}'; use one of {sorted(CLASS_FACTORIES)} or an index_factory string"
            )
        shape = sorted(set(params) & set(SHAPE_PARAMS))
        if shape:
            raise BadRequest(f"{shape} apply to class names; an index_factory string carries its own sizes")
        return index_type, metric, tuning
    template, forced = entry
    values = dict(_DEFAULT_PARAMS)
    values["m"] = _default_pq_m(dimension)
    values.update({k: v for k, v in params.items() if k in SHAPE_PARAMS})
    if forced is not None and metric != forced:
        raise BadRequest(f"{index_type} always uses metric {forced}")
    if template.startswith("HNSW"):
        tuning = {**HNSW_CLASS_DEFAULTS, **tuning}
    return template.format(**values), metric, tuning


def _default_pq_m(d: int) -> int:
    for m in (64, 32, 16, 8, 4, 2, 1):
        if d % m == 0 and d // m >= 2:
            return m
    return 1


class NamedIndex:
    """One named index (see module doc).  All public methods take the right lock."""

    def __init__(
        self,
        store: NamedIndexStore,
        definition: Definition,
        directory: Path,
        index: Any,
        registry: Registry,
        wal: WriteAheadLog,
    ) -> None:
        self.store = store
        self.definition = definition
        self.directory = directory
        self.index = index
        self.registry = registry
        self.wal = wal
        self.lock = RWLock()
        self.dropped = False
        self.gone = "was dropped"
        self._touched = False  # set by a write once it has changed the index (see write)
        self.last_snapshot = time.monotonic()
        self._snapshot_lock = threading.Lock()
        self.faiss = store.faiss

    @property
    def name(self) -> str:
        return self.definition.name

    def check_alive(self) -> None:
        if self.dropped:
            raise NotFound(f"named index '{self.name}' {self.gone}")

    # --- reads ------------------------------------------------------------------------
    def reading(self) -> _Reading:
        """``with named.reading() as index:`` the index, under the read lock."""
        return _Reading(self)

    def info(self) -> dict[str, Any]:
        with self.reading() as index:
            return {
                **self.definition.as_dict(),
                "type": type(self.faiss.downcast_index(index)).__name__,
                "ntotal": int(index.ntotal),
                "is_trained": bool(index.is_trained),
                "size_bytes": self.disk_bytes(),
                "wal_bytes": self.wal.bytes_since_snapshot,
            }

    def disk_bytes(self) -> int:
        total = 0
        for p in self.directory.iterdir():
            with contextlib.suppress(OSError):
                total += p.stat().st_size
        return total

    # --- writes -----------------------------------------------------------------------
    def write(
        self, header: dict[str, Any], blob: bytes | memoryview = b"", check: Callable[[], None] | None = None
    ) -> Any:
        """Apply one mutation and log it durably; the caller's answer waits for both.

        Readers are kept out until the record is on disk, so nobody sees a change
        that a crash could still take back.  A change FAISS refuses is not logged.
        If the log cannot be written (disk full, read-only), the in-memory index is
        thrown away and reloaded from disk on next use: it then holds exactly what
        was acknowledged.  So is an index that a failed change may have left half
        changed (out of memory, or a failure after an upsert removed the vectors it
        replaces): the caller's error then holds, nothing was applied."""
        quota = self.store.quota_lock if check is not None and self.store.max_vectors else contextlib.nullcontext()
        with quota, self.lock.write():  # always in this order: quota, then the index
            self.check_alive()
            if check is not None:
                check()
            self._touched = False
            try:
                result = self.apply(header, memoryview(blob))
            except BaseException as exc:
                if isinstance(exc, MemoryError) or self._touched:
                    self.store.discard(self, "was reloaded after a change that failed halfway; open it again")
                    log.error(
                        "named index %s: %s failed halfway (%r); reloaded from disk", self.name, header.get("op"), exc
                    )
                raise
            try:
                self.wal.append(header, blob)
            except OSError as exc:
                self.store.discard(self, "was reloaded after a storage error; open it again")
                log.error("named index %s: write-ahead log append failed: %s", self.name, exc)
                raise StorageError(
                    f"named index '{self.name}': the change could not be made durable ({exc.strerror or exc}); "
                    "nothing was changed"
                ) from None
            return result

    def apply(self, header: dict[str, Any], blob: memoryview) -> Any:
        """Apply one logged mutation (live, and again on replay)."""
        op = header.get("op")
        d = self.definition.dimension
        if op == "upsert":
            n = int(header["n"])
            ids = np.frombuffer(blob, dtype="<i8", count=n).astype(np.int64)
            x = np.frombuffer(blob, dtype="<f4", offset=8 * n, count=n * d).reshape(n, d)
            labels, metas = header["labels"], header["meta"]
            present = [int(i) for i in ids if int(i) in self.registry]
            if present:
                self._remove(np.array(present, dtype=np.int64))
            self.index.add_with_ids(np.ascontiguousarray(x, dtype=np.float32), ids)
            for i, ident in enumerate(ids.tolist()):
                self.registry.put(ident, labels[i], metas[i])
            return n
        if op == "delete":
            ids = np.frombuffer(blob, dtype="<i8").astype(np.int64)
            return self._remove(ids)
        if op == "train":
            x = np.frombuffer(blob, dtype="<f4").reshape(-1, d)
            self.index.train(np.ascontiguousarray(x))
            return None
        if op == "reset":
            self.index.reset()
            self.registry.clear()
            return None
        if op in ("call", "setattr"):
            return self.store.apply_generic(self, header, blob)
        raise ValueError(f"unknown log record {op!r}")

    def _remove(self, ids: np.ndarray) -> int:
        ids = np.unique(ids[np.isin(ids, self.registry.ids())]) if len(self.registry) else ids[:0]
        if not len(ids):
            return 0
        self._touched = True  # from here on a failure leaves the index half changed
        try:
            removed = int(self.index.remove_ids(ids))
        except RuntimeError as exc:
            if "not implemented" not in str(exc):
                raise
            removed = self._rebuild_without(ids)
        for ident in ids.tolist():
            self.registry.discard(ident)
        return removed

    def _rebuild_without(self, ids: np.ndarray) -> int:
        """Remove by rebuilding, for index types without remove_ids (HNSW, NSG)."""
        keep = self.registry.ids()
        keep = keep[~np.isin(keep, ids)]
        started = time.monotonic()
        x = self.index.reconstruct_batch(keep) if len(keep) else None
        self.index.reset()
        if x is not None:
            self.index.add_with_ids(x, keep)
        log.info(
            "named index %s: rebuilt without %d vectors (%d kept) in %.2fs",
            self.name,
            len(ids),
            len(keep),
            time.monotonic() - started,
        )
        return len(ids)

    # --- persistence ------------------------------------------------------------------
    def snapshot(self, force: bool = False) -> bool:
        """Write a snapshot and drop the log it covers; False when nothing changed.

        Serializing is a read: it runs under the read lock, so searches go on while
        it runs; changes wait (every change and its log record are made under the
        write lock, so the snapshot and the log position it covers agree)."""
        with self._snapshot_lock:
            with self.lock.read():
                if self.dropped or (not force and self.wal.bytes_since_snapshot == 0):
                    return False
                started = time.monotonic()
                blob = self.faiss.serialize_index(self.index)
                rows = self.registry.dump()
                seq = self.wal.rotate_after_snapshot()
            state = {"version": 1, "seq": seq, "definition": self.definition.as_dict(), "registry": rows}
            write_snapshot(self.directory / "snapshot.bin", state, memoryview(blob), fsync=self.store.fsync)
            self.wal.drop_through(seq)
            self.last_snapshot = time.monotonic()
            log.info(
                "named index %s: snapshot at seq %d, %d vectors, %.1f MiB in %.2fs",
                self.name,
                seq,
                len(rows),
                blob.nbytes / 2**20,
                time.monotonic() - started,
            )
            return True

    def close(self) -> None:
        self.wal.close()


class NamedIndexStore:
    """The named indexes of one tenant (one directory), loaded on first use."""

    def __init__(
        self,
        faiss_module: Any,
        directory: Path,
        apply_generic: Callable[[NamedIndex, dict[str, Any], memoryview], Any],
        fsync: bool = True,
        snapshot_wal_mb: float = 256.0,
        snapshot_interval: float = 300.0,
        max_indexes: int = 0,
        max_vectors: int = 0,
    ) -> None:
        self.max_indexes = max_indexes
        self.max_vectors = max_vectors
        self.faiss = faiss_module
        self.directory = directory
        self.apply_generic = apply_generic
        self.fsync = fsync
        self.snapshot_wal_bytes = int(snapshot_wal_mb * 2**20)
        self.snapshot_interval = snapshot_interval
        self._loaded: dict[str, NamedIndex] = {}
        self._lock = threading.Lock()
        # Held around a quota-checked write (check, apply, log), so that adds to two
        # indexes at once cannot both pass the tenant's vector limit.
        self.quota_lock = threading.Lock()
        self._loading: dict[str, threading.Lock] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # --- catalog ----------------------------------------------------------------------
    def _dir(self, name: Any) -> Path:
        if type(name) is not str or not INDEX_NAME.match(name):
            raise BadRequest("index names are 1-128 letters, digits, '.', '_' or '-', starting with a letter or digit")
        return self.directory / name

    def names(self) -> list[str]:
        if not self.directory.is_dir():
            return []
        return sorted(
            p.name for p in self.directory.iterdir() if INDEX_NAME.match(p.name) and (p / "snapshot.bin").exists()
        )

    def create(
        self, name: Any, dimension: Any, index_type: Any = "Flat", metric: Any = "L2", params: Any = None
    ) -> NamedIndex:
        path = self._dir(name)
        if type(dimension) is not int or not 0 < dimension <= MAX_DIMENSION:
            raise BadRequest(f"dimension must be an integer from 1 to {MAX_DIMENSION}")
        if type(metric) is not str or metric.upper() not in ("L2", "IP"):
            raise BadRequest("metric must be 'L2' or 'IP'")
        metric = metric.upper()
        if self.max_indexes and len(self.names()) >= self.max_indexes:
            raise LimitExceeded(f"the tenant already has {self.max_indexes} named indexes (its limit)")
        factory, metric, tuning = factory_string(index_type, dimension, metric, params)
        index = self._build(dimension, factory, metric, tuning)
        definition = Definition(name, dimension, str(index_type), factory, metric)
        self.directory.mkdir(parents=True, exist_ok=True)
        with self._lock:
            try:
                path.mkdir()
            except FileExistsError:
                raise Conflict(f"a named index '{name}' already exists") from None
        try:
            state = {"version": 1, "seq": 0, "definition": definition.as_dict(), "registry": []}
            write_snapshot(path / "snapshot.bin", state, memoryview(self.faiss.serialize_index(index)), self.fsync)
            wal = WriteAheadLog(path, self.fsync)
            wal.open()
        except BaseException:
            shutil.rmtree(path, ignore_errors=True)
            raise
        named = NamedIndex(self, definition, path, index, Registry(), wal)
        with self._lock:
            self._loaded[name] = named
        log.info("named index %s created: d=%d %s metric=%s", name, dimension, factory, metric)
        return named

    def _build(self, d: int, factory: str, metric: str, tuning: dict[str, int]) -> Any:
        faiss = self.faiss
        metric_type = faiss.METRIC_L2 if metric == "L2" else faiss.METRIC_INNER_PRODUCT
        try:
            check_factory(factory)
            index = faiss.index_factory(d, factory, metric_type)
        except (RuntimeError, ValueError, TypeError) as exc:
            raise BadRequest(f"index_factory({d}, {factory!r}) failed: {_first_line(exc)}") from None
        top = faiss.downcast_index(index)
        if isinstance(top, faiss.IndexBinary):
            raise BadRequest("binary indexes cannot be named indexes")
        ivf = faiss.try_extract_index_ivf(index)
        if isinstance(top, faiss.IndexIDMap):
            pass
        elif ivf is not None and isinstance(top, (faiss.IndexIVF, faiss.IndexPreTransform)):
            ivf.set_direct_map_type(faiss.DirectMap.Hashtable)
        else:
            index = faiss.index_factory(d, "IDMap2," + factory, metric_type)
        self._tune(index, tuning)
        return index

    def _tune(self, index: Any, tuning: dict[str, int]) -> None:
        faiss = self.faiss
        inner = faiss.downcast_index(index)
        while isinstance(inner, (faiss.IndexIDMap, faiss.IndexPreTransform)):
            inner = faiss.downcast_index(inner.index)
        for key, value in tuning.items():
            if key in ("efConstruction", "efSearch") and isinstance(inner, faiss.IndexHNSW):
                setattr(inner.hnsw, key, value)
            elif key == "nprobe" and isinstance(inner, faiss.IndexIVF):
                inner.nprobe = value
            else:
                raise BadRequest(f"index parameter '{key}' does not apply to {type(inner).__name__}")

    def open(self, name: Any) -> NamedIndex:
        named = self._loaded.get(name) if type(name) is str else None
        if named is not None:
            return named
        path = self._dir(name)
        with self._lock:
            loading = self._loading.setdefault(name, threading.Lock())
        with loading:
            named = self._loaded.get(name)
            if named is None:
                if not (path / "snapshot.bin").exists():
                    raise NotFound(f"no named index '{name}'")
                named = self._load(name, path)
                with self._lock:
                    self._loaded[name] = named
        return named

    def _load(self, name: str, path: Path) -> NamedIndex:
        started = time.monotonic()
        try:
            state, blob = read_snapshot(path / "snapshot.bin")
        except (SnapshotError, OSError, ValueError) as exc:
            log.error("named index %s: cannot read its snapshot: %s", name, exc)
            raise StorageError(f"named index '{name}' cannot be loaded: its snapshot is damaged") from None
        d = state["definition"]
        definition = Definition(d["name"], int(d["dimension"]), d["index_type"], d["factory"], d["metric"])
        index = self.faiss.deserialize_index(np.frombuffer(blob, dtype=np.uint8))
        wal = WriteAheadLog(path, self.fsync)
        named = NamedIndex(self, definition, path, index, Registry.load(state["registry"]), wal)
        replayed = skipped = 0
        for record in wal.replay(int(state["seq"])):
            try:
                named.apply(record.header, record.blob)
                replayed += 1
            except Exception as exc:
                skipped += 1
                log.warning("named index %s: log record %d failed again on replay, skipped: %s", name, record.seq, exc)
        try:
            wal.open()
        except OSError as exc:
            # A read-only or full data dir: the index serves reads; changes get a
            # storage error (507) until the directory takes writes again.
            log.error("named index %s: cannot open its write-ahead log (%s); serving it read-only", name, exc)
        log.info(
            "named index %s loaded: %d vectors, %d log records replayed (%d skipped) in %.2fs",
            name,
            index.ntotal,
            replayed,
            skipped,
            time.monotonic() - started,
        )
        return named

    def drop(self, name: Any) -> None:
        path = self._dir(name)
        trash = path.with_name(f".dropped-{name}-{time.time_ns()}")
        try:
            named = self.open(name)
        except NotFound:
            raise
        except Exception as exc:  # an index that cannot be loaded can still be dropped
            log.warning("named index %s cannot be loaded (%s); dropping its files", name, exc)
            path.rename(trash)
        else:
            with named.lock.write():
                named.dropped = True
                named.close()
                with self._lock:
                    self._loaded.pop(name, None)
                path.rename(trash)
        shutil.rmtree(trash, ignore_errors=True)
        log.info("named index %s dropped", name)

    def check_vectors(self, adding: int) -> None:
        """Refuse ``adding`` more vectors if that would pass the tenant's limit."""
        if not self.max_vectors or adding <= 0:
            return
        total = 0
        for name in self.names():
            try:
                total += int(self.open(name).index.ntotal)
            except NotFound:
                continue
        if total + adding > self.max_vectors:
            raise LimitExceeded(
                f"adding {adding} vectors would pass the tenant's limit of {self.max_vectors} ({total} stored)"
            )

    def summary(self) -> dict[str, int]:
        """For metrics: named indexes on disk; vectors and unsnapshotted log bytes of the loaded ones."""
        loaded = self.loaded()
        return {
            "indexes": len(self.names()),
            "vectors": sum(int(n.index.ntotal) for n in loaded),
            "wal_bytes": sum(n.wal.bytes_since_snapshot for n in loaded),
        }

    def discard(self, named: NamedIndex, why: str) -> None:
        """Forget an in-memory index (its files stay); the next open reloads it."""
        named.dropped = True
        named.gone = why
        named.close()
        with self._lock:
            if self._loaded.get(named.name) is named:
                del self._loaded[named.name]

    def loaded(self) -> list[NamedIndex]:
        with self._lock:
            return list(self._loaded.values())

    # --- background snapshots ----------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._snapshot_loop, name="snapshots", daemon=True)
        self._thread.start()

    def _snapshot_loop(self) -> None:
        while not self._stop.wait(1.0):
            now = time.monotonic()
            for named in self.loaded():
                pending = named.wal.bytes_since_snapshot
                due = pending and now - named.last_snapshot > self.snapshot_interval
                if pending >= self.snapshot_wal_bytes or due:
                    try:
                        named.snapshot()
                    except Exception as exc:  # a full disk must not stop the worker
                        log.error("named index %s: snapshot failed: %s", named.name, exc)

    def close(self, snapshot: bool = True) -> None:
        """Stop the snapshot thread; snapshot what changed (shutdown path)."""
        self._stop.set()
        for named in self.loaded():
            if snapshot:
                try:
                    named.snapshot()
                except Exception as exc:
                    log.error("named index %s: final snapshot failed: %s", named.name, exc)
            named.close()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[-1] if text else type(exc).__name__

"""The RPyC service a tenant worker runs for one client session.

Over RPyC proper (``_rpyc_getattr`` refuses every other name) the service exposes
three cold operations:

``hello``       server and faiss versions
``namespace``   the allow-listed faiss names (see :mod:`.reflection`)
``describe``    methods and properties of a class, for the client's proxy classes

and over the transport's brine-free fast path (``fast_operation``) five hot ones:

``new``         construct a faiss class: ``faiss.IndexFlatL2(d)``
``function``    call a module function: ``faiss.index_factory(d, "IVF64,Flat")``
``call``        call a method on a server object: ``index.search(x, k)``
``getattr`` / ``setattr``   ``index.nprobe``, ``index.nprobe = 16``

Every argument and result goes through the :class:`~.reflection.Reflection` codec.
In-place semantics are kept: an array argument that the call wrote into (the ``x``
of ``normalize_L2(x)``, the ``D``/``I`` of ``search(x, k, D=D, I=I)``) is sent back
and the client copies it into the caller's array.  Arrays that faiss only reads
(the ``x`` of ``add``, ``search``, ``train``, ...) are not compared or copied.

Each call also applies the worker's OpenMP policy (:class:`ThreadPolicy`).
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from faiss_proxy import _wire as w

from .reflection import Handle, Reflection, check_attribute

__all__ = ["FaissService", "ThreadPolicy", "SessionStats", "READ_ONLY_INPUT_METHODS"]

#: Methods whose positional array arguments faiss only reads (``const float* x`` in
#: C++).  Their positional arrays are not checked for writes; keyword arrays are.
READ_ONLY_INPUT_METHODS = frozenset(
    {
        "add",
        "add_with_ids",
        "train",
        "search",
        "range_search",
        "assign",
        "remove_ids",
        "update_vectors",
        "search_and_reconstruct",
        "sa_encode",
        "compute_residual_n",
        "knn",
        "pairwise_distances",
        "index_factory",
    }
)


class ThreadPolicy:
    """How many OpenMP threads a call gets.

    On a small machine, OpenMP's default (all cores, busy-waiting) made single-query
    searches 10-100x slower under load.  So a call whose largest array argument
    has fewer than ``min_rows`` rows runs on one thread, and a batch gets
    ``max_threads``.  ``omp_set_num_threads(n)`` from the tenant changes
    ``max_threads`` for that tenant's worker only.  libgomp keeps the thread
    count per calling thread, so the policy is applied on the serving thread right
    before each call.
    """

    def __init__(self, omp_set: Callable[[int], None], max_threads: int, min_rows: int) -> None:
        self._omp_set = omp_set
        self.max_threads = max(1, max_threads)
        self.min_rows = max(1, min_rows)
        self._local = threading.local()

    def apply(self, arrays: list[np.ndarray]) -> None:
        rows = 0
        for a in arrays:
            if a.ndim and a.shape[0] > rows:
                rows = a.shape[0]
        wanted = self.max_threads if rows >= self.min_rows else 1
        if getattr(self._local, "threads", None) != wanted:
            self._omp_set(wanted)
            self._local.threads = wanted


@dataclass
class SessionStats:
    calls: int = 0
    errors: int = 0
    started: float = field(default_factory=time.monotonic)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def count(self, ok: bool) -> None:
        with self.lock:
            self.calls += 1
            if not ok:
                self.errors += 1


def _builtin_exception(exc: Exception) -> Exception:
    """The exception as the nearest builtin type, so any client can rebuild it.

    (numpy's ``_ArrayMemoryError`` becomes ``MemoryError`` with numpy's message;
    faiss's own errors already are ``RuntimeError``/``AssertionError``/...)"""
    if type(exc).__module__ == "builtins":
        return exc
    for base in type(exc).__mro__[1:]:
        if base.__module__ == "builtins" and issubclass(base, Exception):
            return base(str(exc))
    return RuntimeError(str(exc))


def _operation(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Count the call in the session's stats and make its exception builtin."""

    @functools.wraps(fn)
    def wrapper(self: FaissService, *args: Any) -> Any:
        try:
            result = fn(self, *args)
        except Exception as exc:
            self.stats.count(False)
            converted = _builtin_exception(exc)
            if converted is exc:
                raise
            raise converted from None
        self.stats.count(True)
        return result

    return wrapper


#: What every hot operation returns: a JSON-able tree, its buffers, its object refs.
Reply = tuple[Any, tuple[Any, ...], tuple[Any, ...]]

#: Operations over RPyC proper (cold path) and over the fast path (hot).
_EXPOSED = frozenset({"hello", "namespace", "describe"})
_FAST = frozenset({"new", "function", "call", "getattr", "setattr"})


class FaissService:
    """One client session's view of the tenant's faiss (see module doc)."""

    def __init__(self, reflection: Reflection, policy: ThreadPolicy, version: str) -> None:
        self.reflection = reflection
        self.policy = policy
        self.version = version
        self.stats = SessionStats()
        self._fast_ops: dict[str, Callable[..., Reply]] = {op: getattr(self, "op_" + op) for op in _FAST}

    # rpyc protocol hooks ------------------------------------------------------------
    def on_connect(self, conn: Any) -> None:
        pass

    def on_disconnect(self, conn: Any) -> None:
        pass

    def _rpyc_getattr(self, name: str) -> Any:
        if name in _EXPOSED:
            return getattr(self, "exposed_" + name)
        raise AttributeError("access denied")

    def _rpyc_setattr(self, name: str, value: Any) -> None:
        raise AttributeError("access denied")

    def _rpyc_delattr(self, name: str) -> None:
        raise AttributeError("access denied")

    # exposed operations ---------------------------------------------------------------
    def exposed_hello(self) -> tuple[Any, ...]:
        return ("faiss-proxy", self.version, "faiss", str(self.reflection.faiss.__version__))

    @_operation
    def exposed_namespace(self) -> tuple[tuple[Any, ...], ...]:
        return self.reflection.namespace()

    @_operation
    def exposed_describe(self, name: Any) -> tuple[Any, ...]:
        return self.reflection.describe(self.reflection.class_by_name(name))

    # hot operations (brine-free fast path, see faiss_proxy._transport) ----------------
    def fast_operation(self, op: Any) -> Callable[..., Reply]:
        handler = self._fast_ops.get(op) if type(op) is str else None
        if handler is None:
            raise AttributeError("access denied")
        return handler

    @_operation
    def op_new(self, target: Any, name: Any, tree: Any, buffers: Any, refs: Any) -> Reply:
        cls = self.reflection.class_by_name(name)
        return self._invoke(cls, name, tree, buffers, refs, keep=())

    @_operation
    def op_function(self, target: Any, name: Any, tree: Any, buffers: Any, refs: Any) -> Reply:
        fn = self.reflection.function(name)
        if name == "omp_set_num_threads":
            return self._omp_set_num_threads(tree)
        if name == "omp_get_max_threads":
            return [self.policy.max_threads, []], (), ()
        return self._invoke(fn, name, tree, buffers, refs, keep=())

    @_operation
    def op_call(self, target: Any, name: Any, tree: Any, buffers: Any, refs: Any) -> Reply:
        obj = self._unwrap(target)
        method = getattr(obj, check_attribute(name))
        if not callable(method):
            raise TypeError(f"'{type(method).__name__}' object is not callable")
        return self._invoke(method, name, tree, buffers, refs, keep=(obj,))

    @_operation
    def op_getattr(self, target: Any, name: Any, tree: Any, buffers: Any, refs: Any) -> Reply:
        obj = self._unwrap(target)
        value = getattr(obj, check_attribute(name))
        if callable(value) and not isinstance(value, np.ndarray) and not _is_faiss_object(value):
            return [[w.MTH, name], []], (), ()
        out = w.Packer()
        node = self.reflection.encode(value, out, keep=(obj,))
        return out.message([node, []])

    @_operation
    def op_setattr(self, target: Any, name: Any, tree: Any, buffers: Any, refs: Any) -> Reply:
        obj = self._unwrap(target)
        check_attribute(name)
        cls_attr = getattr(type(obj), name, None)
        if not isinstance(cls_attr, property) and name not in getattr(obj, "__dict__", {}):
            raise AttributeError(f"'{type(obj).__name__}' object has no attribute '{name}'")
        _check_message(buffers, refs)
        decoded = self.reflection.decode(tree, buffers, refs, [])
        setattr(obj, name, decoded)
        if _is_faiss_object(decoded):
            # faiss's own convention for keeping referenced C++ objects alive.
            kept = getattr(obj, "referenced_objects", None)
            if isinstance(kept, list):
                kept.append(decoded)
            else:
                obj.referenced_objects = [decoded]
        return [None, []], (), ()

    # helpers ---------------------------------------------------------------------------
    def _unwrap(self, handle: Any) -> Any:
        if not isinstance(handle, Handle):
            raise TypeError("not a remote faiss object")
        return handle.obj

    def _omp_set_num_threads(self, args: Any) -> Reply:
        """Sets the worker's batch thread count (this tenant's process only)."""
        if type(args) is not list or len(args) != 2 or len(args[0]) != 1 or type(args[0][0]) is not int:
            raise TypeError("omp_set_num_threads(num_threads: int)")
        self.policy.max_threads = max(1, args[0][0])
        return [None, []], (), ()

    def _invoke(
        self, fn: Callable[..., Any], name: str, call: Any, buffers: Any, refs: Any, keep: tuple[Any, ...]
    ) -> Reply:
        _check_message(buffers, refs)
        if type(call) is not list or len(call) != 2 or type(call[0]) is not list or type(call[1]) is not list:
            raise TypeError("malformed call")
        r = self.reflection
        arrays: list[np.ndarray] = []
        pos = [r.decode(a, buffers, refs, arrays) for a in call[0]]
        kw: dict[str, Any] = {}
        for pair in call[1]:
            if type(pair) is not list or len(pair) != 2 or type(pair[0]) is not str:
                raise TypeError("malformed keyword arguments")
            kw[pair[0]] = r.decode(pair[1], buffers, refs, arrays)

        # Arrays the call might write into: snapshot them to detect writes.
        watch: list[tuple[int | str, np.ndarray, np.ndarray]] = []
        seen: list[tuple[int, int | str]] = []
        if arrays:
            read_only = name in READ_ONLY_INPUT_METHODS
            for i, v in enumerate(pos):
                if type(v) is np.ndarray:
                    seen.append((id(v), i))
                    if not read_only:
                        watch.append((i, v, v.copy()))
            for k, v in kw.items():
                if type(v) is np.ndarray:
                    seen.append((id(v), k))
                    watch.append((k, v, v.copy()))

        self.policy.apply(arrays)
        result = fn(*pos, **kw)

        object_args = tuple(v for v in pos if _is_faiss_object(v))
        if kw:
            object_args += tuple(v for v in kw.values() if _is_faiss_object(v))
        out = w.Packer()
        node = r.encode(result, out, keep=(*keep, *object_args), seen=seen)
        writebacks = [[where, out.array(array)] for where, array, before in watch if not _same(array, before)]
        return out.message([node, writebacks])


def _check_message(buffers: Any, refs: Any) -> None:
    if type(buffers) is not tuple or type(refs) is not tuple:
        raise TypeError("malformed call")


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    if a.nbytes == 0:
        return True
    if a.nbytes % 8 == 0:
        return bool(np.array_equal(a.reshape(-1).view(np.uint64), b.reshape(-1).view(np.uint64)))
    return bool(np.array_equal(a.reshape(-1).view(np.uint8), b.reshape(-1).view(np.uint8)))


_NOT_FAISS = (np.ndarray, int, float, str, bytes, bool, type(None), tuple, list, dict)


def _is_faiss_object(value: Any) -> bool:
    if isinstance(value, _NOT_FAISS):
        return False
    module = getattr(type(value), "__module__", "") or ""
    return module == "faiss" or module.startswith("faiss.")

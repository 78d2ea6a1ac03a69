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

import contextlib
import functools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from faiss_proxy import _wire as w
from faiss_proxy._transport import FILLED, next_wire_number

from .errors import ProxyError, TooManyRequests
from .limits import TokenBucket
from .metrics import OperationStats
from .named import PATH_FUNCTIONS, READ_FUNCTIONS, READ_METHODS, NamedIndex, NamedIndexStore
from .reflection import Handle, Reflection, check_attribute, check_built, check_constructor, checked_method

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
        self.apply_rows(rows)

    def apply_rows(self, rows: int) -> None:
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
    if isinstance(exc, ProxyError):
        return exc.as_builtin()
    for base in type(exc).__mro__[1:]:
        if base.__module__ == "builtins" and issubclass(base, Exception):
            return base(str(exc))
    return RuntimeError(str(exc))


def _check_rate(service: FaissService) -> None:
    if service.rate is not None:
        wait = service.rate.take()
        if wait > 0:
            raise TooManyRequests(f"this tenant is over its request rate; retry in {wait:.2f} s")


def _failed(service: FaissService, kind: str, name: Any, started: float, exc: Exception) -> Exception:
    """Count a call that raised ``exc``; the exception to send instead (builtin)."""
    service.stats.count(False)
    if service.op_stats is not None:
        known = type(name) is str and name in service.reflection.known_names
        service.op_stats.record(f"{kind}.{name}" if known else kind, time.perf_counter() - started, False)
    return _builtin_exception(exc)


def _operation(fn: Callable[..., Any], kind: str = "") -> Callable[..., Any]:
    """Count and time the call (session stats, worker metrics); make its exception builtin."""
    kind = kind or fn.__name__.removeprefix("op_").removeprefix("exposed_")
    named_ops = kind in ("call", "function", "named")

    @functools.wraps(fn)
    def wrapper(self: FaissService, *args: Any) -> Any:
        started = time.perf_counter()
        if self.op_stats is not None:
            self.op_stats.begin()
        try:
            _check_rate(self)
            result = fn(self, *args)
        except Exception as exc:
            name = args[1] if named_ops and len(args) > 1 else None
            converted = _failed(self, kind, name, started, exc)
            if converted is exc:
                raise
            raise converted from None
        # The name is in the label only for calls that worked: it is then a
        # real faiss method or function (a bounded set), never a client's string.
        label = f"{kind}.{args[1]}" if named_ops and type(args[1]) is str else kind
        self._answered.call = (label, time.perf_counter() - started)  # counted by settle()
        return result

    return wrapper


#: What every hot operation returns: a JSON-able tree, its buffers, its object refs.
Reply = tuple[Any, tuple[Any, ...], tuple[Any, ...]]

#: Operations over RPyC proper (cold path) and over the fast path (hot).
_EXPOSED = frozenset({"hello", "namespace", "describe"})
_FAST = frozenset({"new", "function", "call", "getattr", "setattr", "named"})


class FaissService:
    """One client session's view of the tenant's faiss (see module doc)."""

    def __init__(
        self,
        reflection: Reflection,
        policy: ThreadPolicy,
        version: str,
        store: NamedIndexStore | None = None,
        read_only: bool = False,
        op_stats: OperationStats | None = None,
        rate: TokenBucket | None = None,
    ) -> None:
        self.op_stats = op_stats
        self.rate = rate
        self.reflection = reflection
        self.policy = policy
        self.version = version
        self.store = store
        # A read-only key may search and read named indexes but not change them
        # (objects private to the session are the caller's own to change).
        self.read_only = read_only
        self.stats = SessionStats()
        self._fast_ops: dict[str, Callable[..., Reply]] = {op: getattr(self, "op_" + op) for op in _FAST}
        self.wire_number = next_wire_number()  # names the session's root to the client
        self._answered = threading.local()  # per session thread: the call to count in settle()

    def __repr__(self) -> str:
        return f"<faiss-proxy session #{self.wire_number}>"

    def __hash__(self) -> int:
        return hash(self.wire_number)

    def settle(self, ok: bool = True) -> None:
        """Count the call this thread has just answered.

        The transport calls this once the answer is sent, so the bookkeeping of a
        call that worked (session count, metrics, the in-flight count a graceful
        stop waits on) is not part of the client's wait.  ``ok`` is False when the
        call worked but its result could not be sent, and an error went back
        instead.  Calls that raised are counted at once."""
        done = getattr(self._answered, "call", None)
        if done is None:
            return
        self._answered.call = None
        self.stats.count(ok)
        if self.op_stats is not None:
            self.op_stats.record(done[0], done[1], ok)

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
        if _named_of(refs) is not None:
            raise ValueError(
                f"a named index cannot be passed to faiss.{name}(): it could then change without being logged; "
                "use faiss.clone_index(index) for a private copy"
            )

        def build(*args: Any, **kwargs: Any) -> Any:
            check_constructor(cls, args)
            obj = cls(*args, **kwargs)
            check_built(obj)
            return obj

        return self._invoke(build, name, tree, buffers, refs, keep=())

    @_operation
    def op_function(self, target: Any, name: Any, tree: Any, buffers: Any, refs: Any) -> Reply:
        fn = self.reflection.function(name)
        if name == "omp_set_num_threads":
            return self._omp_set_num_threads(tree)
        if name == "omp_get_max_threads":
            return [self.policy.max_threads, []], (), ()
        origin = _named_of(refs)
        if origin is None:
            return self._invoke(fn, name, tree, buffers, refs, keep=())
        if name not in READ_FUNCTIONS:
            raise ValueError(
                f"a named index cannot be passed to faiss.{name}(): it could then change without being logged; "
                "use faiss.clone_index(index) for a private copy"
            )
        named, path = origin
        with named.reading():
            step = (*path, ("fn", name)) if name in PATH_FUNCTIONS else None
            return self._invoke(fn, name, tree, buffers, refs, keep=(), origin=None if step is None else (named, step))

    @_operation
    def op_call(self, target: Any, name: Any, tree: Any, buffers: Any, refs: Any) -> Reply:
        obj = self._unwrap(target)
        method = checked_method(name, getattr(obj, check_attribute(name)))
        if not callable(method):
            raise TypeError(f"'{type(method).__name__}' object is not callable")
        if target.named is not None:
            return self._named_call(target, name, method, tree, buffers, refs)
        if (
            len(refs) > 1
            and _named_of(tuple(r for r in refs if r is not target)) is not None
            and name not in READ_METHODS
        ):
            raise ValueError(
                f"a named index cannot be passed to {type(obj).__name__}.{name}(): it could then change without "
                "being logged; use faiss.clone_index(index) for a private copy"
            )
        return self._invoke(method, name, tree, buffers, refs, keep=(obj,))

    @_operation
    def op_getattr(self, target: Any, name: Any, tree: Any, buffers: Any, refs: Any) -> Reply:
        obj = self._unwrap(target)
        named: NamedIndex | None = target.named
        with named.reading() if named is not None else _NO_LOCK:
            value = getattr(obj, check_attribute(name))
            if callable(value) and not isinstance(value, np.ndarray) and not _is_faiss_object(value):
                return [[w.MTH, name], []], (), ()
            out = w.Packer()
            origin = None if named is None else (named, (*target.path, ("attr", name)))
            node = self.reflection.encode(value, out, keep=(obj,), origin=origin)
            return out.message([node, []])

    @_operation
    def op_setattr(self, target: Any, name: Any, tree: Any, buffers: Any, refs: Any) -> Reply:
        obj = self._unwrap(target)
        check_attribute(name)
        cls_attr = getattr(type(obj), name, None)
        if not isinstance(cls_attr, property) and name not in getattr(obj, "__dict__", {}):
            raise AttributeError(f"'{type(obj).__name__}' object has no attribute '{name}'")
        _check_message(buffers, refs)
        if target.named is not None:
            named: NamedIndex = target.named
            self._check_writable(named, f"setting {name}")
            _refuse_objects(named, f"setting {name}", refs, target)
            header, blob = _log_record("setattr", target.path, name, tree, buffers)
            named.write(header, blob)
            return [None, []], (), ()
        if _named_of(tuple(r for r in refs if r is not target)) is not None:
            raise ValueError("a named index cannot be stored inside another object; use faiss.clone_index(index)")
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

    @_operation
    def op_named(self, target: Any, name: Any, tree: Any, buffers: Any, refs: Any) -> Reply:
        """``create_index`` / ``open_index`` / ``list_indexes`` / ``drop_index``."""
        if self.store is None:
            raise RuntimeError("named indexes are not available in this worker")
        _check_message(buffers, refs)
        if type(tree) is not list or len(tree) != 2 or type(tree[0]) is not list or type(tree[1]) is not list:
            raise TypeError("malformed call")
        args = [self.reflection.decode(a, buffers, refs, []) for a in tree[0]]
        kwargs = {str(k): self.reflection.decode(v, buffers, refs, []) for k, v in tree[1]}
        store = self.store
        if self.read_only and name in ("create", "drop"):
            raise PermissionError(f"this API key is read-only: {name}_index changes data")
        try:
            if name == "create":
                named = store.create(*args, **kwargs)
            elif name == "open":
                named = store.open(*args, **kwargs)
            elif name == "list":
                infos = [store.open(n).info() for n in store.names()]
                out = w.Packer()
                return out.message([self.reflection.encode(infos, out, keep=()), []])
            elif name == "drop":
                store.drop(*args, **kwargs)
                return [None, []], (), ()
            else:
                raise AttributeError("access denied")
        except ProxyError as exc:
            raise exc.as_builtin() from None
        out = w.Packer()
        node = self.reflection.encode(named.index, out, keep=(), origin=(named, ()))
        return out.message([node, []])

    # plans: a repeated call decoded once (see faiss_proxy._transport.ServerConnection)
    def plan(self, op: Any, name: Any, target: Any, tree: Any, buffers: Any, refs: Any) -> CallPlan | None:
        """A plan for a method call that worked and may come again, or None.

        Planned are calls on an object of the session's own, or reads of a named
        index (:data:`READ_METHODS`, run under its read lock as :meth:`_named_call`
        runs them; its changes are logged and never planned), whose only object is
        that target, whose arguments are arrays and plain values, and whose arrays
        faiss only reads (:data:`READ_ONLY_INPUT_METHODS`, no keyword arrays): so a
        planned call does exactly what :meth:`op_call` would do for the same
        request, without decoding the request again."""
        if op != "call" or type(target) is not Handle or refs != (target,):
            return None
        if target.named is not None and name not in READ_METHODS:
            return None
        if name not in READ_ONLY_INPUT_METHODS or type(tree) is not list or len(tree) != 2:
            return None
        positional, keywords = tree
        if type(positional) is not list or type(keywords) is not list or type(buffers) is not tuple:
            return None
        args: list[Any] = []
        slots: list[tuple[int, int, np.dtype, tuple[int, ...]]] = []
        rows = 0
        for node in positional:
            if type(node) is list:
                if not node or node[0] != w.ND:
                    return None
                array = w.array_from_buffer(node, buffers)  # validated as op_call would
                slots.append((len(args), node[3], array.dtype, array.shape))
                if array.ndim and array.shape[0] > rows:
                    rows = array.shape[0]
                args.append(None)
            elif type(node) in _JSON_SCALARS:
                args.append(node)
            else:
                return None
        kwargs: dict[str, Any] = {}
        for pair in keywords:
            if type(pair) is not list or len(pair) != 2 or type(pair[0]) is not str:
                return None
            if type(pair[1]) not in _JSON_SCALARS:
                return None
            kwargs[pair[0]] = pair[1]
        if len({index for _, index, _, _ in slots}) != len(slots):
            return None  # one buffer behind two arguments: op_call decodes it twice
        if checked_method(name, _plan) is not _plan:
            return None  # a method whose arguments are checked first (none is read-only)
        sizes = tuple(int(b.nbytes) for b in buffers)
        fillable = not kwargs and _fills_d_and_i(getattr(target.obj, name))
        return CallPlan(self, name, sizes, tuple(args), tuple(slots), kwargs, rows, fillable)

    def _encode_planned(self, plan: CallPlan, obj: Any, result: Any, arrays: list[np.ndarray]) -> Reply:
        """The reply of a planned call whose result is new in shape: encoded the
        general way, and kept in the plan when it is arrays only."""
        out = w.Packer()
        seen = [(id(a), p) for a, (p, _, _, _) in zip(arrays, plan.slots, strict=True)]
        node = self.reflection.encode(result, out, keep=(obj,), seen=seen)
        reply = out.message([node, []])
        results = result if type(result) is tuple else (result,)
        shapes = tuple([(r.dtype, r.shape) if type(r) is np.ndarray else None for r in results])
        if (
            None not in shapes
            and not out.refs
            and len(out.buffers) == len(results)
            and all(type(b) is w.Blob and b.array is r for b, r in zip(out.buffers, results, strict=True))
        ):
            plan.reply = (shapes, w.pack_json([reply[0], []]), type(result) is tuple)
        return reply

    def _named_call(self, target: Handle, name: str, method: Any, tree: Any, buffers: Any, refs: Any) -> Reply:
        named: NamedIndex = target.named
        if name in READ_METHODS:
            with named.reading():
                return self._invoke(method, name, tree, buffers, refs, keep=(target.obj,))
        self._check_writable(named, f"{name}()")
        _refuse_objects(named, f"{name}()", refs, target)
        header, blob = _log_record("call", target.path, name, tree, buffers)
        check = None
        if name in ("add", "add_with_ids") and self.store is not None and self.store.max_vectors:
            store, rows = self.store, _leading_rows(tree)
            check = lambda: store.check_vectors(rows)  # noqa: E731
        try:
            result: Reply = named.write(header, blob, check=check)
        except ProxyError as exc:
            raise exc.as_builtin() from None
        return result

    def apply_logged(self, named: NamedIndex, header: dict[str, Any], blob: memoryview) -> Reply:
        """Apply a logged ``call``/``setattr`` record to ``named`` (live and on replay)."""
        sizes = header["sizes"]
        data = np.frombuffer(bytearray(blob), dtype=np.uint8)  # writable, like received buffers
        buffers, offset = [], 0
        for size in sizes:
            buffers.append(data[offset : offset + size])
            offset += size
        obj = named.index
        for kind, step in header["path"]:
            obj = getattr(obj, check_attribute(step)) if kind == "attr" else self.reflection.function(step)(obj)
        if header["op"] == "setattr":
            setattr(
                obj, check_attribute(header["name"]), self.reflection.decode(header["tree"], tuple(buffers), (), [])
            )
            return [None, []], (), ()
        method_name = check_attribute(header["method"])
        method = getattr(obj, method_name)
        at_root = not header["path"]
        before = int(named.index.ntotal)
        reply, pos, kw = self._invoke(
            method, method_name, header["tree"], tuple(buffers), (), keep=(obj,), with_args=True
        )
        if at_root:
            _sync_registry(named, method_name, before, pos, kw)
        return reply

    # helpers ---------------------------------------------------------------------------
    def _check_writable(self, named: NamedIndex, what: str) -> None:
        if self.read_only:
            raise PermissionError(f"this API key is read-only: {what} would change named index '{named.name}'")

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
        self,
        fn: Callable[..., Any],
        name: str,
        call: Any,
        buffers: Any,
        refs: Any,
        keep: tuple[Any, ...],
        origin: tuple[Any, tuple[Any, ...]] | None = None,
        with_args: bool = False,
    ) -> Any:
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
        node = r.encode(result, out, keep=(*keep, *object_args), seen=seen, origin=origin)
        writebacks = [[where, out.array(array)] for where, array, before in watch if not _same(array, before)]
        reply = out.message([node, writebacks])
        return (reply, pos, kw) if with_args else reply


_NO_LOCK = contextlib.nullcontext()


def _plan() -> None:
    """Stands for a method in :meth:`FaissService.plan`'s question to ``checked_method``."""


_perf_counter = time.perf_counter
_JSON_SCALARS = (type(None), bool, int, float, str)


class CallPlan:
    """A method call of a session, decoded once (:meth:`FaissService.plan`): the
    positional arguments with the arrays' places left open, and the encoded reply
    of the result shapes seen last."""

    __slots__ = ("args", "fillable", "kwargs", "label", "name", "reply", "rows", "service", "sizes", "slots")

    def __init__(
        self,
        service: FaissService,
        name: str,
        sizes: tuple[int, ...],
        args: tuple[Any, ...],
        slots: tuple[tuple[int, int, np.dtype, tuple[int, ...]], ...],
        kwargs: dict[str, Any],
        rows: int,
        fillable: bool = False,
    ) -> None:
        self.service = service
        self.name = name
        self.sizes = sizes
        self.args = args
        self.slots = slots  # (argument position, buffer index, dtype, shape)
        self.kwargs = kwargs
        self.rows = rows
        self.label = f"call.{name}"
        # The method takes the arrays it returns as D= and I= (faiss's search does):
        # then the transport may have it write them into its reply frame.
        self.fillable = fillable
        # The dtypes and shapes of the result arrays seen last, their encoded reply
        # body, and whether the result was a tuple: one value, read once per call.
        self.reply: tuple[tuple[Any, ...] | None, bytes, bool] = (None, b"", False)

    def fills(self) -> tuple[bytes, tuple[tuple[np.dtype, tuple[int, ...]], ...]] | None:
        """The reply body and the dtypes and shapes of the (D, I) arrays this call
        can write into, once a call has shown them; else None."""
        shapes, body, is_tuple = self.reply
        if not self.fillable or not is_tuple or shapes is None or len(shapes) != 2:
            return None
        return body, shapes

    def __call__(self, target: Handle, buffers: tuple[Any, ...], frame: Any = None) -> Any:
        """Answer the call as :meth:`FaissService.op_call` would, counted and timed
        as every operation is (:func:`_operation`, written out: this is the hot
        path): ``(reply body, result arrays)`` when the result has the dtypes and
        shapes of the last one, else the reply, encoded the general way.  With
        ``frame`` (the transport's reply frame, its ``outputs`` of the shapes
        :meth:`fills` gave), faiss writes D and I into it; then the frame is sent
        at once, before anything else, and :data:`FILLED` says so."""
        service = self.service
        started = _perf_counter()
        op_stats = service.op_stats
        if op_stats is not None:
            op_stats.begin()
        try:
            if service.rate is not None:
                _check_rate(service)
            obj = target.obj
            method = getattr(obj, self.name)
            args = list(self.args)
            arrays = []
            for position, index, dtype, shape in self.slots:
                array = np.ndarray(shape, dtype, buffers[index])
                args[position] = array
                arrays.append(array)
            service.policy.apply_rows(self.rows)
            if frame is None:
                kwargs, outputs = self.kwargs, None
            else:
                outputs = frame.outputs
                kwargs = {"D": outputs[0], "I": outputs[1]}
            if target.named is None:
                result = method(*args, **kwargs)
            else:
                with target.named.reading():
                    result = method(*args, **kwargs)
            if outputs is not None and type(result) is tuple and len(result) == 2:
                if result[0] is outputs[0] and result[1] is outputs[1]:
                    # Written where the transport's reply frame holds them: out it goes.
                    frame.send()
                    service._answered.call = (self.label, _perf_counter() - started)
                    return FILLED
            # Arrays of the dtypes and shapes the last call returned: the reply body is known.
            shapes, body, is_tuple = self.reply  # one read: another thread may replace it meanwhile
            if is_tuple and shapes is not None and type(result) is tuple and len(result) == len(shapes):
                for r, known in zip(result, shapes, strict=True):
                    if type(r) is not np.ndarray or r.dtype is not known[0] or r.shape != known[1]:
                        break
                else:
                    reply: Any = (body, result)
                    service._answered.call = (self.label, _perf_counter() - started)
                    return reply
            elif (
                not is_tuple
                and type(result) is np.ndarray
                and shapes
                and result.dtype is shapes[0][0]
                and result.shape == shapes[0][1]
            ):
                service._answered.call = (self.label, _perf_counter() - started)
                return body, (result,)
            reply = service._encode_planned(self, obj, result, arrays)
        except Exception as exc:
            converted = _failed(service, "call", self.name, started, exc)
            if converted is exc:
                raise
            raise converted from None
        service._answered.call = (self.label, _perf_counter() - started)
        return reply


def _fills_d_and_i(method: Any) -> bool:
    """Whether ``method`` takes its result arrays as keyword-only D= and I= to write
    into (faiss's Python search wrappers do)."""
    import inspect

    try:
        parameters = inspect.signature(method).parameters
    except (TypeError, ValueError):
        return False
    return all(key in parameters and parameters[key].kind is inspect.Parameter.KEYWORD_ONLY for key in ("D", "I"))


def _named_of(refs: Any) -> tuple[NamedIndex, tuple[Any, ...]] | None:
    """(named index, path) of the first argument that is part of a named index."""
    if type(refs) is tuple:
        for ref in refs:
            if isinstance(ref, Handle) and ref.named is not None:
                return ref.named, ref.path
    return None


def _refuse_objects(named: NamedIndex, what: str, refs: Any, target: Handle) -> None:
    """Logged changes carry only values (the call's own target is not an argument)."""
    if any(ref is not target for ref in refs):
        raise TypeError(
            f"{what} on named index '{named.name}': faiss objects cannot be arguments of a logged change; "
            "pass arrays and numbers (for example remove_ids(np.array(ids, dtype='int64')))"
        )


def _log_record(op: str, path: tuple[Any, ...], name: str, tree: Any, buffers: Any) -> tuple[dict[str, Any], bytes]:
    key = "name" if op == "setattr" else "method"
    header = {"op": op, "path": [list(step) for step in path], key: name, "tree": tree}
    header["sizes"] = [int(b.nbytes) for b in buffers]
    blob = b"".join(b.tobytes() for b in buffers)
    return header, blob


def _leading_rows(tree: Any) -> int:
    """Rows of a call's first positional array (the ``x`` of ``add(x)``), from its header."""
    try:
        node = tree[0][0]
        if type(node) is list and node[0] == w.ND and node[2]:
            return int(node[2][0])
    except (IndexError, TypeError, ValueError):
        pass
    return 0


def _sync_registry(named: NamedIndex, method: str, before: int, pos: list[Any], kw: dict[str, Any]) -> None:
    """Keep the registry's ids in step with Python-side changes of the index."""
    registry = named.registry
    if method == "add":
        registry.put_plain(range(before, int(named.index.ntotal)))
    elif method == "add_with_ids":
        ids = pos[1] if len(pos) > 1 else kw.get("ids")
        if isinstance(ids, np.ndarray):
            registry.put_plain(ids.reshape(-1).tolist())
    elif method == "remove_ids":
        ids = pos[0] if pos else kw.get("x", kw.get("sel"))
        if isinstance(ids, np.ndarray):
            for ident in ids.reshape(-1).tolist():
                registry.discard(int(ident))
    elif method == "reset":
        registry.clear()


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

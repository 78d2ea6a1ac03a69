"""The reflection boundary: which parts of the installed ``faiss`` a tenant may touch.

faiss-proxy does not re-implement index types.  It *reflects* the real ``faiss``
module, and this module decides what of it is visible.  The raw module is not safe
to expose: it holds ``os``, ``subprocess``, ``sys``, ``np``, raw-pointer helpers and
``*_c`` methods taking raw pointers.  So the exposed namespace is an **allow-list
computed from the installed faiss**:

* public classes and functions whose ``__module__`` is faiss's own code, and plain
  numeric/str constants;
* minus everything that gives memory, file-system, process or interpreter access
  (:data:`DENIED_FUNCTIONS`, :func:`denied_class_reason`);
* minus std::vector and other container wrappers: those never cross as objects, they
  are copied out by value as NumPy arrays (``index.codes`` is an array on the client,
  so ``index.codes.clear()`` cannot free memory the index still uses).

Attribute access on reflected objects goes through the same filter
(:func:`check_attribute`): no ``_`` names, no ``*_c``, no ``this``/``thisown``,
no ``get_xb``/``data``.  Results are filtered too (:meth:`Reflection.encode`): a raw
SWIG pointer is refused, whichever method returned it.

Server objects reach the client wrapped in a :class:`Handle`, an opaque box whose
only RPyC-visible behaviour is to be passed back.
"""

from __future__ import annotations

import inspect
import re
import types
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from faiss_proxy import _wire as w
from faiss_proxy._transport import next_wire_number

__all__ = [
    "Reflection",
    "Handle",
    "check_attribute",
    "check_built",
    "check_factory",
    "checked_method",
    "DENIED_FUNCTIONS",
    "ExposureError",
]


class ExposureError(AttributeError):
    """A name or value that the reflection boundary does not expose."""


#: Functions that would give raw memory, file-system or interpreter access, or that
#: only make sense with objects that never cross the boundary.
DENIED_FUNCTIONS: dict[str, str] = {
    "swig_ptr": "raw memory access is refused by design",
    "rev_swig_ptr": "raw memory access is refused by design",
    "memcpy": "raw memory access is refused by design",
    "read_index": "server paths are never used; faiss_proxy.read_index reads the client's file",
    "write_index": "server paths are never used; faiss_proxy.write_index writes the client's file",
    "read_index_binary": "server paths are never used; faiss_proxy.read_index_binary reads locally",
    "write_index_binary": "server paths are never used; faiss_proxy.write_index_binary writes locally",
    "vector_to_array": "std::vector values already arrive as NumPy arrays",
    "vector_float_to_array": "std::vector values already arrive as NumPy arrays",
    "copy_array_to_vector": "std::vector objects are not exposed",
    "copy_array_to_AlignedTable": "AlignedTable objects are not exposed",
    "array_to_AlignedTable": "AlignedTable objects are not exposed",
    "AlignedTable_to_array": "AlignedTable objects are not exposed",
    "add_ref_in_constructor": "faiss internal helper",
    "add_ref_in_function": "faiss internal helper",
    "add_ref_in_method": "faiss internal helper",
    "add_ref_in_method_explicit_own": "faiss internal helper",
    "add_to_referenced_objects": "faiss internal helper",
    "shard_ivf_index_centroids": "writes index files on the server (and takes a printf format)",
    "shard_binary_ivf_index_centroids": "writes index files on the server (and takes a printf format)",
}

_DENIED_FUNCTION_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"^cast_integer_to_.*_ptr$"), "raw memory access is refused by design"),
    (re.compile(r".*_c$"), "raw-pointer entry points are refused; call the method without _c"),
    (re.compile(r"^(read|write)_"), "server paths are never used; files stay on the client"),
    (re.compile(r".*_swigregister$"), "SWIG internals"),
    (re.compile(r"^InterruptCallback"), "process-global interrupt handling is not exposed"),
    (re.compile(r"^downcast_IO"), "I/O objects are not exposed"),
)

_DENIED_CLASS_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r".*Vector(Vector)?$"), "std::vector values travel by value as NumPy arrays"),
    (re.compile(r"^MaybeOwnedVector"), "std::vector values travel by value as NumPy arrays"),
    (re.compile(r"^AlignedTable"), "AlignedTable values are not exposed"),
    (re.compile(r".*IO(Reader|Writer)$"), "I/O objects reach files or raw memory on the server"),
    (re.compile(r".*IOHook$"), "I/O objects reach files on the server"),
    (re.compile(r"^OnDisk"), "on-disk structures reach files on the server"),
    (re.compile(r"^Mmapped|^MaybeOwnedVectorOwner$"), "memory-mapped files are not exposed"),
    (re.compile(r"^PyCallback"), "callbacks into the client are not allowed"),
    (
        re.compile(r".*InterruptCallback$|^TimeoutCallback$|^TimeoutGuard$"),
        "process-global interrupt handling is not exposed",
    ),
    (re.compile(r"^SwigPyIterator$"), "SWIG internals"),
    (re.compile(r"^WorkerThread$"), "server threads are not exposed"),
)

#: Attribute names refused on every object, besides ``_`` names and ``*_c``.
DENIED_ATTRIBUTES = frozenset(
    {
        "this",
        "thisown",
        "get_xb",
        "data",
        "referenced_objects",
        # OperatingPoints: write a text file at a server path
        "all_to_gnuplot",
        "optimal_to_gnuplot",
    }
)

#: Inverted-list records that make faiss open a file named inside the blob:
#: OnDiskInvertedLists ("ilod") maps an arbitrary server path read-write.
_FILE_BACKED_FOURCCS = (b"ilod",)

_CONSTANT_TYPES = (bool, int, float)
_PLAIN = (type(None), bool, int, float, str, bytes, complex)


def denied_function_reason(name: str) -> str | None:
    if name in DENIED_FUNCTIONS:
        return DENIED_FUNCTIONS[name]
    for pattern, reason in _DENIED_FUNCTION_PATTERNS:
        if pattern.match(name):
            return reason
    return None


def denied_class_reason(name: str) -> str | None:
    for pattern, reason in _DENIED_CLASS_PATTERNS:
        if pattern.match(name):
            return reason
    return None


_CHECKED_NAMES: set[str] = set()


def check_attribute(name: Any) -> str:
    """Validate an attribute name a client asked for; return it or raise."""
    if type(name) is str and name in _CHECKED_NAMES:
        return name
    _check_attribute(name)
    if len(_CHECKED_NAMES) < 100_000:
        _CHECKED_NAMES.add(name)
    return name


def _check_attribute(name: Any) -> None:
    if type(name) is not str or not name.isidentifier():
        raise ExposureError("attribute names must be identifiers")
    if name.startswith("_"):
        raise ExposureError(f"'{name}': private and special attributes are not exposed")
    if name.endswith("_c"):
        raise ExposureError(f"'{name}': raw-pointer methods are not exposed; call the method without _c")
    if name in DENIED_ATTRIBUTES:
        raise ExposureError(f"'{name}' is not exposed (raw memory or faiss internals)")


def _is_faiss_code(obj: Any) -> bool:
    module = getattr(obj, "__module__", None)
    return isinstance(module, str) and (module == "faiss" or module.startswith("faiss."))


def _is_swig_pointer(value: Any) -> bool:
    return type(value).__name__ in ("SwigPyObject", "SwigVarLink")


def _checked_deserializer(deserialize: Callable[..., Any]) -> Callable[..., Any]:
    """``deserialize_index`` that refuses blobs which would open server files.

    A serialized IVF index names the type of its inverted lists; an
    ``OnDiskInvertedLists`` record carries a file path that faiss opens and maps
    read-write on load.  The blob is scanned for that record's tag (a false
    positive refuses an upload, it never loads a file), and ``io_flags`` (mmap,
    on-disk directory) do not apply to bytes and are refused."""

    def checked(data: Any, io_flags: int = 0) -> Any:
        if not isinstance(data, np.ndarray) or data.dtype != np.uint8:
            raise TypeError("deserialize_index takes a uint8 NumPy array (as serialize_index returns)")
        if io_flags:
            raise ValueError("io_flags do not apply to a remote deserialize_index")
        raw = np.ascontiguousarray(data).tobytes()
        for tag in _FILE_BACKED_FOURCCS:
            if tag in raw:
                raise ValueError(
                    f"refused: the index data contains a file-backed inverted-lists record ({tag.decode()}); "
                    "on-disk inverted lists would open files on the server"
                )
        index = deserialize(data)
        check_built(index)
        return index

    checked.__name__ = deserialize.__name__
    checked.__doc__ = deserialize.__doc__
    return checked


#: index_factory strings FAISS accepts but that crash or hang the process on first
#: use (found by fuzzing every factory template with sizes 0-3: HNSW1 segfaults on
#: add, PQ2x0 divides by zero in train, NSG1 never finishes building, IVF0, RQ0x2,
#: OPQ2_0, PCAR0, RR0, HNSW2_SQ0 and ZnLattice0x1_0 die in train, add or the factory
#: itself).  No size in a factory string may be 0: a number 0 standing alone (not a
#: digit of 10, 1024, ...) is refused.  Refused with ValueError before anything is built.
_DEGENERATE_FACTORY: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"(?<![0-9.])0+(?![0-9.])"), "sizes (nlist, M, bits, dimensions) must be at least 1"),
    (re.compile(r"HNSW[01](?![0-9])"), "HNSW needs M >= 2"),
    (re.compile(r"NSG[0-3](?![0-9])"), "NSG needs R >= 4"),
)

#: The smallest graph degrees FAISS builds without crashing or looping forever
#: (HNSW M=1 segfaults and M=0 aborts on add; NSG with R < 4 never finishes).
MIN_HNSW_M = 2
MIN_NSG_R = 4


#: Size fields of FAISS objects (and of their quantizers) that must be at least 1:
#: ``IndexIVFScalarQuantizer(q, d, 0, ...)``, ``IndexPQ(d, 2, 0)``, ``IndexLSH(d, 0)``,
#: ``IndexResidualQuantizer(d, 0, 8)`` and their kin segfault in train, add or search.
_SIZE_FIELDS = ("nlist", "M", "nbits")
_QUANTIZER_FIELDS = ("pq", "rq", "lsq", "aq", "prq", "plsq")


def _sizes_of(obj: Any) -> Iterable[tuple[str, Any]]:
    for part, owner in (("", obj), *((f"{q}.", getattr(obj, q, None)) for q in _QUANTIZER_FIELDS)):
        if owner is None:
            continue
        for field in _SIZE_FIELDS:
            value = getattr(owner, field, None)
            if type(value) is int:
                yield part + field, value
            elif value is not None and hasattr(value, "size") and hasattr(value, "at"):  # nbits per codebook
                yield part + field, min((value.at(i) for i in range(value.size())), default=0)


#: Constructors that crash FAISS before any object exists (found by calling every
#: exposed class with small and zero integer arguments in a forked child): class
#: name -> (position, argument name) of integer arguments that must be at least 1.
_CONSTRUCTOR_FLOORS: dict[str, tuple[tuple[int, str], ...]] = {
    "IndexLSH": ((1, "nbits"),),  # IndexLSH(d, 0): SIGSEGV
    "ArrayInvertedListsPanorama": ((2, "n_levels"),),  # (nlist, code_size, 0): SIGFPE
}


def check_constructor(cls: type, args: tuple[Any, ...]) -> None:
    """Refuse constructor arguments that crash FAISS in the constructor itself."""
    for position, name in _CONSTRUCTOR_FLOORS.get(cls.__name__, ()):
        if len(args) > position and isinstance(args[position], (int, np.integer)) and args[position] < 1:
            raise ValueError(f"{cls.__name__}: refused {name}={int(args[position])}: sizes must be at least 1")


def check_built(obj: Any) -> None:
    """Refuse an object built by a class constructor with a size FAISS would crash or
    hang on at first use: the constructor twin of :func:`check_factory`
    (``IndexHNSWFlat(d, 1)`` is ``index_factory(d, "HNSW1")``, ``IndexIVFFlat(q, d, 0)``
    is ``"IVF0,Flat"``)."""
    for field, value in _sizes_of(obj):
        if value < 1:
            raise ValueError(f"{type(obj).__name__}: refused {field}={value}: sizes must be at least 1")
    hnsw = obj if type(obj).__name__ == "HNSW" else getattr(obj, "hnsw", None)
    if hnsw is not None and type(hnsw).__name__ == "HNSW":
        # cum_nneighbor_per_level: 0, 2M, 3M, ... (level 0 keeps 2M neighbours); for M=1
        # FAISS leaves it at [0] (no level at all), for a huge M at [0, 2M]
        cum = hnsw.cum_nneighbor_per_level
        m = (cum.at(1) - cum.at(0)) // 2 if cum.size() > 1 else 0
        if m < MIN_HNSW_M:
            raise ValueError(f"{type(obj).__name__}: refused M < {MIN_HNSW_M}: HNSW needs M >= {MIN_HNSW_M}")
    nsg = getattr(obj, "nsg", None)
    if nsg is not None and type(nsg).__name__ == "NSG" and nsg.R < MIN_NSG_R:
        raise ValueError(f"{type(obj).__name__}: refused R={nsg.R}: NSG needs R >= {MIN_NSG_R}")


def _int_arg(args: tuple[Any, ...], kwargs: dict[str, Any], position: int, name: str) -> Any:
    value = args[position] if len(args) > position else kwargs.get(name)
    return int(value) if isinstance(value, (int, np.integer)) else None


def _check_default_probas(args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    m = _int_arg(args, kwargs, 0, "M")
    if m is not None and m < MIN_HNSW_M:
        raise ValueError(f"HNSW.set_default_probas: refused M={m}: HNSW needs M >= {MIN_HNSW_M}")


def _check_nb_neighbors(args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    n = _int_arg(args, kwargs, 1, "n")
    if n is not None and n < MIN_HNSW_M:
        raise ValueError(f"HNSW.set_nb_neighbors: refused n={n}: each HNSW level needs >= {MIN_HNSW_M} neighbours")


#: Methods that resize an HNSW graph after construction; their arguments get the
#: same floor as the constructor (``set_nb_neighbors(0, 0)`` aborts the next add).
_ARGUMENT_CHECKS: dict[str, Callable[[tuple[Any, ...], dict[str, Any]], None]] = {
    "set_default_probas": _check_default_probas,
    "set_nb_neighbors": _check_nb_neighbors,
}


def checked_method(name: str, method: Callable[..., Any]) -> Callable[..., Any]:
    """``method`` itself, or for the few methods in :data:`_ARGUMENT_CHECKS` a wrapper
    that refuses degenerate arguments before FAISS sees them."""
    check = _ARGUMENT_CHECKS.get(name)
    if check is None:
        return method

    def checked(*args: Any, **kwargs: Any) -> Any:
        check(args, kwargs)
        return method(*args, **kwargs)

    return checked


def check_factory(description: Any) -> None:
    """Refuse ``index_factory`` descriptions known to crash or hang FAISS."""
    if not isinstance(description, str):
        return
    for pattern, reason in _DEGENERATE_FACTORY:
        if pattern.search(description):
            raise ValueError(f"index_factory: refused {description!r}: {reason}")


def _checked_factory(factory: Callable[..., Any]) -> Callable[..., Any]:
    def checked(*args: Any, **kwargs: Any) -> Any:
        check_factory(args[1] if len(args) > 1 else kwargs.get("description"))
        index = factory(*args, **kwargs)
        check_built(index)
        return index

    checked.__name__ = factory.__name__
    checked.__doc__ = factory.__doc__
    return checked


class Handle:
    """An opaque box around one server object, as a client sees it.

    RPyC lets a peer touch a netref'd object's attributes through ``_rpyc_getattr``;
    this one refuses everything, so the only thing a client can do with a handle
    is pass it back to the service, which unwraps it.  ``keep`` holds the objects
    this one may point into (its parent index, the arguments of the call that
    produced it), so a sub-object can never outlive the memory it refers to.
    """

    __slots__ = ("__weakref__", "keep", "named", "obj", "path", "wire_number")

    def __init__(self, obj: Any, keep: tuple[Any, ...] = (), named: Any = None, path: tuple[Any, ...] = ()) -> None:
        self.wire_number = next_wire_number()
        self.obj = obj
        self.keep = keep
        # For objects of a named index: the index, and the steps from it to ``obj``
        # (see faiss_proxy_server.named), so changes through them are logged.
        self.named = named
        self.path = path

    # RPyC answers a peer's hash() of a reference (a safe attribute); the default
    # would be derived from this process's memory address.
    def __hash__(self) -> int:
        return hash(self.wire_number)

    def _rpyc_getattr(self, name: str) -> Any:
        raise AttributeError("access denied")

    def _rpyc_setattr(self, name: str, value: Any) -> None:
        raise AttributeError("access denied")

    def _rpyc_delattr(self, name: str) -> None:
        raise AttributeError("access denied")

    def __repr__(self) -> str:
        return f"<remote faiss.{type(self.obj).__name__}>"


class Reflection:
    """The allow-listed view of one installed ``faiss`` module."""

    def __init__(self, faiss_module: types.ModuleType) -> None:
        self.faiss = faiss_module
        self.functions: dict[str, Callable[..., Any]] = {}
        self.classes: dict[str, type] = {}
        self.constants: dict[str, Any] = {}
        self.denied: dict[str, str] = {}
        for name in dir(faiss_module):
            if name.startswith("_"):
                continue
            value = getattr(faiss_module, name)
            if isinstance(value, types.ModuleType):
                self.denied[name] = "modules are not exposed"
            elif inspect.isclass(value):
                reason = None if _is_faiss_code(value) else "not part of faiss"
                reason = reason or denied_class_reason(name) or denied_class_reason(value.__name__)
                if reason:
                    self.denied[name] = reason
                else:
                    self.classes[name] = value
            elif callable(value):
                # The object's own name counts too: faiss.obj is a leftover loop
                # variable that holds write_index_binary.
                own = getattr(value, "__name__", name)
                reason = None if _is_faiss_code(value) else "not part of faiss"
                reason = reason or denied_function_reason(name) or denied_function_reason(str(own))
                if reason:
                    self.denied[name] = reason
                else:
                    self.functions[name] = value
            elif type(value) in _CONSTANT_TYPES or (type(value) is str and name.isupper()):
                self.constants[name] = value
            else:
                self.denied[name] = "not exposed"
        for name in ("deserialize_index", "deserialize_index_binary"):
            if name in self.functions:
                self.functions[name] = _checked_deserializer(self.functions[name])
        for name in ("index_factory", "index_binary_factory"):
            if name in self.functions:
                self.functions[name] = _checked_factory(self.functions[name])
        self._class_info: dict[type, tuple[Any, ...]] = {}
        # Every method and function name faiss has: a bounded set, so a metrics label
        # may carry one even for a call that failed (never a client's arbitrary string).
        names = set(self.functions)
        for cls in self.classes.values():
            for klass in cls.__mro__:
                if _is_faiss_code(klass):
                    names.update(n for n, v in vars(klass).items() if callable(v) and not n.startswith("_"))
        self.known_names = frozenset(names)
        self._vector_dtypes = dict(getattr(faiss_module, "vector_name_map", {}))

    # --- the namespace --------------------------------------------------------------
    def namespace(self) -> tuple[tuple[Any, ...], ...]:
        """``(name, kind, value)`` for everything exposed, plus denied names with reasons."""
        rows: list[tuple[Any, ...]] = []
        rows += [(n, "function", None) for n in self.functions]
        rows += [(n, "class", None) for n in self.classes]
        rows += [(n, "constant", v) for n, v in self.constants.items()]
        rows += [(n, "denied", reason) for n, reason in self.denied.items()]
        return tuple(rows)

    def class_allowed(self, cls: type) -> bool:
        return _is_faiss_code(cls) and denied_class_reason(cls.__name__) is None

    def describe(self, cls: type) -> tuple[Any, ...]:
        """Class info for the client proxy: ``(name, bases, methods, properties,
        constants)`` per class of ``cls``'s MRO that faiss defines, most derived first;
        ``constants`` are the class's plain number attributes as ``(name, value)`` pairs
        (``ScalarQuantizer.QT_8bit``)."""
        cached = self._class_info.get(cls)
        if cached is not None:
            return cached
        rows = []
        for klass in cls.__mro__:
            if klass is object or not _is_faiss_code(klass):
                continue
            bases = tuple(b.__name__ for b in klass.__bases__ if _is_faiss_code(b))
            methods, props, constants = [], [], []
            for name, value in vars(klass).items():
                try:
                    check_attribute(name)
                except ExposureError:
                    continue
                if isinstance(value, property):
                    props.append(name)
                elif isinstance(value, (staticmethod, classmethod)):
                    continue
                elif callable(value):
                    methods.append(name)
                elif type(value) in _CONSTANT_TYPES:
                    constants.append((name, value))
            rows.append((klass.__name__, bases, tuple(methods), tuple(props), tuple(constants)))
        info = tuple(rows)
        self._class_info[cls] = info
        return info

    def class_by_name(self, name: Any) -> type:
        if type(name) is not str:
            raise TypeError("class names are strings")
        cls = self.classes.get(name)
        if cls is not None:
            return cls
        for known in list(self.classes.values()):
            for klass in known.__mro__:
                if klass.__name__ == name and self.class_allowed(klass):
                    return klass
        raise self.missing(name)

    def function(self, name: Any) -> Callable[..., Any]:
        if type(name) is not str:
            raise TypeError("function names are strings")
        fn = self.functions.get(name)
        if fn is None:
            raise self.missing(name)
        return fn

    def missing(self, name: str) -> ExposureError:
        reason = self.denied.get(name) or denied_function_reason(name) or denied_class_reason(name)
        if reason:
            return ExposureError(f"faiss.{name} is not available through faiss-proxy: {reason}")
        return ExposureError(f"module 'faiss' has no attribute '{name}'")

    # --- values crossing the boundary -------------------------------------------------
    def decode(self, node: Any, buffers: tuple[Any, ...], refs: tuple[Any, ...], arrays: list[np.ndarray]) -> Any:
        """Turn a header node from a client (see :mod:`faiss_proxy._wire`) into a value."""
        if type(node) is not list:
            if type(node) in _PLAIN:
                return node
            raise TypeError(f"malformed argument of type {type(node).__name__}")
        if not node or type(node[0]) is not str:
            raise TypeError("malformed argument")
        tag = node[0]
        if tag == w.ND:
            array = w.array_from_buffer(node, buffers)
            arrays.append(array)
            return array
        if tag == w.TUP:
            return tuple(self.decode(v, buffers, refs, arrays) for v in node[1:])
        if tag == w.LST:
            return [self.decode(v, buffers, refs, arrays) for v in node[1:]]
        if tag == w.DCT:
            out = {}
            for pair in node[1:]:
                if type(pair) is not list or len(pair) != 2:
                    raise TypeError("malformed dict argument")
                key = self.decode(pair[0], buffers, refs, arrays)
                if isinstance(key, (list, dict, np.ndarray)):
                    raise TypeError("unhashable dict key")
                out[key] = self.decode(pair[1], buffers, refs, arrays)
            return out
        if tag == w.SCA and len(node) == 3:
            if not isinstance(node[1], str) or node[1] not in w.ALLOWED_DTYPES:
                raise TypeError(f"refused scalar dtype {node[1]!r}")
            if type(node[2]) not in (bool, int, float):
                raise TypeError("malformed scalar")
            return np.dtype(node[1]).type(node[2])
        if tag == w.OBJ and len(node) == 2 and type(node[1]) is int and 0 <= node[1] < len(refs):
            handle = refs[node[1]]
            if not isinstance(handle, Handle):
                raise TypeError("not a remote faiss object")
            return handle.obj
        if tag == w.BYT and len(node) == 2 and type(node[1]) is int and 0 <= node[1] < len(buffers):
            raw = buffers[node[1]]
            if not isinstance(raw, bytes):
                raise TypeError("malformed bytes argument")
            return raw
        raise TypeError("malformed argument")

    def encode(
        self,
        value: Any,
        out: w.Packer,
        keep: tuple[Any, ...],
        seen: Iterable[tuple[int, Any]] = (),
        origin: tuple[Any, tuple[Any, ...]] | None = None,
    ) -> Any:
        """Turn a faiss result into a header node for the client.

        ``keep`` is what a returned object must keep alive; ``seen`` pairs
        ``(id(argument), position)`` so that a result which *is* a caller's array
        (``search(..., D=D, I=I)``) comes back as a reference to it; ``origin``
        ``(named index, path)`` marks a returned object as part of a named index."""
        if type(value) is tuple:  # first: the (D, I) of a search is the hot case
            return [w.TUP, *[self.encode(v, out, keep, seen) for v in value]]
        if type(value) in _PLAIN:
            if type(value) is bytes:
                return out.raw(value)
            if type(value) is complex:
                raise TypeError("complex results are not returned")
            return value
        if isinstance(value, np.ndarray):
            if seen:
                ident = id(value)
                for known, position in seen:
                    if known == ident:
                        return [w.ARG, position]
            return out.array(value)  # refuses object and other non-numeric dtypes
        if isinstance(value, np.generic):
            return out.scalar(value)
        if type(value) is list:
            return [w.LST, *(self.encode(v, out, keep, seen) for v in value)]
        if type(value) is dict:
            return [w.DCT, *([self.encode(k, out, keep), self.encode(v, out, keep, seen)] for k, v in value.items())]
        if _is_swig_pointer(value):
            raise TypeError("raw pointers are not returned by faiss-proxy (raw memory access is refused)")
        cls = type(value)
        name = cls.__name__
        if _is_faiss_code(cls):
            vector = self._vector_value(value, out, keep)
            if vector is not None:
                return vector
            if self.class_allowed(cls):
                if origin is not None:
                    return out.ref(Handle(value, keep, origin[0], origin[1]), name)
                return out.ref(Handle(value, keep), name)
        raise TypeError(f"values of type {cls.__module__}.{name} are not returned by faiss-proxy")

    def _vector_value(self, value: Any, out: w.Packer, keep: tuple[Any, ...]) -> Any:
        """std::vector-like containers come back by value."""
        name = type(value).__name__
        if name.startswith("MaybeOwnedVector") and not name.endswith("Vector"):
            return out.array(self.faiss.vector_to_array(value))
        if name.startswith("AlignedTable"):
            return out.array(self.faiss.AlignedTable_to_array(value))
        if not name.endswith("Vector"):
            return None
        if name[:-6] in self._vector_dtypes:
            return out.array(self.faiss.vector_to_array(value))
        if hasattr(value, "size") and hasattr(value, "at"):
            items = [value.at(i) for i in range(value.size())]
            return [w.TUP, *(self.encode(v, out, (value, *keep)) for v in items)]
        return None

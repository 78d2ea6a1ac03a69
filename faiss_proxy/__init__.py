"""faiss_proxy: use a faiss-proxy server as if it were the ``faiss`` module.

    import faiss_proxy as faiss
    faiss.configure(api_url="http://127.0.0.1:8000", api_key=KEY)
    index = faiss.index_factory(128, "IVF64,PQ16")
    index.train(xt); index.add(xb); index.nprobe = 8
    D, I = index.search(xq, 10)

Every public name of the server's faiss (classes, functions, constants) is
available as an attribute of this module; objects live on the server, in the
tenant's worker process, and arrays travel by value.  ``configure()`` can be
replaced by the environment variables ``FAISS_PROXY_URL``, ``FAISS_PROXY_API_KEY``
and ``FAISS_PROXY_TIMEOUT``.  With no URL configured, this module is a thin
alias of the local ``faiss`` package (if installed).

Files stay on the client: :func:`write_index` serializes on the server and
writes the bytes here; :func:`read_index` reads here and uploads.

Named indexes are durable and shared by every client of the tenant (RPC and
REST): :func:`create_index`, :func:`open_index`, :func:`list_indexes`,
:func:`drop_index`.
"""

from __future__ import annotations

import os as _os
import threading as _threading
from typing import Any as _Any

import numpy as _np

from ._client import AuthenticationError, Client, RemoteObject

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "configure",
    "is_remote",
    "client",
    "AuthenticationError",
    "RemoteObject",
    "write_index",
    "read_index",
    "write_index_binary",
    "read_index_binary",
    "vector_to_array",
    "vector_float_to_array",
    "create_index",
    "open_index",
    "list_indexes",
    "drop_index",
]

_lock = _threading.Lock()
_current: Client | None = None
_configured = False


def configure(
    api_url: str | None = None,
    api_key: str | None = None,
    timeout: float | None = None,
    spin_us: float | None = None,
    ca: str | None = None,
) -> None:
    """Point this module at a faiss-proxy server: ``http://host:port``,
    ``https://host:port``, or on the server's machine ``unix:///path`` (its
    ``unix_socket``).

    Arguments left out are read from ``FAISS_PROXY_URL``, ``FAISS_PROXY_API_KEY``,
    ``FAISS_PROXY_TIMEOUT`` (seconds a call may take; default 600),
    ``FAISS_PROXY_SPIN_US`` (microseconds to busy-wait for a reply before sleeping;
    default 5000, 0 turns it off) and ``FAISS_PROXY_CA`` (for ``https://`` URLs: a
    PEM bundle of the CAs to trust instead of the system's).  With no URL at all,
    the module uses the local faiss package.
    """
    global _current, _configured
    url = api_url if api_url is not None else _os.environ.get("FAISS_PROXY_URL", "")
    key = api_key if api_key is not None else _os.environ.get("FAISS_PROXY_API_KEY", "")
    if timeout is None:
        timeout = float(_os.environ.get("FAISS_PROXY_TIMEOUT", "600") or 600)
    if spin_us is None:
        spin_us = float(_os.environ.get("FAISS_PROXY_SPIN_US", "5000") or 0)
    if ca is None:
        ca = _os.environ.get("FAISS_PROXY_CA") or None
    with _lock:
        if _current is not None:
            _current.close()
        _current = None
        if url:
            if not key:
                raise ValueError("faiss_proxy.configure: an API key is needed (api_key= or FAISS_PROXY_API_KEY)")
            _current = Client(url, key, timeout=timeout, spin_us=spin_us, ca=ca)
        _configured = True


def client() -> Client | None:
    """The current :class:`Client`, or None in local mode."""
    if not _configured:
        configure()
    return _current


def is_remote() -> bool:
    return client() is not None


def _local_faiss() -> _Any:
    try:
        import faiss
    except ImportError:
        raise ImportError(
            "faiss_proxy: no server configured and the local faiss package is not installed. "
            "Call faiss_proxy.configure(api_url='http://host:8000', api_key=KEY) or set "
            "FAISS_PROXY_URL and FAISS_PROXY_API_KEY (or pip install faiss-cpu for local use)."
        ) from None
    return faiss


def __getattr__(name: str) -> _Any:
    if name.startswith("__"):
        raise AttributeError(name)
    c = client()
    if c is None:
        return getattr(_local_faiss(), name)
    return c.lookup(name)


def __dir__() -> list[str]:
    c = client()
    names = {n for n in globals() if not n.startswith("_")} | set(__all__)
    if c is None:
        try:
            names |= set(dir(_local_faiss()))
        except ImportError:
            pass
    else:
        names |= {n for n, (kind, _) in c.namespace().items() if kind != "denied"}
    return sorted(names)


# --- files stay on the client ---------------------------------------------------------
def _read_bytes(f: _Any) -> _np.ndarray:
    if hasattr(f, "read"):
        data = f.read()
    else:
        with open(_os.fspath(f), "rb") as fh:
            data = fh.read()
    return _np.frombuffer(data, dtype=_np.uint8)


def _write_bytes(data: _np.ndarray, f: _Any) -> None:
    if hasattr(f, "write"):
        f.write(data.tobytes())
        return
    path = _os.fspath(f)
    tmp = f"{path}.tmp-{_os.getpid()}"
    with open(tmp, "wb") as fh:
        fh.write(_np.ascontiguousarray(data).tobytes())
    _os.replace(tmp, path)


def write_index(index: _Any, f: _Any) -> None:
    """Write ``index`` to the client's file (path or binary file object)."""
    c = client()
    if c is None:
        _local_faiss().write_index(index, _os.fspath(f) if not hasattr(f, "write") else f)
        return
    _write_bytes(c.lookup("serialize_index")(index), f)


def read_index(f: _Any, io_flags: int = 0) -> _Any:
    """Read an index from the client's file and upload it.

    Memory-mapping flags do not apply to a remote index and are ignored."""
    c = client()
    if c is None:
        return _local_faiss().read_index(_os.fspath(f) if not hasattr(f, "read") else f, io_flags)
    return c.lookup("deserialize_index")(_read_bytes(f))


def write_index_binary(index: _Any, f: _Any) -> None:
    """Binary-index variant of :func:`write_index`."""
    c = client()
    if c is None:
        _local_faiss().write_index_binary(index, _os.fspath(f) if not hasattr(f, "write") else f)
        return
    _write_bytes(c.lookup("serialize_index_binary")(index), f)


def read_index_binary(f: _Any, io_flags: int = 0) -> _Any:
    """Binary-index variant of :func:`read_index`."""
    c = client()
    if c is None:
        return _local_faiss().read_index_binary(_os.fspath(f) if not hasattr(f, "read") else f, io_flags)
    return c.lookup("deserialize_index_binary")(_read_bytes(f))


def vector_to_array(v: _Any) -> _Any:
    """std::vector values already arrive as NumPy arrays; this returns a copy."""
    c = client()
    if c is None:
        return _local_faiss().vector_to_array(v)
    return _np.array(v)


vector_float_to_array = vector_to_array


# --- named indexes ----------------------------------------------------------------------
def _server(what: str) -> Client:
    c = client()
    if c is None:
        raise RuntimeError(
            f"faiss_proxy.{what}: named indexes live on a faiss-proxy server; "
            "call faiss_proxy.configure(api_url=..., api_key=...) or set FAISS_PROXY_URL"
        )
    return c


def create_index(
    name: str, dimension: int, index_type: str = "Flat", metric: str = "L2", params: dict[str, int] | None = None
) -> _Any:
    """Create a durable named index shared by all of the tenant's clients; returns it.

    ``index_type`` is an ``index_factory`` string (``"HNSW32"``, ``"IVF256,PQ16"``)
    or a class name (``"IndexHNSWFlat"``, with ``params`` such as ``{"M": 32}``);
    ``metric`` is ``"L2"`` or ``"IP"``.  Types without ids of their own are wrapped in
    ``IndexIDMap2`` (add vectors with ``add_with_ids``).  Raises ValueError if the
    name is taken."""
    args: dict[str, _Any] = {"index_type": index_type, "metric": metric}
    if params is not None:
        args["params"] = params
    return _server("create_index").connection().named("create", (name, dimension), args)


def open_index(name: str) -> _Any:
    """The named index ``name`` (KeyError if there is none).  Every change made
    through it is logged durably before the call returns."""
    return _server("open_index").connection().named("open", (name,), {})


def list_indexes() -> list[dict[str, _Any]]:
    """Information on each named index of the tenant (name, dimension, ntotal, ...)."""
    result: list[dict[str, _Any]] = _server("list_indexes").connection().named("list", (), {})
    return result


def drop_index(name: str) -> None:
    """Delete the named index ``name`` and its files."""
    _server("drop_index").connection().named("drop", (name,), {})

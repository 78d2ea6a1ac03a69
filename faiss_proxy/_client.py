"""Remote FAISS objects: the connection, proxy classes and call marshalling.

A :class:`Client` stands for one server and API key.  Its proxy classes are built
from the server's own class descriptions (``describe``), so ``faiss.IndexIVFFlat``
on the client is a real Python class whose MRO mirrors faiss's
(``isinstance(index, faiss.Index)`` works), whose methods are one round trip each,
and whose properties (``index.nprobe``) are one round trip to read or write.

Arrays never travel as netrefs: arguments are encoded by value (see
:mod:`faiss_proxy._wire`), results come back by value, and arrays the server wrote
into are copied back into the caller's arrays, so ``faiss.normalize_L2(x)`` and
``index.search(x, k, D=D, I=I)`` behave as they do locally.

One connection is shared by all threads of a process; calls from different
threads are multiplexed on it and run in parallel on the server.  After a fork
the child opens its own connection.  If the connection dies, objects created on
it raise :class:`ConnectionError`; new module-level calls reconnect.
"""

from __future__ import annotations

import builtins
import json
import os
import socket
import ssl
import threading
import urllib.parse
from collections.abc import Callable
from typing import Any

import numpy as np
from rpyc.core import consts
from rpyc.core.async_ import AsyncResultTimeout

from . import _wire as w
from ._transport import ClientConnection, FrameChannel, client_config, set_nodelay

__all__ = ["Client", "RemoteObject", "RemoteFunction", "AuthenticationError", "RPC_PROTOCOL"]

RPC_PROTOCOL = "faiss-proxy-rpc"
_PLAIN = (type(None), bool, int, float, str, bytes, complex)


#: Request bodies and reply decoders a connection keeps (each; cleared when full).
_MAX_CACHED = 64
_MAX_CACHED_BODY = 2048
_SCALARS = (type(None), bool, int, float, str)


def _call_key(name: str, ref: Any, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
    """What makes a method call's request body: the method, the object's id-pack
    (unique, never reused), and per argument the dtype and shape of a C-contiguous
    array or the type and value of a plain value; None for any other argument."""
    parts: list[Any] = [name, object.__getattribute__(ref, "____id_pack__")]
    for a in args:
        t = type(a)
        if t is np.ndarray:
            if not a.flags.c_contiguous:
                return None
            parts.append((a.dtype, a.shape))
        elif t in _SCALARS:
            parts.append((t, a))
        else:
            return None
    return tuple(parts)


class AuthenticationError(PermissionError):
    """The server refused the API key (missing, malformed, expired or revoked)."""


# --------------------------------------------------------------------------------------
# connection
# --------------------------------------------------------------------------------------
def _parse_url(url: str) -> tuple[str, int, str]:
    """(host, port, path prefix) of an ``http(s)://`` URL; for ``unix:///path``
    (the server's ``unix_socket``), ("", 0, the socket's path)."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "unix":
        if parts.netloc or not parts.path.startswith("/"):
            raise ValueError(f"a Unix socket URL names an absolute path: unix:///path/to/socket, not {url!r}")
        return "", 0, parts.path
    if parts.scheme not in ("http", "https", ""):
        raise ValueError(f"unsupported URL scheme in {url!r}: use http://host:port, https://host:port or unix:///path")
    if not parts.hostname:
        raise ValueError(f"no host in URL {url!r}")
    return parts.hostname, parts.port or (443 if parts.scheme == "https" else 80), parts.path.rstrip("/")


def tls_context(ca: str | None) -> ssl.SSLContext:
    """Certificate-verifying client context; ``ca`` is a PEM bundle to trust instead
    of the system's (``FAISS_PROXY_CA``), e.g. the ``ca.pem`` of ``faiss-proxy dev-cert``."""
    return ssl.create_default_context(cafile=ca or None)


def _read_http_head(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("the server closed the connection during the RPC handshake")
        data += chunk
        if len(data) > 65536:
            raise ConnectionError("oversized HTTP response during the RPC handshake")
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    try:
        status = int(lines[0].split(" ", 2)[1])
    except (IndexError, ValueError):
        raise ConnectionError(f"not an HTTP response from the server: {lines[0]!r}") from None
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, rest


def _error_message(sock: socket.socket, headers: dict[str, str], body: bytes) -> str:
    try:
        length = int(headers.get("content-length", "0"))
        while len(body) < length:
            chunk = sock.recv(length - len(body))
            if not chunk:
                break
            body += chunk
        message: str = json.loads(body)["error"]["message"]
        return message
    except (ValueError, KeyError, TypeError, OSError):
        return body.decode("utf-8", "replace")[:200]


def open_rpc_socket(url: str, api_key: str, timeout: float = 30.0, ca: str | None = None) -> socket.socket:
    """Open a TCP (or TLS, for ``https://``; Unix socket, for ``unix://``)
    connection and upgrade ``GET /v1/rpc`` to an RPC session."""
    host, port, prefix = _parse_url(url)
    try:
        if not host:  # unix:///path: the path is the socket's
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.settimeout(timeout)
                sock.connect(prefix)
            except BaseException:
                sock.close()
                raise
            host, prefix = "localhost", ""
        else:
            sock = socket.create_connection((host, port), timeout=timeout)
    except OSError as exc:
        raise ConnectionError(f"cannot reach faiss-proxy at {url}: {exc}") from exc
    if url.lower().startswith("https:"):
        try:
            set_nodelay(sock)
            sock = tls_context(ca).wrap_socket(sock, server_hostname=host)
        except ssl.SSLCertVerificationError as exc:
            sock.close()
            raise ConnectionError(
                f"TLS certificate of {url} not trusted ({exc.verify_message}); "
                "set FAISS_PROXY_CA (or configure(ca=...)) to the CA bundle that signed it"
            ) from None
        except (ssl.SSLError, OSError) as exc:
            sock.close()
            raise ConnectionError(f"TLS handshake with {url} failed: {exc}") from None
    try:
        set_nodelay(sock)
        from . import __version__

        request = (
            f"GET {prefix}/v1/rpc HTTP/1.1\r\nHost: {host}{f':{port}' if port else ''}\r\n"
            f"Connection: Upgrade\r\nUpgrade: {RPC_PROTOCOL}\r\n"
            f"Authorization: Bearer {api_key}\r\nUser-Agent: faiss-proxy/{__version__}\r\n\r\n"
        )
        sock.sendall(request.encode("latin-1"))
        status, headers, rest = _read_http_head(sock)
        if status == 101:
            if rest:
                raise ConnectionError("the server sent data before the RPC session started")
            sock.settimeout(None)
            return sock
        message = _error_message(sock, headers, rest)
    except BaseException:
        sock.close()
        raise
    sock.close()
    if status == 401:
        raise AuthenticationError(f"faiss-proxy refused the API key: {message}")
    if status == 403:
        raise PermissionError(f"faiss-proxy: {message}")
    raise ConnectionError(f"faiss-proxy RPC upgrade failed with HTTP {status}: {message}")


def _clean_exception(exc: BaseException) -> BaseException:
    """Rebuild a remote exception as the plain builtin type faiss raised."""
    for base in type(exc).__mro__:
        if (
            base.__module__ == "builtins"
            and issubclass(base, Exception)
            and getattr(builtins, base.__name__, None) is base
        ):
            try:
                return base(*exc.args)
            except Exception:
                return RuntimeError(*exc.args)
    return RuntimeError(str(exc.args[0]) if exc.args else str(exc))


class Connection:
    """One RPC session with the tenant's worker."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self._requests: dict[tuple[Any, ...], tuple[bytes, bytes | None]] = {}  # call key: body, frame head
        self._decoders: dict[int, tuple[Any, Any]] = {}  # id(reply tree): (tree, decoder)
        # The handshake may start a worker: give it its own, generous limit.
        sock = open_rpc_socket(client.url, client.api_key, max(client.timeout, 60.0), client.ca)
        # TLS: no busy-wait (an SSL socket takes no MSG_DONTWAIT reads).
        spin = 0.0 if isinstance(sock, ssl.SSLSocket) else client.spin_us / 1e6
        channel = FrameChannel(sock, client.max_message, spin=spin)
        self.rpc = ClientConnection(channel, client_config(client.timeout))
        self.pid = os.getpid()
        try:
            self.root = self.rpc.root
        except EOFError as exc:
            raise ConnectionError("faiss-proxy closed the RPC session at start-up") from exc

    @property
    def closed(self) -> bool:
        return bool(self.rpc.closed)

    def close(self) -> None:
        """Close at once: the worker frees the session's objects when it sees EOF
        (RPyC's own close would first wait for the worker to acknowledge)."""
        try:
            self.rpc._channel.close()
            self.rpc.close()
        except Exception:
            pass

    def invoke(self, op: str, *args: Any) -> Any:
        """A cold-path operation through RPyC proper (namespace, describe, hello)."""
        return self._guard(self.rpc.sync_request, consts.HANDLE_CALLATTR, self.root, op, args, ())

    def fast(self, op: str, name: str, target: Any, tree: Any, buffers: tuple[Any, ...], refs: tuple[Any, ...]) -> Any:
        """A hot-path operation (see ``faiss_proxy._transport``): one round trip."""
        return self._guard(self.rpc.fast_request, op, name, target, tree, buffers, refs)

    def _guard(self, fn: Callable[..., Any], *args: Any) -> Any:
        if self.rpc.closed:
            raise ConnectionError("the faiss-proxy session is closed (server or worker restarted?)")
        try:
            return fn(*args)
        except EOFError as exc:
            raise ConnectionError(f"lost the connection to faiss-proxy: {exc}") from None
        except AsyncResultTimeout:
            raise TimeoutError(
                f"faiss-proxy call did not answer within {self.client.timeout:g}s "
                "(configure(timeout=...) or FAISS_PROXY_TIMEOUT)"
            ) from None
        except Exception as exc:
            if type(exc).__module__.startswith("rpyc") or hasattr(exc, "_remote_tb"):
                raise _clean_exception(exc) from None
            raise

    # --- encoding ------------------------------------------------------------------
    def encode(self, value: Any, out: w.Packer) -> Any:
        if type(value) in _PLAIN:
            if type(value) is bytes:
                return out.raw(value)
            if type(value) is complex:
                raise TypeError("complex numbers cannot be sent to faiss-proxy")
            return value
        if isinstance(value, np.ndarray):
            return out.array(value)
        if isinstance(value, np.generic):
            return out.scalar(value)
        if isinstance(value, RemoteObject):
            return out.ref(self._ref(value))
        if type(value) is tuple:
            return [w.TUP, *(self.encode(v, out) for v in value)]
        if type(value) is list:
            return [w.LST, *(self.encode(v, out) for v in value)]
        if type(value) is dict:
            return [w.DCT, *([self.encode(k, out), self.encode(v, out)] for k, v in value.items())]
        raise TypeError(
            f"cannot send a {type(value).__module__}.{type(value).__name__} to faiss-proxy: "
            "pass NumPy arrays, numbers, strings or remote faiss objects"
        )

    def _ref(self, obj: RemoteObject) -> Any:
        if object.__getattribute__(obj, "_fp_conn") is not self:
            raise ConnectionError("this remote object belongs to an earlier faiss-proxy session that has ended")
        return object.__getattribute__(obj, "_fp_ref")

    def decode(
        self,
        node: Any,
        buffers: tuple[Any, ...],
        refs: tuple[Any, ...],
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        if type(node) is not list:
            return node
        tag = node[0]
        if tag == w.ND:
            return w.array_from_buffer(node, buffers)
        if tag == w.OBJ:
            return self.client.make_proxy(self, refs[node[1]], node[2])
        if tag == w.TUP:
            return tuple(self.decode(v, buffers, refs, args, kwargs) for v in node[1:])
        if tag == w.LST:
            return [self.decode(v, buffers, refs, args, kwargs) for v in node[1:]]
        if tag == w.DCT:
            return {self.decode(k, buffers, refs): self.decode(v, buffers, refs, args, kwargs) for k, v in node[1:]}
        if tag == w.SCA:
            return np.dtype(node[1]).type(node[2])
        if tag == w.BYT:
            return bytes(buffers[node[1]])
        if tag == w.ARG:
            where = node[1]
            return args[where] if isinstance(where, int) else (kwargs or {})[where]
        raise ConnectionError("malformed reply from faiss-proxy")

    def _round_trip(self, op: str, head: tuple[Any, ...], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        out = w.Packer()
        tree = [[self.encode(a, out) for a in args], [[k, self.encode(v, out)] for k, v in kwargs.items()]]
        name, target = head
        reply, buffers, refs = self.fast(op, name, target, *out.message(tree))
        return self._result(reply, buffers, refs, args, kwargs)

    def _result(
        self, reply: Any, buffers: tuple[Any, ...], refs: tuple[Any, ...], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        """Apply a reply's writebacks to the caller's arrays; decode its result."""
        result, writebacks = reply
        if not writebacks and not refs:
            # The transport hands out the same tree for the same reply header (see
            # ClientConnection._parse_reply): the arrays of such a result are decoded
            # by a function made once.  Keyed by the tree's id, which the entry keeps
            # alive, and checked for identity, so an id reused by another tree misses.
            known = self._decoders.get(id(reply))
            if known is not None and known[0] is reply:
                return known[1](buffers)
            decoder = w.arrays_decoder(result)
            if decoder is not None:
                if len(self._decoders) >= _MAX_CACHED:
                    self._decoders.clear()
                self._decoders[id(reply)] = (reply, decoder)
                return decoder(buffers)
        for where, node in writebacks:
            target = args[where] if isinstance(where, int) else kwargs.get(where)
            if isinstance(target, np.ndarray):
                np.copyto(target, w.array_from_buffer(node, buffers), casting="unsafe")
        return self.decode(result, buffers, refs, args, kwargs)

    # --- operations ------------------------------------------------------------------
    def new(self, cls: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        return self._round_trip("new", (cls, None), args, kwargs)

    def function(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        return self._round_trip("function", (name, None), args, kwargs)

    def call(self, obj: RemoteObject, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        ref = self._ref(obj)
        key = None if kwargs else _call_key(name, ref, args)
        if key is None:
            return self._round_trip("call", (name, ref), args, kwargs)
        # A call like one made before (same method, object, array shapes and dtypes,
        # other values): its request body was encoded then (the worker answers it
        # from a plan, see faiss_proxy._transport.ServerConnection).
        request = self._requests.get(key)
        arrays = [a for a in args if type(a) is np.ndarray]
        if request is None:
            out = w.Packer()
            tree = [[self.encode(a, out) for a in args], []]
            body = self.rpc.request_body("call", name, ref, tree, ())
            # The frame's head: the key fixes the arrays' sizes too.
            request = (body, self.rpc.request_head(body, arrays))
            if len(body) <= _MAX_CACHED_BODY:
                if len(self._requests) >= _MAX_CACHED:
                    self._requests.clear()
                self._requests[key] = request
        reply, buffers, refs = self._guard(self.rpc.fast_request_body, request[0], arrays, request[1])
        return self._result(reply, buffers, refs, args, kwargs)

    def named(self, action: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """Named-index operations: ``create``, ``open``, ``list``, ``drop``."""
        return self._round_trip("named", (action, None), args, kwargs)

    def getattr(self, obj: RemoteObject, name: str) -> Any:
        (node, _), buffers, refs = self.fast("getattr", name, self._ref(obj), None, (), ())
        if type(node) is list and node and node[0] == w.MTH:
            return _BoundRemoteMethod(obj, name)
        return self.decode(node, buffers, refs)

    def setattr(self, obj: RemoteObject, name: str, value: Any) -> None:
        out = w.Packer()
        node = self.encode(value, out)
        self.fast("setattr", name, self._ref(obj), *out.message(node))


# --------------------------------------------------------------------------------------
# proxies
# --------------------------------------------------------------------------------------
class RemoteObject:
    """Base class of every proxy of a server-side faiss object."""

    __slots__ = ("__weakref__", "_fp_conn", "_fp_ref")
    _fp_client: Client

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        conn: Connection = object.__getattribute__(self, "_fp_conn")
        return conn.getattr(self, name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name.startswith("_fp_"):
            object.__setattr__(self, name, value)
            return
        conn: Connection = object.__getattribute__(self, "_fp_conn")
        conn.setattr(self, name, value)

    def __repr__(self) -> str:
        return f"<faiss_proxy remote {type(self).__name__}>"

    def __reduce__(self) -> Any:
        raise TypeError("remote faiss objects cannot be pickled; use faiss_proxy.serialize_index")


class _RemoteClass(type):
    """Metaclass: calling a proxy class constructs the object on the server."""

    _fp_client: Client

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        return cls._fp_client.connection().new(cls.__name__, args, kwargs)

    def __repr__(cls) -> str:
        return f"<class 'faiss_proxy.{cls.__name__}' (remote)>"


def _make_method(name: str) -> Callable[..., Any]:
    def method(self: RemoteObject, *args: Any, **kwargs: Any) -> Any:
        conn: Connection = object.__getattribute__(self, "_fp_conn")
        return conn.call(self, name, args, kwargs)

    method.__name__ = method.__qualname__ = name
    return method


def _make_property(name: str) -> property:
    def fget(self: RemoteObject) -> Any:
        conn: Connection = object.__getattribute__(self, "_fp_conn")
        return conn.getattr(self, name)

    def fset(self: RemoteObject, value: Any) -> None:
        conn: Connection = object.__getattribute__(self, "_fp_conn")
        conn.setattr(self, name, value)

    return property(fget, fset, doc=f"remote attribute {name}")


class _BoundRemoteMethod:
    __slots__ = ("name", "obj")

    def __init__(self, obj: RemoteObject, name: str) -> None:
        self.obj = obj
        self.name = name

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        conn: Connection = object.__getattribute__(self.obj, "_fp_conn")
        return conn.call(self.obj, self.name, args, kwargs)


class RemoteFunction:
    """A faiss module function, run on the server."""

    def __init__(self, client: Client, name: str) -> None:
        self._client = client
        self.__name__ = self.__qualname__ = name

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._client.connection().function(self.__name__, args, kwargs)

    def __repr__(self) -> str:
        return f"<remote function faiss.{self.__name__}>"


# --------------------------------------------------------------------------------------
# client
# --------------------------------------------------------------------------------------
class Client:
    """Everything the module needs to know about one server and key."""

    def __init__(
        self,
        url: str,
        api_key: str,
        timeout: float = 600.0,
        max_message_mb: int = 1024,
        spin_us: float = 5000.0,
        ca: str | None = None,
    ) -> None:
        _parse_url(url)
        if not api_key or not api_key.isascii() or not api_key.isprintable() or any(c.isspace() for c in api_key):
            raise ValueError("an API key is printable ASCII without spaces (as 'faiss-proxy key create' prints it)")
        self.url = url
        self.api_key = api_key
        self.ca = ca
        self.timeout = float(timeout)
        self.max_message = max_message_mb * 1024 * 1024
        # Busy-wait this long for a reply before sleeping: a single query's reply
        # is then picked up without a scheduler wake-up, and this process's caches
        # stay warm (together 50-100 µs on a VM).  The wait ends when the scheduler
        # gives the CPU to another thread, and after a call that outlasted it the next
        # call sleeps at once.
        self.spin_us = max(0.0, float(spin_us))
        self._lock = threading.RLock()
        self._conn: Connection | None = None
        self._namespace: dict[str, tuple[str, Any]] | None = None
        self._classes: dict[str, type] = {}
        self._functions: dict[str, RemoteFunction] = {}

    def connection(self) -> Connection:
        conn = self._conn
        if conn is not None and not conn.closed and conn.pid == os.getpid():
            return conn
        with self._lock:
            conn = self._conn
            if conn is None or conn.closed or conn.pid != os.getpid():
                conn = self._conn = Connection(self)
            return conn

    def close(self) -> None:
        with self._lock:
            if self._conn is not None and self._conn.pid == os.getpid():
                self._conn.close()
            self._conn = None

    def namespace(self) -> dict[str, tuple[str, Any]]:
        if self._namespace is None:
            rows = self.connection().invoke("namespace")
            self._namespace = {name: (kind, value) for name, kind, value in rows}
        return self._namespace

    def lookup(self, name: str) -> Any:
        entry = self.namespace().get(name)
        if entry is None:
            raise AttributeError(f"module 'faiss' has no attribute '{name}'")
        kind, value = entry
        if kind == "function":
            fn = self._functions.get(name)
            if fn is None:
                fn = self._functions[name] = RemoteFunction(self, name)
            return fn
        if kind == "class":
            return self.proxy_class(name)
        if kind == "constant":
            return value
        raise AttributeError(f"faiss.{name} is not available through faiss-proxy: {value}")

    def proxy_class(self, name: str) -> type:
        cls = self._classes.get(name)
        if cls is not None:
            return cls
        with self._lock:
            if name not in self._classes:
                rows = self.connection().invoke("describe", name)
                for cname, bases, methods, props, *more in reversed(rows):
                    if cname in self._classes:
                        continue
                    base_types = tuple(self._classes[b] for b in bases if b in self._classes)
                    ns: dict[str, Any] = {"__slots__": (), "__module__": "faiss_proxy"}
                    ns.update({m: _make_method(m) for m in methods})
                    ns.update({p: _make_property(p) for p in props})
                    # class constants (ScalarQuantizer.QT_8bit); an older server sends none
                    ns.update({c: v for c, v in (more[0] if more else ()) if type(v) in (bool, int, float)})
                    new = _RemoteClass(cname, base_types or (RemoteObject,), ns)
                    new._fp_client = self
                    self._classes[cname] = new
            return self._classes[name]

    def make_proxy(self, conn: Connection, ref: Any, class_name: str) -> RemoteObject:
        cls = self.proxy_class(class_name)
        obj: RemoteObject = object.__new__(cls)
        object.__setattr__(obj, "_fp_conn", conn)
        object.__setattr__(obj, "_fp_ref", ref)
        return obj

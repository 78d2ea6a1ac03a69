"""A tenant worker: the OS process that holds one tenant's faiss objects.

The gateway starts one worker per active tenant (``python -m faiss_proxy_server.worker``)
with one end of a ``SOCK_SEQPACKET`` socket pair as its control channel.  For each
authenticated RPC session the gateway sends a small JSON header and the client's
socket file descriptor (``SCM_RIGHTS``); from then on the client talks RPyC to this
process directly, with no relay in between.

A crash here (a segfault in faiss, an abort, the memory limit) ends only this
tenant's sessions; the gateway notices the closed control channel and starts a
fresh worker on the tenant's next connection.

Messages to the gateway, one JSON object per datagram:
``{"event": "ready", "pid": ...}``, ``{"event": "open"}``, ``{"event": "close"}``,
``{"event": "stats", ...}``; ``{"event": "rest_close", "slot": ...}`` when it closes a
REST connection handed to it (or cannot take one), and ``{"event": "bounce", "slot": ...}``
with a REST connection's socket handed back to the gateway (see :mod:`.restdirect`).
From the gateway: an RPC session header with its socket; a ``{"rest": ...}`` header
with a REST connection's socket, its first request and the bytes of it the gateway had
read (after the header's newline); or ``{"end_sessions": [key ids], "why": ...}`` (no
descriptor) when keys were revoked or expired: the RPC sessions opened with those keys
are closed and their REST connections go back to the gateway (which answers 401), the
others go on.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import logging
import mmap
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

__all__ = ["main", "WorkerOptions"]

log = logging.getLogger("faiss_proxy.worker")

SWITCHING_PROTOCOLS = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: faiss-proxy-rpc\r\nConnection: Upgrade\r\n\r\n"


class WorkerOptions(argparse.Namespace):
    tenant: str
    control_fd: int
    memory_limit_mb: int
    session_threads: int
    session_spin_us: float
    omp_threads: int
    omp_min_rows: int
    max_message_mb: int
    log_level: str
    log_format: str
    rest_fds: str
    data_dir: str
    max_k: int
    max_batch: int
    snapshot_wal_mb: float
    snapshot_interval: float
    shutdown_timeout: float
    sandbox: str
    uid: int
    nice: int
    max_indexes: int
    max_vectors: int
    rate_limit: float
    rest_idle_timeout: float
    rest_slots_fd: int
    rest_slots: int


def _parse(argv: list[str] | None) -> WorkerOptions:
    p = argparse.ArgumentParser(prog="faiss-proxy-worker")
    p.add_argument("--tenant", required=True)
    p.add_argument("--control-fd", type=int, required=True)
    p.add_argument("--memory-limit-mb", type=int, default=0)
    p.add_argument("--session-threads", type=int, default=4)
    p.add_argument("--session-spin-us", type=float, default=0.0)
    p.add_argument("--omp-threads", type=int, default=0)
    p.add_argument("--omp-min-rows", type=int, default=32)
    p.add_argument("--max-message-mb", type=int, default=1024)
    p.add_argument("--log-level", default="info")
    p.add_argument("--log-format", default="text")
    p.add_argument("--rest-fds", default="", help="comma-separated REST channel descriptors")
    p.add_argument("--data-dir", default="")
    p.add_argument("--max-k", type=int, default=1024)
    p.add_argument("--max-batch", type=int, default=100_000)
    p.add_argument("--snapshot-wal-mb", type=float, default=256.0)
    p.add_argument("--snapshot-interval", type=float, default=300.0)
    p.add_argument("--shutdown-timeout", type=float, default=30.0)
    p.add_argument("--sandbox", choices=("on", "off"), default="on")
    p.add_argument("--nice", type=int, default=0)
    p.add_argument("--max-indexes", type=int, default=0)
    p.add_argument("--max-vectors", type=int, default=0)
    p.add_argument("--rate-limit", type=float, default=0.0)
    p.add_argument("--rest-idle-timeout", type=float, default=300.0)
    p.add_argument("--rest-slots-fd", type=int, default=-1, help="shared states of REST connections (restdirect)")
    p.add_argument("--rest-slots", type=int, default=0)
    p.add_argument("--uid", type=int, default=-1)
    return p.parse_args(argv, namespace=WorkerOptions())


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL this worker if the gateway dies (best effort)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass


class Worker:
    def __init__(self, opts: WorkerOptions) -> None:
        import faiss

        from faiss_proxy import __version__

        from .limits import TokenBucket
        from .metrics import OperationStats
        from .named import NamedIndexStore
        from .reflection import Reflection
        from .rest import RestApi, RestLimits
        from .service import FaissService, ThreadPolicy

        self.opts = opts
        self.faiss = faiss
        self.version = __version__
        self.reflection = Reflection(faiss)
        cores = os.cpu_count() or 1
        self.policy = ThreadPolicy(faiss.omp_set_num_threads, opts.omp_threads or cores, opts.omp_min_rows)
        self.control = socket.socket(fileno=opts.control_fd)
        self._send_lock = threading.Lock()
        # Named indexes: replayed log records that are Python-side method calls go
        # through the same service code as live calls.
        replayer = FaissService(self.reflection, self.policy, self.version)
        self.store = NamedIndexStore(
            faiss,
            Path(opts.data_dir or ".") / "indexes",
            replayer.apply_logged,
            snapshot_wal_mb=opts.snapshot_wal_mb,
            snapshot_interval=opts.snapshot_interval,
            max_indexes=opts.max_indexes,
            max_vectors=opts.max_vectors,
        )
        self.rate = TokenBucket(opts.rate_limit) if opts.rate_limit > 0 else None
        replayer.store = self.store
        self.rest = RestApi(self.store, self.policy.apply_rows, RestLimits(opts.max_k, opts.max_batch))
        self.op_stats = OperationStats()
        self.rest_stats = OperationStats()  # requests on REST connections served here
        # Open RPC sessions: id -> (key id, socket, why it was ended, if it was)
        self._sessions: dict[str, list[Any]] = {}
        self._sessions_lock = threading.Lock()
        # REST connections served here (see restdirect); guarded by _sessions_lock
        self._direct: set[Any] = set()
        self._keys_used: set[str] = set()
        self.stopping = False
        # One byte per REST connection, shared with the gateway (see restdirect)
        self.slots: mmap.mmap | None = None
        if opts.rest_slots_fd >= 0 and opts.rest_slots > 0:
            self.slots = mmap.mmap(opts.rest_slots_fd, opts.rest_slots)
            os.close(opts.rest_slots_fd)

    def report_stats(self) -> None:
        """Every second: what RPC calls did since the last report, and the named
        indexes' sizes (see faiss_proxy_server.metrics)."""
        while True:
            time.sleep(1.0)
            rows = self.op_stats.drain()
            rest = self.rest_stats.drain()
            with self._sessions_lock:
                for direct in self._direct:  # keys in use, for the catalog's "last used"
                    if direct.requests != direct.reported:
                        direct.reported = direct.requests
                        self._keys_used.add(direct.grant.key_id)
                keys, self._keys_used = sorted(self._keys_used), set()
            for i in range(0, max(1, len(rows), len(rest)), 200):
                extra = {"rest": rest[i : i + 200], "keys": keys} if i == 0 else {"rest": rest[i : i + 200]}
                self.notify(event="stats", rpc=rows[i : i + 200], named=self.store.summary(), **extra)

    def terminate(self, *_: Any) -> None:
        """SIGTERM (idle stop, server shutdown): take no new session, let in-flight
        calls finish (up to ``shutdown_timeout``), snapshot what changed, exit.

        Runs in the main thread, which otherwise waits for new sessions, so none
        is accepted meanwhile."""
        try:
            deadline = time.monotonic() + self.opts.shutdown_timeout
            # No lock here: this signal handler may have interrupted the main thread
            # inside _sessions_lock.  Connections added from now on see ``stopping``.
            self.stopping = True
            for direct in list(self._direct):
                direct.ended = "worker stopping"  # each goes back to the gateway
            while (self.op_stats.inflight > 0 or self.rest_stats.inflight > 0 or self._direct) and (
                time.monotonic() < deadline
            ):
                time.sleep(0.01)
            self.store.close(snapshot=True)
        finally:
            logging.shutdown()
            os._exit(0)

    def lock_down(self) -> None:
        """Apply the sandbox (see faiss_proxy_server.sandbox) before touching tenant data."""
        from . import sandbox

        opts = self.opts
        self.sandbox = sandbox.apply(
            Path(opts.data_dir or "."),
            opts.memory_limit_mb,
            opts.uid if opts.uid >= 0 else None,
            landlock=opts.sandbox == "on",
        )

    def notify(self, **event: Any) -> None:
        data = json.dumps(event).encode()
        with self._send_lock:
            try:
                self.control.send(data)
            except OSError:
                pass

    def run(self) -> None:
        from .restchannel import RestServer

        self.store.start()
        threading.Thread(target=self.report_stats, name="stats", daemon=True).start()
        for i, fd in enumerate(int(f) for f in self.opts.rest_fds.split(",") if f):
            RestServer(socket.socket(fileno=fd), self.rest.handle, f"rest-{i}").start()
        self.notify(event="ready", pid=os.getpid(), sandbox=getattr(self, "sandbox", None))
        while True:
            try:
                msg, fds, flags, _addr = socket.recv_fds(self.control, 1 << 18, 4)
            except OSError:
                break
            if not msg:
                break  # the gateway closed the control channel: shut down
            if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
                log.error("a truncated message on the control channel was dropped")
                for fd in fds:
                    os.close(fd)
                continue
            head, _, carried = msg.partition(b"\n")
            try:
                header = json.loads(head)
            except ValueError:
                header = None
            if not isinstance(header, dict):
                for fd in fds:
                    os.close(fd)
                continue
            for extra in fds[1:]:
                os.close(extra)
            if not fds and isinstance(header.get("end_sessions"), list):
                self.end_sessions({str(k) for k in header["end_sessions"]}, str(header.get("why", "ended")))
            if fds and isinstance(header.get("rest"), dict):
                self.start_direct(socket.socket(fileno=fds[0]), header["rest"], carried)
            elif fds:
                sock = socket.socket(fileno=fds[0])
                session = str(header.get("session") or id(sock))
                with self._sessions_lock:  # before the thread starts: a later end_sessions sees it
                    self._sessions[session] = [header.get("key_id"), sock, None]
                threading.Thread(
                    target=self.serve_session,
                    args=(sock, header, session),
                    daemon=True,
                    name=f"session-{header.get('session', '?')}",
                ).start()
        log.info("worker tenant=%s exiting: control channel closed", self.opts.tenant)

    def start_direct(self, sock: socket.socket, header: dict[str, Any], carried: bytes) -> None:
        """Serve a REST connection the gateway handed over (see faiss_proxy_server.restdirect)."""
        from .restdirect import DirectConnection, Grant, Request

        try:
            grant = Grant(
                tenant=self.opts.tenant,
                key_id=str(header["key_id"]),
                key_sha256=str(header["key_sha256"]),
                read_only=bool(header["read_only"]),
                expires=None if header.get("expires") is None else float(header["expires"]),
                peer=str(header.get("peer", "-")),
                max_body=int(header["max_body"]),
            )
            req = header["request"]
            first = Request(
                str(req["method"]),
                str(req["path"]),
                str(req["op"]),
                {str(k): str(v) for k, v in dict(req["args"]).items()},
                {str(k): str(v) for k, v in dict(req["query"]).items()},
                int(req["length"]),
                bool(req["keep_alive"]),
                time.perf_counter(),
            )
            slot = int(header["slot"])
            if self.slots is None or not 0 <= slot < len(self.slots):
                raise ValueError(f"no REST connection slot {slot}")
        except (KeyError, TypeError, ValueError) as exc:
            log.error("a malformed REST hand-off from the gateway: %s", exc)
            sock.close()
            self.notify(event="rest_close", slot=header.get("slot"))
            return
        slots = self.slots
        assert slots is not None  # checked with the header

        def mark(state: int) -> None:
            slots[slot] = state

        def give_back(back: socket.socket, carried: bytes) -> None:
            self.give_back(back, carried, slot)

        conn = DirectConnection(
            sock, grant, self.rest.handle, give_back, self.rest_stats, self.opts.rest_idle_timeout, mark=mark
        )
        conn.slot = slot
        with self._sessions_lock:  # before the thread starts: end_sessions and terminate see it
            self._direct.add(conn)
            if self.stopping:
                conn.ended = "worker stopping"
        try:
            threading.Thread(
                target=self.serve_direct, args=(conn, first, carried), daemon=True, name="rest-conn"
            ).start()
        except RuntimeError as exc:  # no thread to be had: the client sees the connection close
            log.error("could not serve a REST connection tenant=%s: %s", self.opts.tenant, exc)
            with self._sessions_lock:
                self._direct.discard(conn)
            sock.close()
            self.notify(event="rest_close", slot=slot)

    def serve_direct(self, conn: Any, first: Any, carried: bytes) -> None:
        outcome = "closed"
        try:
            outcome = conn.serve(first, carried)
        except Exception:  # a broken connection must not take the worker down
            log.exception("a REST connection failed tenant=%s", self.opts.tenant)
            conn.sock.close()
        finally:
            with self._sessions_lock:
                self._direct.discard(conn)
                if conn.requests != conn.reported:
                    self._keys_used.add(conn.grant.key_id)
            log.debug(
                "rest connection tenant=%s key=%s peer=%s requests=%d outcome=%s",
                self.opts.tenant,
                conn.grant.key_id,
                conn.grant.peer,
                conn.requests,
                outcome,
            )
            if not conn.handed_back:  # a handed-back socket took its slot with it
                self.notify(event="rest_close", slot=conn.slot)

    def give_back(self, sock: socket.socket, carried: bytes, slot: int) -> None:
        """Hand a REST connection back to the gateway, with the bytes read of its next request."""
        data = json.dumps({"event": "bounce", "slot": slot}).encode() + b"\n" + carried
        with self._send_lock:
            socket.send_fds(self.control, [data], [sock.fileno()])

    def end_sessions(self, key_ids: set[str], why: str) -> None:
        """Close the open sessions opened with one of ``key_ids``; each ends as if its
        client had hung up, and its log line says why."""
        with self._sessions_lock:
            ended = [entry for entry in self._sessions.values() if entry[0] in key_ids and entry[2] is None]
            for entry in ended:
                entry[2] = why
            for direct in self._direct:
                if direct.grant.key_id in key_ids:
                    direct.ended = why
        for _key, sock, _why in ended:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def serve_session(self, sock: socket.socket, header: dict[str, Any], session: str) -> None:
        from faiss_proxy._transport import FrameChannel, ProtocolError, ServerConnection, server_config

        from .service import FaissService

        self.notify(event="open")
        read_only = header.get("scope") == "read-only"
        service = FaissService(
            self.reflection, self.policy, self.version, self.store, read_only, self.op_stats, self.rate
        )
        started = time.monotonic()
        outcome = "closed"
        try:
            if not header.get("relayed"):  # over TLS the gateway relays and answered 101 itself
                sock.sendall(SWITCHING_PROTOCOLS)
            channel = FrameChannel(sock, self.opts.max_message_mb * 1024 * 1024)
            conn = ServerConnection(service, channel, server_config(str(header.get("session"))))
            conn.serve_session(self.opts.session_threads, spin=max(0.0, self.opts.session_spin_us) / 1e6)
        except OSError:
            outcome = "closed before start"
        except ProtocolError as exc:
            outcome = f"protocol-error ({exc})"
        except Exception as exc:  # a broken session must not take the worker down
            outcome = f"error: {type(exc).__name__}"
        finally:
            with self._sessions_lock:
                entry = self._sessions.pop(session, None)
            if entry is not None and entry[2] is not None:
                outcome = f"ended ({entry[2]})"
            try:
                sock.close()
            except OSError:
                pass
            stats = service.stats
            duration = time.monotonic() - started
            log.info(
                "rpc session tenant=%s key=%s peer=%s calls=%d errors=%d duration=%.3fs outcome=%s",
                self.opts.tenant,
                header.get("key_id"),
                header.get("peer"),
                stats.calls,
                stats.errors,
                duration,
                outcome,
                extra={
                    "fields": {
                        "kind": "rpc_session",
                        "tenant": self.opts.tenant,
                        "key_id": header.get("key_id"),
                        "peer": header.get("peer"),
                        "calls": stats.calls,
                        "errors": stats.errors,
                        "duration_s": round(duration, 3),
                        "outcome": outcome,
                    }
                },
            )
            self.notify(event="close")


def main(argv: list[str] | None = None) -> None:
    from .logs import make_formatter

    opts = _parse(argv)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(make_formatter(opts.log_format))
    logging.basicConfig(level=getattr(logging, opts.log_level.upper(), logging.INFO), handlers=[handler])
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)
    _die_with_parent()
    if opts.nice > 0:
        os.nice(opts.nice)  # the gateway keeps priority over busy workers
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    # Ctrl-C in a terminal reaches the whole process group: the gateway handles it
    # (SIGTERM to each worker: finish calls, snapshot), a worker must not die of it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    worker = Worker(opts)  # imports faiss and the service before the file system is restricted
    worker.lock_down()
    signal.signal(signal.SIGTERM, worker.terminate)
    worker.run()


if __name__ == "__main__":
    main()

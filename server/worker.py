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
``{"event": "stats", ...}``.  From the gateway: a session header with its socket, or
``{"end_sessions": [key ids], "why": ...}`` (no descriptor) when keys were revoked or
expired: the sessions opened with those keys are closed, the others go on.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import logging
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


def _parse(argv: list[str] | None) -> WorkerOptions:
    p = argparse.ArgumentParser(prog="faiss-proxy-worker")
    p.add_argument("--tenant", required=True)
    p.add_argument("--control-fd", type=int, required=True)
    p.add_argument("--memory-limit-mb", type=int, default=0)
    p.add_argument("--session-threads", type=int, default=4)
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
        # Open RPC sessions: id -> (key id, socket, why it was ended, if it was)
        self._sessions: dict[str, list[Any]] = {}
        self._sessions_lock = threading.Lock()

    def report_stats(self) -> None:
        """Every second: what RPC calls did since the last report, and the named
        indexes' sizes (see faiss_proxy_server.metrics)."""
        while True:
            time.sleep(1.0)
            rows = self.op_stats.drain()
            for i in range(0, max(1, len(rows)), 200):
                self.notify(event="stats", rpc=rows[i : i + 200], named=self.store.summary())

    def terminate(self, *_: Any) -> None:
        """SIGTERM (idle stop, server shutdown): take no new session, let in-flight
        calls finish (up to ``shutdown_timeout``), snapshot what changed, exit.

        Runs in the main thread, which otherwise waits for new sessions, so none
        is accepted meanwhile."""
        try:
            deadline = time.monotonic() + self.opts.shutdown_timeout
            while self.op_stats.inflight > 0 and time.monotonic() < deadline:
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
                msg, fds, _flags, _addr = socket.recv_fds(self.control, 65536, 4)
            except OSError:
                break
            if not msg:
                break  # the gateway closed the control channel: shut down
            try:
                header = json.loads(msg)
            except ValueError:
                for fd in fds:
                    os.close(fd)
                continue
            for extra in fds[1:]:
                os.close(extra)
            if not fds and isinstance(header, dict) and isinstance(header.get("end_sessions"), list):
                self.end_sessions({str(k) for k in header["end_sessions"]}, str(header.get("why", "ended")))
            if fds:
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

    def end_sessions(self, key_ids: set[str], why: str) -> None:
        """Close the open sessions opened with one of ``key_ids``; each ends as if its
        client had hung up, and its log line says why."""
        with self._sessions_lock:
            ended = [entry for entry in self._sessions.values() if entry[0] in key_ids and entry[2] is None]
            for entry in ended:
                entry[2] = why
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
            conn.serve_session(self.opts.session_threads)
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

"""Tenant workers: one OS process per active tenant, started on demand.

The supervisor lives in the gateway's IOLoop.  :meth:`Supervisor.hand_off` gives an
authenticated client socket to the tenant's worker (starting it if needed) by
passing the file descriptor over the worker's control channel.  The worker reports
``open``/``close`` per session; a worker with no session for
``worker_idle_timeout`` seconds is stopped.  When a worker dies (SIGKILL, a
segfault inside faiss, the memory limit) its control channel closes: the
supervisor logs how it ended and forgets it, and the tenant's next connection
starts a fresh one.  Other tenants never notice.

REST connections can be handed to a worker too (:meth:`Supervisor.hand_off_rest`, see
:mod:`.restdirect`); the worker hands back, over the same channel, those it does not
serve, and :attr:`Supervisor.on_bounce` gives them to the gateway's HTTP server.  A
worker told to stop keeps its control channel open until it has exited, so the REST
connections it held come back rather than being closed.

The gateway keeps a duplicate of each handed-over socket and the worker marks, in a
byte per connection of a shared memory file (:class:`DirectSlots`), whether it is in
the middle of a request, writing an answer, or waiting for the next request.  If the
worker dies, a request it had not started answering gets the gateway's ``503`` (as on
a REST channel), and the other connections are closed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import mmap
import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import Settings
from .errors import ServiceUnavailable
from .metrics import GatewayMetrics
from .restchannel import Reply, RestPool
from .restdirect import BUSY

__all__ = ["Supervisor", "WorkerProcess", "worker_environment"]

log = logging.getLogger("faiss_proxy.supervisor")


@dataclass
class WorkerProcess:
    tenant: str
    proc: subprocess.Popen[bytes]
    control: socket.socket
    ready: asyncio.Future[int]
    rest: RestPool
    sessions: int = 0
    pending: int = 0  # sessions handed off whose "open" event has not arrived yet
    slots: DirectSlots | None = None  # the REST connections handed to it (see restdirect)
    inflight: int = 0
    sandbox: dict[str, Any] | None = None
    last_active: float = field(default_factory=time.monotonic)
    alive: bool = True
    exited: asyncio.Task[None] | None = None  # set once forgotten: waits for the process to end
    killed: bool = False  # SIGKILLed by the supervisor itself (not a crash)

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def direct(self) -> int:
        """REST connections handed to the worker and not yet closed or handed back."""
        return 0 if self.slots is None else len(self.slots.socks)

    def idle_for(self, now: float) -> float:
        """How long the worker has been idle at ``now`` (a ``time.monotonic()``); 0 while
        it has anything to do.

        A worker still starting is not idle: its clock starts at "ready" (a start on a
        loaded host may take longer than the idle timeout).  Nor is one with an RPC
        session open or handed over and not yet opened (the hand-off itself restarts
        the clock, but the worker's "open" may come later than the timeout), a REST
        connection of its own, or a call in flight."""
        if not self.ready.done() or self.sessions or self.pending or self.direct or self.inflight:
            return 0.0
        return max(0.0, now - self.last_active)


#: What a worker inherits of the gateway's environment: how to run Python and its
#: native libraries, nothing else.  Secrets (FAISS_PROXY_ADMIN_PASSWORD, the metrics
#: token, cloud credentials of the host) stay out of a process that runs tenants' calls.
_WORKER_ENV_NAMES = frozenset(
    {"PATH", "LANG", "LANGUAGE", "TZ", "TMPDIR", "HOME", "LD_LIBRARY_PATH", "VIRTUAL_ENV", "GLIBC_TUNABLES"}
)
_WORKER_ENV_PREFIXES = ("LC_", "PYTHON", "OMP_", "GOMP_", "KMP_", "OPENBLAS_", "MKL_", "MALLOC_", "FAISS_OPT_LEVEL")


def worker_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """The allow-listed part of ``environ`` that a tenant worker is started with."""
    return {k: v for k, v in environ.items() if k in _WORKER_ENV_NAMES or k.startswith(_WORKER_ENV_PREFIXES)}


#: glibc's malloc then madvises its large mappings (index storage, numpy arrays) with
#: MADV_HUGEPAGE, which the kernel honours in THP mode ``madvise`` (the usual default).
_HUGE_PAGES_TUNABLE = "glibc.malloc.hugetlb=1"


def with_huge_pages(env: dict[str, str]) -> dict[str, str]:
    """``env`` with glibc's huge-page tunable added, unless the operator set one.

    A flat scan of 100k x 128 floats (51 MB) then walks 25 huge pages instead of
    12,500 small ones: 1.9 -> 1.7 ms on the reference VM.  glibc ignores
    tunables it does not know, other C libraries ignore the variable."""
    tunables = env.get("GLIBC_TUNABLES", "")
    if "glibc.malloc.hugetlb=" not in tunables:
        env["GLIBC_TUNABLES"] = f"{tunables}:{_HUGE_PAGES_TUNABLE}" if tunables else _HUGE_PAGES_TUNABLE
    return env


class DirectSlots:
    """The gateway's side of the REST connections a worker serves: a duplicate of each
    socket, and a shared byte per connection in which the worker marks its state
    (see faiss_proxy_server.restdirect: ``IDLE``, ``BUSY``, ``ANSWERING``; 0 free)."""

    def __init__(self, count: int) -> None:
        self.fd = os.memfd_create("faiss-proxy-rest-slots", os.MFD_CLOEXEC)
        os.ftruncate(self.fd, max(1, count))
        self.state = mmap.mmap(self.fd, max(1, count))
        self.socks: dict[int, socket.socket] = {}
        self.free = list(range(count - 1, -1, -1))

    def take(self, sock: socket.socket) -> int | None:
        """A slot for ``sock`` (marked busy: its first request is being served), or None."""
        if not self.free:
            return None
        slot = self.free.pop()
        self.socks[slot] = sock.dup()
        self.state[slot] = BUSY
        return slot

    def release(self, slot: Any) -> None:
        """The worker closed the connection or handed it back: forget our duplicate."""
        if type(slot) is not int or slot not in self.socks:
            return
        self.socks.pop(slot).close()
        self.state[slot] = 0
        self.free.append(slot)

    def worker_gone(self) -> int:
        """The worker has exited: answer 503 where it was in the middle of a request,
        close the rest; returns how many got the 503."""
        answered = 0
        for slot, sock in list(self.socks.items()):
            try:
                if self.state[slot] == BUSY:
                    sock.setblocking(False)
                    sock.send(_GONE)
                    answered += 1
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self.release(slot)
        return answered

    def close_fd(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def close(self) -> None:
        for slot in list(self.socks):
            self.release(slot)
        self.state.close()
        self.close_fd()


_GONE_BODY = b'{"error":{"code":"unavailable","message":"the tenant\'s worker stopped while handling the request"}}'
_GONE = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
    b"Connection: close\r\n\r\n%s" % (len(_GONE_BODY), _GONE_BODY)
)


class Supervisor:
    def __init__(self, settings: Settings, metrics: GatewayMetrics | None = None, uid_of: Any = None) -> None:
        self.settings = settings
        # tenant -> uid for its worker (see worker_uid_base), or None
        self.uid_of = uid_of
        self.metrics = metrics or GatewayMetrics()
        self.workers: dict[str, WorkerProcess] = {}
        self.restarts = 0
        self._starting: dict[str, asyncio.Lock] = {}
        # Workers told to stop that have not exited yet (still snapshotting): a new
        # worker of the same tenant waits for it, so two never share a tenant's files.
        self._exiting: dict[str, asyncio.Task[None]] = {}
        self._reaper: asyncio.Task[None] | None = None
        #: Gets each REST connection a worker hands back, with the bytes it had read of
        #: its next request (the server sets it; without it they are closed).
        self.on_bounce: Callable[[socket.socket, bytes], None] | None = None
        #: Gets the key ids that served REST requests on handed-off connections (the
        #: catalog's "last used").
        self.on_keys_used: Callable[[list[str]], None] | None = None
        self.rest_handoffs = 0  # REST connections handed to workers
        self.rest_handbacks = 0  # ... and handed back

    def start(self) -> None:
        self._reaper = asyncio.get_running_loop().create_task(self._reap_idle())

    async def hand_off(self, tenant: str, sock: socket.socket, header: dict[str, Any]) -> None:
        """Give ``sock`` to ``tenant``'s worker; the caller closes its own copy."""
        worker = await self.worker_for(tenant)
        try:
            socket.send_fds(worker.control, [json.dumps(header).encode()], [sock.fileno()])
        except OSError as exc:
            self._forget(worker, f"control channel failed: {exc}")
            raise ServiceUnavailable(f"worker for tenant '{tenant}' is not available") from exc
        worker.pending += 1
        worker.last_active = time.monotonic()

    def hand_off_rest(self, worker: WorkerProcess, sock: socket.socket, header: dict[str, Any], carried: bytes) -> None:
        """Give a REST connection, with its first request (``header``) and the bytes
        of it already read, to ``worker``; the caller closes its own copy."""
        slots = worker.slots
        slot = slots.take(sock) if slots is not None else None
        if slots is None or slot is None:
            raise ServiceUnavailable(f"worker for tenant '{worker.tenant}' serves no more REST connections")
        try:
            message = json.dumps({"rest": {**header, "slot": slot}}).encode() + b"\n" + carried
            socket.send_fds(worker.control, [message], [sock.fileno()])
        except OSError as exc:
            slots.release(slot)
            self._forget(worker, f"control channel failed: {exc}")
            raise ServiceUnavailable(f"worker for tenant '{worker.tenant}' is not available") from exc
        self.rest_handoffs += 1

    async def worker_for(self, tenant: str) -> WorkerProcess:
        worker = self.ready_worker(tenant)
        if worker is not None:
            return worker  # the common case: no lock, no timer
        lock = self._starting.setdefault(tenant, asyncio.Lock())
        async with lock:
            worker = self.workers.get(tenant)
            if worker is None or not worker.alive:
                exiting = self._exiting.get(tenant)
                if exiting is not None:
                    try:
                        await asyncio.wait_for(asyncio.shield(exiting), self.settings.worker_start_timeout)
                    except TimeoutError:
                        raise ServiceUnavailable(
                            f"the previous worker of tenant '{tenant}' is still stopping; retry the request"
                        ) from None
                worker = self._spawn(tenant)
                self.workers[tenant] = worker
        try:
            await asyncio.wait_for(asyncio.shield(worker.ready), self.settings.worker_start_timeout)
        except (TimeoutError, ConnectionError) as exc:
            self._forget(worker, "did not start")
            raise ServiceUnavailable(f"worker for tenant '{tenant}' failed to start") from exc
        return worker

    def ready_worker(self, tenant: str) -> WorkerProcess | None:
        """``tenant``'s worker if it is running now (else ``await worker_for``)."""
        worker = self.workers.get(tenant)
        if worker is not None and worker.alive and worker.ready.done() and worker.ready.exception() is None:
            return worker
        return None

    def send_rest(
        self, worker: WorkerProcess, op: str, path: dict[str, str], query: dict[str, str], body: bytes, reply: Reply
    ) -> None:
        """Send one REST operation to ``worker`` (see :mod:`.restchannel`); ``reply`` gets
        ``(status, body)`` or the exception, from the event loop."""
        worker.inflight += 1

        def done(result: tuple[int, bytes] | BaseException) -> None:
            worker.inflight -= 1
            worker.last_active = time.monotonic()
            reply(result)

        worker.rest.send(op, path, query, body, done)

    async def rest(
        self, tenant: str, op: str, path: dict[str, str], query: dict[str, str], body: bytes
    ) -> tuple[int, bytes]:
        """:meth:`send_rest` as a coroutine, starting the tenant's worker if needed."""
        worker = await self.worker_for(tenant)
        future: asyncio.Future[tuple[int, bytes]] = asyncio.get_running_loop().create_future()

        def reply(result: tuple[int, bytes] | BaseException) -> None:
            if future.done():
                return
            if isinstance(result, BaseException):
                future.set_exception(result)
            else:
                future.set_result(result)

        self.send_rest(worker, op, path, query, body, reply)
        return await future

    def _spawn(self, tenant: str) -> WorkerProcess:
        s = self.settings
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        rest_pairs = [socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM) for _ in range(max(1, s.rest_threads))]
        env = worker_environment(os.environ)
        env.setdefault("MALLOC_ARENA_MAX", "2")
        # Idle OpenMP threads sleep instead of spinning: on a shared host, spinning
        # workers of several tenants (and their clients) starve each other.
        env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        env["PYTHONUNBUFFERED"] = "1"
        if s.worker_huge_pages == "on":
            with_huge_pages(env)
        cmd = [
            sys.executable,
            "-m",
            "faiss_proxy_server.worker",
            "--tenant",
            tenant,
            "--control-fd",
            str(child.fileno()),
            "--memory-limit-mb",
            str(s.worker_memory_limit_mb),
            "--session-threads",
            str(s.session_threads),
            "--session-spin-us",
            str(s.session_spin_us),
            "--omp-threads",
            str(s.omp_threads),
            "--omp-min-rows",
            str(s.omp_min_rows),
            "--max-message-mb",
            str(s.max_message_mb),
            "--log-level",
            s.log_level,
            "--log-format",
            s.log_format,
            "--rest-fds",
            ",".join(str(child.fileno()) for _, child in rest_pairs),
            "--data-dir",
            str(s.data_path / "tenants" / tenant),
            "--max-k",
            str(s.max_k),
            "--max-batch",
            str(s.max_batch),
            "--snapshot-wal-mb",
            str(s.snapshot_wal_mb),
            "--snapshot-interval",
            str(s.snapshot_interval),
            "--shutdown-timeout",
            str(s.shutdown_timeout),
            "--sandbox",
            s.worker_sandbox,
            "--nice",
            str(s.worker_nice),
            "--max-indexes",
            str(s.tenant_max_indexes),
            "--max-vectors",
            str(s.tenant_max_vectors),
            "--rate-limit",
            str(s.tenant_rate_limit),
            "--rest-idle-timeout",
            str(s.worker_idle_timeout),
            "--uid",
            str(self._worker_uid(tenant)),
        ]
        fds = [child.fileno(), *(c.fileno() for _, c in rest_pairs)]
        slots = DirectSlots(s.rest_direct_connections) if s.rest_direct_connections > 0 else None
        if slots is not None:
            cmd += ["--rest-slots-fd", str(slots.fd), "--rest-slots", str(s.rest_direct_connections)]
            fds.append(slots.fd)
        try:
            proc = subprocess.Popen(cmd, pass_fds=fds, env=env, stdin=subprocess.DEVNULL)
        finally:
            if slots is not None:
                slots.close_fd()  # the mapping stays; the worker has its own descriptor
        child.close()
        for rest_parent, rest_child in rest_pairs:
            rest_child.close()
            rest_parent.setblocking(False)
        parent.setblocking(False)
        loop = asyncio.get_running_loop()
        worker = WorkerProcess(tenant, proc, parent, loop.create_future(), RestPool([p for p, _ in rest_pairs]))
        worker.slots = slots
        loop.add_reader(parent.fileno(), self._on_control, worker)
        log.info("worker started tenant=%s pid=%d", tenant, proc.pid)
        return worker

    def _worker_uid(self, tenant: str) -> int:
        """The uid the tenant's worker drops to (-1: none); its directory is given to it."""
        base = self.settings.worker_uid_base
        if base <= 0 or os.geteuid() != 0 or self.uid_of is None:
            return -1
        for needed in (Path(sys.prefix), Path(sys.base_prefix), self.settings.data_path):
            if not others_can_traverse(needed):
                raise ServiceUnavailable(
                    f"worker_uid_base is set but {needed} is not reachable by other users "
                    "(each directory above it needs o+x); workers cannot run as their own uid"
                )
        uid = int(base + self.uid_of(tenant))
        directory = self.settings.data_path / "tenants" / tenant
        directory.mkdir(parents=True, exist_ok=True)
        if directory.stat().st_uid != uid:
            for root, dirs, files in os.walk(directory):
                for name in (*dirs, *files):
                    os.chown(os.path.join(root, name), uid, uid, follow_symlinks=False)
            os.chown(directory, uid, uid)
        directory.chmod(0o700)
        return uid

    def _on_control(self, worker: WorkerProcess) -> None:
        try:
            data, fds, flags, _addr = socket.recv_fds(worker.control, 1 << 18, 1)
        except BlockingIOError:
            return
        except OSError:
            data, fds, flags = b"", [], 0
        if data and flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
            log.error("worker tenant=%s sent a truncated control message; dropped", worker.tenant)
            for fd in fds:
                os.close(fd)
            return
        if not data:
            for fd in fds:
                os.close(fd)
            if worker.exited is None:
                self._forget(worker, "control channel closed")
            else:
                self._close_control(worker)  # a stopping worker has exited
            return
        head, _, carried = data.partition(b"\n")
        try:
            event = json.loads(head)
        except ValueError:
            event = None
        if not isinstance(event, dict):
            for fd in fds:
                os.close(fd)
            return
        if fds:
            if event.get("event") == "bounce":
                if worker.slots is not None:
                    worker.slots.release(event.get("slot"))
                self._bounced(socket.socket(fileno=fds[0]), carried)
            else:
                for fd in fds:
                    os.close(fd)
            return
        kind = event.get("event")
        if kind != "stats":  # a periodic report is not activity
            worker.last_active = time.monotonic()
        if kind == "ready" and not worker.ready.done():
            sandbox = event.get("sandbox")
            worker.sandbox = sandbox if isinstance(sandbox, dict) else None
            if worker.sandbox is not None:
                log.info(
                    "worker sandbox tenant=%s uid=%s landlock_abi=%s no_new_privs=%s fds=%s",
                    worker.tenant,
                    worker.sandbox.get("uid"),
                    worker.sandbox.get("landlock"),
                    worker.sandbox.get("no_new_privs"),
                    worker.sandbox.get("fds"),
                )
            worker.ready.set_result(int(event.get("pid", worker.pid)))
        elif kind == "open":
            worker.sessions += 1
            worker.pending = max(0, worker.pending - 1)
        elif kind == "close":
            worker.sessions = max(0, worker.sessions - 1)
        elif kind == "rest_close":  # the worker closed a REST connection (or could not take it)
            if worker.slots is not None:
                worker.slots.release(event.get("slot"))
        elif kind == "stats":
            self.metrics.merge(worker.tenant, event)
            if event.get("rest"):  # requests on connections the worker serves: activity
                worker.last_active = time.monotonic()
            keys = event.get("keys")
            if keys and isinstance(keys, list) and self.on_keys_used is not None:
                try:
                    self.on_keys_used([str(k) for k in keys])
                except Exception as exc:  # bookkeeping; never fatal
                    log.warning("could not record the use of keys %s: %s", keys, exc)

    def _bounced(self, sock: socket.socket, carried: bytes) -> None:
        """A REST connection a worker handed back: the gateway serves it from here on."""
        self.rest_handbacks += 1
        if self.on_bounce is None:
            sock.close()
            return
        try:
            self.on_bounce(sock, carried)
        except Exception as exc:
            log.warning("could not take back a REST connection: %s", exc)
            sock.close()

    def _forget(self, worker: WorkerProcess, why: str, linger: bool = False) -> asyncio.Task[None]:
        """Stop routing to ``worker``; a task waits (off the event loop's critical path)
        for its process to end, killing it if it takes too long, and logs how it ended.

        ``linger`` (a worker told to stop): its control channel stays open until it has
        exited, for the REST connections it hands back."""
        if worker.exited is not None:
            return worker.exited
        worker.alive = False
        worker.rest.close()
        if not linger:
            self._close_control(worker)
        if not worker.ready.done():
            worker.ready.set_exception(ConnectionError(why))
        if self.workers.get(worker.tenant) is worker:
            del self.workers[worker.tenant]
        worker.exited = asyncio.get_running_loop().create_task(self._reap(worker, why))
        self._exiting[worker.tenant] = worker.exited
        return worker.exited

    def _drain_control(self, worker: WorkerProcess) -> None:
        """Read what the (exited) worker left on its control channel."""
        for _ in range(10_000):
            if worker.control.fileno() < 0 or not select.select([worker.control], [], [], 0)[0]:
                return
            self._on_control(worker)

    def _close_control(self, worker: WorkerProcess) -> None:
        if worker.control.fileno() < 0:
            return
        try:
            asyncio.get_running_loop().remove_reader(worker.control.fileno())
        except (RuntimeError, ValueError, OSError):
            pass
        worker.control.close()

    async def _reap(self, worker: WorkerProcess, why: str) -> None:
        # A worker told to stop finishes its calls and snapshots (shutdown_timeout);
        # one whose control channel closed exits at once.
        try:
            code = await _wait_for_exit(worker.proc, self.settings.shutdown_timeout + 5.0)
        finally:
            self._drain_control(worker)  # connections handed back just before the exit
            self._close_control(worker)
            if worker.slots is not None:
                answered = worker.slots.worker_gone()
                if answered:
                    log.warning("worker tenant=%s: %d REST requests in flight got 503", worker.tenant, answered)
                worker.slots.close()
                worker.slots = None
            if self._exiting.get(worker.tenant) is worker.exited:
                del self._exiting[worker.tenant]
        if code is None:
            log.error("worker tenant=%s pid=%d does not exit, even after SIGKILL (%s)", worker.tenant, worker.pid, why)
        elif code < 0 and not (worker.killed and code == -signal.SIGKILL):
            self.restarts += 1
            log.warning(
                "worker died tenant=%s pid=%d signal=%s (%s)", worker.tenant, worker.pid, _signal_name(-code), why
            )
        elif code > 0:
            self.restarts += 1
            log.warning("worker exited tenant=%s pid=%d status=%d (%s)", worker.tenant, worker.pid, code, why)
        else:
            log.info("worker stopped tenant=%s pid=%d (%s)", worker.tenant, worker.pid, why)

    def request_stop(self, tenant: str, why: str, kill: bool = False) -> asyncio.Task[None] | None:
        worker = self.workers.get(tenant)
        if worker is None:
            return None
        if worker.proc.poll() is None:
            if kill:
                worker.killed = True
                worker.proc.kill()
            else:
                worker.proc.terminate()
                return self._forget(worker, why, linger=True)
        return self._forget(worker, why)

    async def stop_worker(self, tenant: str, why: str = "stopped", kill: bool = False) -> None:
        """Stop ``tenant``'s worker (its open sessions end) and wait until it has exited:
        SIGTERM lets it finish in-flight calls and snapshot; ``kill`` (a deleted tenant,
        whose files are gone) stops it at once."""
        task = self.request_stop(tenant, why, kill)
        if task is not None:
            await task

    def end_sessions(self, tenant: str, key_ids: list[str], why: str) -> None:
        """Close ``tenant``'s open RPC sessions that were opened with one of ``key_ids``
        (revoked or expired keys); its other sessions go on."""
        worker = self.workers.get(tenant)
        if worker is None or not worker.alive:
            return
        try:
            worker.control.send(json.dumps({"end_sessions": key_ids, "why": why}).encode())
        except OSError as exc:
            self._forget(worker, f"control channel failed: {exc}")

    async def _reap_idle(self) -> None:
        while True:
            await asyncio.sleep(min(5.0, max(0.2, self.settings.worker_idle_timeout / 4)))
            now = time.monotonic()
            for tenant, worker in list(self.workers.items()):
                if worker.proc.poll() is not None:
                    self._forget(worker, "process exited")
                elif worker.idle_for(now) > self.settings.worker_idle_timeout:
                    self.request_stop(tenant, "idle")

    @property
    def running(self) -> bool:
        return self._reaper is not None and not self._reaper.done()

    def shutdown(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
        for tenant in list(self.workers):
            self.request_stop(tenant, "server shutdown")

    async def drain(self, timeout: float) -> None:
        """Graceful stop: SIGTERM every worker (each finishes its in-flight calls and
        snapshots its named indexes), wait up to ``timeout`` for them, then stop the rest."""
        if self._reaper is not None:
            self._reaper.cancel()
        workers = list(self.workers.values())
        for worker in workers:
            if worker.proc.poll() is None:
                worker.proc.terminate()
        deadline = time.monotonic() + timeout
        while any(w.proc.poll() is None for w in workers) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for worker in workers:
            if worker.proc.poll() is None:
                log.warning(
                    "worker tenant=%s pid=%d did not stop in %.0fs; killing it", worker.tenant, worker.pid, timeout
                )
                worker.killed = True
                worker.proc.kill()
            self._forget(worker, "server shutdown")
        await asyncio.gather(*(w.exited for w in workers if w.exited is not None))

    def snapshot(self) -> list[dict[str, Any]]:
        return [{"tenant": w.tenant, "pid": w.pid, "sessions": w.sessions} for w in self.workers.values()]


def others_can_traverse(path: Path) -> bool:
    """Whether a uid with no special rights can reach ``path`` (o+x on every ancestor)."""
    path = path.resolve()
    for directory in (path, *path.parents):
        try:
            if not directory.stat().st_mode & 0o001:
                return False
        except OSError:
            return False
    return True


async def _wait_for_exit(proc: subprocess.Popen[bytes], timeout: float) -> int | None:
    """The exit status of ``proc`` once it ends, SIGKILLing it after ``timeout`` s (None
    if even that does not end it within 5 s); polls, so the event loop serves meanwhile."""
    deadline = time.monotonic() + timeout
    delay = 0.005
    killed = False
    while proc.poll() is None:
        if time.monotonic() >= deadline:
            if killed:
                return None
            proc.kill()
            killed = True
            deadline = time.monotonic() + 5.0
        await asyncio.sleep(delay)
        delay = min(0.1, delay * 2)
    return proc.returncode


def _signal_name(num: int) -> str:
    try:
        return signal.Signals(num).name
    except ValueError:
        return str(num)

"""Build and run the gateway: catalog + supervisor + Tornado app on one port."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import ssl
import sys
import time
from pathlib import Path

import tornado.httpserver
import tornado.iostream
import tornado.netutil
import tornado.routing

from .access import AccessWatcher
from .app import make_app
from .catalog import Catalog
from .config import Settings
from .resthttp import PREFIX as REST_PREFIX
from .resthttp import RestGateway
from .supervisor import Supervisor

__all__ = ["Server", "serve"]

log = logging.getLogger("faiss_proxy.server")


class Server:
    """A running gateway; ``await start()``, then ``port``/``url``; ``stop()``."""

    def __init__(self, settings: Settings) -> None:
        from faiss_proxy_admin import AdminContext, AdminPassword, LoginThrottle, make_admin_app
        from faiss_proxy_admin.auth import PASSWORD_VARIABLE

        self.settings = settings
        self.catalog = Catalog(settings.data_path)
        self.supervisor = Supervisor(settings, uid_of=self.catalog.tenant_number)
        self.access = AccessWatcher(self.catalog, self.supervisor)
        self.app = make_app(settings, self.catalog, self.supervisor)
        self.rest = RestGateway(
            settings, self.catalog, self.supervisor, self.app.settings["rates"], self.app.settings["inflight"]
        )
        password = AdminPassword(self.catalog)
        self.generated_admin_password = password.ensure(os.environ.get(PASSWORD_VARIABLE))
        ctx = AdminContext(self.catalog, self.supervisor, settings, password, LoginThrottle())
        self.admin_app = make_admin_app(ctx, self.app.settings.get("log_function"))
        # One port: /v1/index... is the REST facade (on Tornado's HTTP layer, see
        # resthttp), /admin the admin application (its own cookies and XSRF), the rest
        # the API's Tornado application.
        self.router = tornado.routing.RuleRouter(
            [
                tornado.routing.Rule(tornado.routing.PathMatches(REST_PREFIX), self.rest),
                tornado.routing.Rule(tornado.routing.PathMatches(r"/admin(/.*)?"), self.admin_app),
                tornado.routing.Rule(tornado.routing.AnyMatches(), self.app),
            ]
        )
        self.http: tornado.httpserver.HTTPServer | None = None
        self.unix_http: tornado.httpserver.HTTPServer | None = None
        self.sockets: list[socket.socket] = []
        self.stopping = False
        # REST connections a worker hands back are served here again (see restdirect).
        self.supervisor.on_bounce = self.take_back
        self.supervisor.on_keys_used = self.catalog.note_used

    async def start(self) -> None:
        unix = self.bind_unix_socket() if self.settings.unix_socket else None  # first: its errors are the likelier
        self.sockets = tornado.netutil.bind_sockets(self.settings.port, self.settings.host)
        max_body = self.settings.max_body_mb * 1024 * 1024
        self.http = tornado.httpserver.HTTPServer(
            self.router, xheaders=False, max_body_size=max_body, ssl_options=self.ssl_context()
        )
        self.http.add_sockets(self.sockets)
        if unix is not None:
            # The same application, never over TLS: the connection stays on this machine.
            self.unix_http = tornado.httpserver.HTTPServer(self.router, xheaders=False, max_body_size=max_body)
            self.unix_http.add_sockets([unix])
        self.supervisor.start()
        self.access.start()

    def bind_unix_socket(self) -> socket.socket:
        """The ``unix_socket`` listener: mode 0666, so that the permissions of the
        directories above it decide who may connect (as the host decides for the TCP
        port; either way only a valid API key gets further).  A stale socket left by
        a server that died is replaced; any other file at that path is an error."""
        path = self.unix_socket_path
        if path.exists() and not path.is_socket():
            raise SystemExit(f"cannot serve on the Unix socket {path} (unix_socket): a file that is no socket is there")
        if path.is_socket():
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                probe.connect(str(path))
            except OSError:
                pass  # nobody listens: a stale socket
            else:
                raise SystemExit(f"another server is listening on the Unix socket {path} (unix_socket)")
            finally:
                probe.close()
        try:
            return tornado.netutil.bind_unix_socket(str(path), mode=0o666, backlog=128)
        except (OSError, ValueError) as exc:
            raise SystemExit(f"cannot serve on the Unix socket {path} (unix_socket): {exc}") from None

    @property
    def unix_socket_path(self) -> Path:
        return Path(self.settings.unix_socket).expanduser().absolute()

    def take_back(self, sock: socket.socket, carried: bytes) -> None:
        """Serve a REST connection a worker handed back, starting with the bytes it had
        read (its next request), as if it had just been accepted."""
        http = self.unix_http if sock.family == socket.AF_UNIX else self.http
        if http is None or self.stopping:
            sock.close()
            return
        try:
            address = sock.getpeername()
        except OSError:  # the client has gone
            sock.close()
            return
        http.handle_stream(_CarriedIOStream(sock, carried), address)

    def ssl_context(self) -> ssl.SSLContext | None:
        s = self.settings
        if not s.tls_cert and not s.tls_key:
            return None
        if not (s.tls_cert and s.tls_key):
            raise SystemExit("TLS needs both --tls-cert and --tls-key")
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(s.tls_cert, s.tls_key)
        return context

    @property
    def tls(self) -> bool:
        return bool(self.settings.tls_cert)

    @property
    def port(self) -> int:
        port: int = self.sockets[0].getsockname()[1]
        return port

    @property
    def url(self) -> str:
        host = self.settings.host
        host = f"[{host}]" if ":" in host else host
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}"

    @property
    def urls(self) -> str:
        """Where this server listens, for the start-up line."""
        if not self.settings.unix_socket:
            return self.url
        return f"{self.url} and unix://{self.unix_socket_path}"

    async def stop(self) -> None:
        """Graceful: stop accepting, let in-flight REST requests finish, let workers
        finish their calls and snapshot (all within ``shutdown_timeout``), then close."""
        timeout = self.settings.shutdown_timeout
        deadline = time.monotonic() + timeout
        self.access.stop()
        self.stopping = True
        for http in (self.http, self.unix_http):
            if http is not None:
                http.stop()
        inflight = self.app.settings["inflight"]
        while inflight.count > 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        await self.supervisor.drain(max(1.0, deadline - time.monotonic()))
        for http in (self.http, self.unix_http):
            if http is not None:
                await http.close_all_connections()
        if self.settings.unix_socket:
            with contextlib.suppress(OSError):
                self.unix_socket_path.unlink()


class _CarriedIOStream(tornado.iostream.IOStream):
    """An IOStream whose first reads return ``carried``: the bytes a worker had already
    read from the socket when it handed the connection back."""

    def __init__(self, sock: socket.socket, carried: bytes) -> None:
        self._carried = memoryview(carried)
        super().__init__(sock)

    def read_from_fd(self, buf: bytearray | memoryview) -> int | None:
        if self._carried:
            n = min(len(buf), len(self._carried))
            buf[:n] = self._carried[:n]
            self._carried = self._carried[n:]
            return n
        return super().read_from_fd(buf)


async def serve(settings: Settings) -> None:
    """Run until SIGINT/SIGTERM, then stop workers and exit cleanly."""
    server = Server(settings)
    await server.start()
    log.info("faiss-proxy listening on %s (data dir %s)", server.urls, settings.data_path)
    if server.generated_admin_password:
        _show_generated_password(server.url, server.generated_admin_password, settings.log_format)
    if not server.catalog.list_tenants():
        log.info("no tenants yet: run 'faiss-proxy tenant create NAME' and 'faiss-proxy key create NAME'")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down")
    await server.stop()


def _show_generated_password(url: str, generated: str, log_format: str) -> None:
    """Shown once, on the console, never through the log pipeline (which may ship logs elsewhere)."""
    hint = "generated now and shown only once; set FAISS_PROXY_ADMIN_PASSWORD or run 'faiss-proxy admin-password'"
    if log_format == "json":
        record = {"level": "warning", "logger": "faiss_proxy.admin", "message": hint, "admin_url": url + "/admin"}
        record.update(user="admin", admin_password=generated)
        text = json.dumps(record)
    else:
        text = f"faiss-proxy admin page: {url}/admin  user: admin  password: {generated}\n  ({hint})"
    sys.stderr.write(text + "\n")  # one write: the log thread writes to stderr too
    sys.stderr.flush()

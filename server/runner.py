"""Build and run the gateway: catalog + supervisor + Tornado app on one port."""

from __future__ import annotations

import asyncio
import logging
import signal
import socket

import tornado.httpserver
import tornado.netutil

from .app import make_app
from .catalog import Catalog
from .config import Settings
from .supervisor import Supervisor

__all__ = ["Server", "serve"]

log = logging.getLogger("faiss_proxy.server")


class Server:
    """A running gateway; ``await start()``, then ``port``/``url``; ``stop()``."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.catalog = Catalog(settings.data_path)
        self.supervisor = Supervisor(settings)
        self.app = make_app(settings, self.catalog, self.supervisor)
        self.http: tornado.httpserver.HTTPServer | None = None
        self.sockets: list[socket.socket] = []

    async def start(self) -> None:
        self.sockets = tornado.netutil.bind_sockets(self.settings.port, self.settings.host)
        self.http = tornado.httpserver.HTTPServer(
            self.app, xheaders=False, max_body_size=self.settings.max_body_mb * 1024 * 1024
        )
        self.http.add_sockets(self.sockets)
        self.supervisor.start()

    @property
    def port(self) -> int:
        port: int = self.sockets[0].getsockname()[1]
        return port

    @property
    def url(self) -> str:
        host = self.settings.host
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.port}"

    async def stop(self) -> None:
        if self.http is not None:
            self.http.stop()
            await self.http.close_all_connections()
        self.supervisor.shutdown()


async def serve(settings: Settings) -> None:
    """Run until SIGINT/SIGTERM, then stop workers and exit cleanly."""
    server = Server(settings)
    await server.start()
    log.info("faiss-proxy listening on %s (data dir %s)", server.url, settings.data_path)
    if not server.catalog.list_tenants():
        log.info("no tenants yet: run 'faiss-proxy tenant create NAME' and 'faiss-proxy key create NAME'")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down")
    await server.stop()

"""The gateway's Tornado application (one port, shared with the REST facade and the admin page).

Routes (this module keeps them thin; the work is in the catalog and supervisor):

``GET /v1/health``        liveness, no authentication
``GET /v1/openapi.json``  the REST API's description, no authentication
``GET /v1/metrics``       Prometheus metrics (see :mod:`.metrics`)
``GET /v1/rpc``           the RPC upgrade: ``Connection: Upgrade``, ``Upgrade: faiss-proxy-rpc``
                          and ``Authorization: Bearer <key>``.  A missing, malformed,
                          tampered, expired or revoked key gets 401 before any RPyC byte
                          is read.  On success the gateway answers ``101 Switching
                          Protocols`` and passes the socket to the tenant's worker.
``/v1/index...``          the REST facade on named indexes: not this application but
                          :mod:`.resthttp` on Tornado's HTTP layer (the server's router
                          sends it there); run in the tenant's worker (:mod:`.rest`,
                          :mod:`.restchannel`).

Every REST error has one JSON shape, ``{"error": {"code": ..., "message": ...}}``,
and every request is logged on one line with tenant, operation, status and duration.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import secrets
import socket
import time
from typing import Any

import tornado.iostream
import tornado.web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from faiss_proxy import __version__

from .catalog import Catalog, Principal
from .config import Settings
from .errors import (
    BadRequest,
    NotFound,
    ProxyError,
    TooManyRequests,
    Unauthorized,
    describe,
)
from .limits import RateLimits
from .metrics import MetricsCollector
from .openapi import openapi_spec
from .resthttp import Inflight, authenticate, log_http, take_rate
from .supervisor import Supervisor

__all__ = ["make_app", "RPC_PROTOCOL"]

log = logging.getLogger("faiss_proxy.access")
RPC_PROTOCOL = "faiss-proxy-rpc"


class BaseHandler(tornado.web.RequestHandler):
    """JSON errors in one shape; the tenant is remembered for the access log."""

    tenant: str | None = None
    operation: str = "-"

    @property
    def catalog(self) -> Catalog:
        catalog: Catalog = self.application.settings["catalog"]
        return catalog

    @property
    def supervisor(self) -> Supervisor:
        supervisor: Supervisor = self.application.settings["supervisor"]
        return supervisor

    @property
    def proxy_settings(self) -> Settings:
        settings: Settings = self.application.settings["proxy_settings"]
        return settings

    def authenticate(self) -> Principal:
        principal = authenticate(self.request.headers, self.catalog)
        self.tenant = principal.tenant  # logged from here on, 429 included
        rates: RateLimits = self.application.settings["rates"]
        take_rate(rates, principal.tenant)
        return principal

    def write_json(self, status: int, body: Any) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(body))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        code, message = describe(exc, self._reason)
        if isinstance(exc, ProxyError):
            for name, value in exc.http_headers().items():
                self.set_header(name, value)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"error": {"code": code, "message": message}}))

    def _handle_request_exception(self, e: BaseException) -> None:
        if isinstance(e, ProxyError):
            self.send_error(e.status, exc_info=(type(e), e, e.__traceback__))
            return
        super()._handle_request_exception(e)


class HealthHandler(BaseHandler):
    operation = "health"

    def get(self) -> None:
        started: float = self.application.settings["started"]
        self.write_json(
            200,
            {
                "status": "ok",
                "version": __version__,
                "uptime_s": round(time.monotonic() - started, 3),
                "workers": len(self.supervisor.workers),
            },
        )


class ReadyHandler(BaseHandler):
    """Readiness: the data dir takes writes, the catalog answers, the supervisor runs."""

    operation = "ready"

    def get(self) -> None:
        checks = {
            "data_dir": _check_writable(self.proxy_settings.data_path),
            "catalog": _check(lambda: self.catalog.list_tenants()),
            "supervisor": "ok" if self.supervisor.running else "stopped",
        }
        ready = all(v == "ok" for v in checks.values())
        started: float = self.application.settings["started"]
        self.write_json(
            200 if ready else 503,
            {
                "status": "ready" if ready else "not ready",
                "version": __version__,
                "uptime_s": round(time.monotonic() - started, 3),
                "workers": len(self.supervisor.workers),
                "checks": checks,
            },
        )


def _check(fn: Any) -> str:
    try:
        fn()
    except Exception as exc:
        return f"error: {exc}"
    return "ok"


def _check_writable(directory: Any) -> str:
    probe = directory / f".ready-{secrets.token_hex(4)}"
    try:
        with open(probe, "xb") as fh:
            fh.write(b"ok")
        probe.unlink()
    except OSError as exc:
        return f"not writable: {exc.strerror or exc}"
    return "ok"


class RpcUpgradeHandler(BaseHandler):
    operation = "rpc"

    async def get(self) -> None:
        principal = self.authenticate()
        upgrade = self.request.headers.get("Upgrade", "").strip().lower()
        connection = self.request.headers.get("Connection", "").lower()
        if upgrade != RPC_PROTOCOL or "upgrade" not in connection:
            raise BadRequest(f"RPC sessions need 'Connection: Upgrade' and 'Upgrade: {RPC_PROTOCOL}'")
        # Start the worker before answering 101, so a failure is still an HTTP error.
        worker = await self.supervisor.worker_for(principal.tenant)
        limit = self.proxy_settings.tenant_max_sessions
        if limit and worker.sessions + worker.pending >= limit:
            raise TooManyRequests(f"tenant '{principal.tenant}' already has {limit} RPC sessions open (its limit)")
        header = {
            "session": secrets.token_hex(6),
            "tenant": principal.tenant,
            "key_id": principal.key_id,
            "scope": principal.scope,
            "peer": self.request.remote_ip,
        }
        self.set_status(101)
        self.application.log_request(self)
        stream = self.detach()
        if isinstance(stream, tornado.iostream.SSLIOStream):
            await self._relay(stream, principal.tenant, header)
            return
        # From here on the gateway must not read from the socket: the worker
        # writes the 101 response itself, after it owns the descriptor, so no
        # RPyC byte can land in Tornado's read buffer.
        try:
            sock = stream.socket
            if sock is None or stream._read_buffer_size:  # the client spoke before the 101
                return
            await self.supervisor.hand_off(principal.tenant, sock, header)
        except Exception as exc:
            log.warning("rpc hand-off failed tenant=%s: %s", principal.tenant, exc)
        finally:
            stream.close()

    async def _relay(self, stream: tornado.iostream.IOStream, tenant: str, header: dict[str, Any]) -> None:
        """Over TLS the encryption state stays here: the worker gets one end of a
        socket pair and the gateway copies bytes between it and the TLS stream."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            await self.supervisor.hand_off(tenant, theirs, {**header, "relayed": True})
        except Exception as exc:
            log.warning("rpc hand-off failed tenant=%s: %s", tenant, exc)
            ours.close()
            stream.close()
            return
        finally:
            theirs.close()
        inner = tornado.iostream.IOStream(ours)
        try:
            await stream.write(SWITCHING_PROTOCOLS)
        except tornado.iostream.StreamClosedError:
            inner.close()
            return
        await asyncio.gather(_pump(stream, inner), _pump(inner, stream))


async def _pump(src: tornado.iostream.IOStream, dst: tornado.iostream.IOStream) -> None:
    try:
        while True:
            data = await src.read_bytes(1 << 20, partial=True)
            await dst.write(data)
    except tornado.iostream.StreamClosedError:
        pass
    finally:
        src.close()
        dst.close()


SWITCHING_PROTOCOLS = (
    f"HTTP/1.1 101 Switching Protocols\r\nUpgrade: {RPC_PROTOCOL}\r\nConnection: Upgrade\r\n\r\n".encode()
)


class OpenApiHandler(BaseHandler):
    operation = "openapi"

    def get(self) -> None:
        self.write_json(200, openapi_spec(__version__))


class MetricsHandler(BaseHandler):
    """Prometheus text format; with the ``metrics_token`` setting, only for
    ``Authorization: Bearer <metrics token>``."""

    operation = "metrics"

    def get(self) -> None:
        token = self.proxy_settings.metrics_token
        if token:
            header = self.request.headers.get("Authorization", "")
            given = header[7:].strip() if header[:7].lower() == "bearer " else ""
            if not hmac.compare_digest(given.encode(), token.encode()):
                raise Unauthorized("metrics need 'Authorization: Bearer <metrics token>'")
        registry: CollectorRegistry = self.application.settings["registry"]
        self.set_header("Content-Type", CONTENT_TYPE_LATEST)
        self.finish(generate_latest(registry))


def _log_request(handler: tornado.web.RequestHandler) -> None:
    """One line per request: tenant, operation, method, path, status, duration (never keys or bodies)."""
    if getattr(handler, "_fp_logged", False):
        return
    handler._fp_logged = True  # type: ignore[attr-defined]
    request = handler.request
    log_http(
        getattr(handler, "tenant", None),
        getattr(handler, "operation", "-"),
        request.method or "-",
        request.path,
        handler.get_status(),
        1000.0 * request.request_time(),
    )


def make_app(settings: Settings, catalog: Catalog, supervisor: Supervisor) -> tornado.web.Application:
    registry = CollectorRegistry(auto_describe=True)
    registry.register(MetricsCollector(supervisor.metrics, supervisor))
    return tornado.web.Application(
        [
            (r"/v1/health", HealthHandler),
            (r"/v1/ready", ReadyHandler),
            (r"/v1/rpc", RpcUpgradeHandler),
            (r"/v1/openapi.json", OpenApiHandler),
            (r"/v1/metrics", MetricsHandler),
        ],
        catalog=catalog,
        registry=registry,
        inflight=Inflight(),
        rates=RateLimits(settings.tenant_rate_limit),
        supervisor=supervisor,
        proxy_settings=settings,
        started=time.monotonic(),
        log_function=_log_request,
        default_handler_class=NotFoundHandler,
    )


class NotFoundHandler(BaseHandler):
    def prepare(self) -> None:
        raise NotFound(f"no such endpoint: {self.request.path}")

"""The gateway: one Tornado application on one port.

Routes (this module keeps them thin; the work is in the catalog and supervisor):

``GET /v1/health``  liveness, no authentication
``GET /v1/rpc``     the RPC upgrade: ``Connection: Upgrade``, ``Upgrade: faiss-proxy-rpc``
                    and ``Authorization: Bearer <key>``.  A missing, malformed,
                    tampered, expired or revoked key gets 401 before any RPyC byte
                    is read.  On success the gateway answers ``101 Switching
                    Protocols`` and passes the socket to the tenant's worker.

Every REST error has one JSON shape, ``{"error": {"code": ..., "message": ...}}``,
and every request is logged on one line with tenant, operation, status and duration.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from typing import Any

import tornado.web

from faiss_proxy import __version__

from .catalog import Catalog, Principal
from .config import Settings
from .errors import BadRequest, NotFound, ProxyError, Unauthorized
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

    def authenticate(self) -> Principal:
        header = self.request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if not header:
            token = self.request.headers.get("X-API-Key", "")
            scheme = "Bearer" if token else ""
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized("missing API key: send 'Authorization: Bearer <key>'")
        principal = self.catalog.authenticate(token.strip())
        self.tenant = principal.tenant
        return principal

    def write_json(self, status: int, body: Any) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(body))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, ProxyError):
            code, message = exc.code, exc.message
        elif isinstance(exc, tornado.web.HTTPError):
            code, message = "http_error", exc.log_message or self._reason
        else:
            code, message = "internal", "internal server error"
        if status_code == 401:
            self.set_header("WWW-Authenticate", 'Bearer realm="faiss-proxy"')
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


class RpcUpgradeHandler(BaseHandler):
    operation = "rpc"

    async def get(self) -> None:
        principal = self.authenticate()
        upgrade = self.request.headers.get("Upgrade", "").strip().lower()
        connection = self.request.headers.get("Connection", "").lower()
        if upgrade != RPC_PROTOCOL or "upgrade" not in connection:
            raise BadRequest(f"RPC sessions need 'Connection: Upgrade' and 'Upgrade: {RPC_PROTOCOL}'")
        # Start the worker before answering 101, so a failure is still an HTTP error.
        await self.supervisor.worker_for(principal.tenant)
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


def _log_request(handler: tornado.web.RequestHandler) -> None:
    if getattr(handler, "_fp_logged", False):
        return
    handler._fp_logged = True  # type: ignore[attr-defined]
    status = handler.get_status()
    level = logging.INFO if status < 500 else logging.ERROR
    log.log(
        level,
        "http tenant=%s op=%s method=%s path=%s status=%d duration=%.2fms",
        getattr(handler, "tenant", None) or "-",
        getattr(handler, "operation", "-"),
        handler.request.method,
        handler.request.path,
        status,
        1000.0 * handler.request.request_time(),
    )


def make_app(settings: Settings, catalog: Catalog, supervisor: Supervisor) -> tornado.web.Application:
    return tornado.web.Application(
        [
            (r"/v1/health", HealthHandler),
            (r"/v1/rpc", RpcUpgradeHandler),
        ],
        catalog=catalog,
        supervisor=supervisor,
        proxy_settings=settings,
        started=time.monotonic(),
        log_function=_log_request,
        default_handler_class=NotFoundHandler,
    )


class NotFoundHandler(BaseHandler):
    def prepare(self) -> None:
        raise NotFound(f"no such endpoint: {self.request.path}")

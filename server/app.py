"""The gateway: one Tornado application on one port.

Routes (this module keeps them thin; the work is in the catalog and supervisor):

``GET /v1/health``        liveness, no authentication
``GET /v1/openapi.json``  the REST API's description, no authentication
``GET /v1/metrics``       request counters in Prometheus text format
``GET /v1/rpc``           the RPC upgrade: ``Connection: Upgrade``, ``Upgrade: faiss-proxy-rpc``
                          and ``Authorization: Bearer <key>``.  A missing, malformed,
                          tampered, expired or revoked key gets 401 before any RPyC byte
                          is read.  On success the gateway answers ``101 Switching
                          Protocols`` and passes the socket to the tenant's worker.
``/v1/index...``          the REST facade on named indexes: authenticated here, run
                          in the tenant's worker (:mod:`.rest`, :mod:`.restchannel`).

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
from .errors import BadRequest, Forbidden, NotFound, PayloadTooLarge, ProxyError, Unauthorized
from .openapi import openapi_spec
from .rest import MUTATING_OPERATIONS
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


@tornado.web.stream_request_body
class RestHandler(BaseHandler):
    """A REST operation on named indexes, forwarded to the tenant's worker.

    Subclasses map HTTP methods to operation names; the URL's groups become the
    operation's ``index`` and ``vector`` arguments.  The key is checked, and a
    read-only key refused for mutations, before the body is read."""

    methods: tuple[tuple[str, str], ...] = ()  # (HTTP method, operation)
    groups: tuple[str, ...] = ()

    def prepare(self) -> None:
        self._body = bytearray()
        op = dict(self.methods).get(self.request.method or "")
        if op is None:
            raise tornado.web.HTTPError(405)
        self.operation = op
        principal = self.authenticate()
        if op in MUTATING_OPERATIONS and principal.read_only:
            raise Forbidden(f"this API key is read-only; '{op}' changes data")
        self.principal = principal
        limit = self.proxy_settings.max_body_mb * 1024 * 1024
        self._limit = limit
        length = self.request.headers.get("Content-Length")
        if length is not None and length.isdigit() and int(length) > limit:
            raise PayloadTooLarge(f"request body over {self.proxy_settings.max_body_mb} MiB (max_body_mb)")
        connection: Any = self.request.connection
        if connection is not None:
            connection.set_max_body_size(limit)

    def data_received(self, chunk: bytes) -> None:
        self._body += chunk

    @property
    def proxy_settings(self) -> Settings:
        settings: Settings = self.application.settings["proxy_settings"]
        return settings

    async def _forward(self, *args: str) -> None:
        path = dict(zip(self.groups, args, strict=True))
        query = {k: v[-1].decode("utf-8", "replace") for k, v in self.request.query_arguments.items()}
        counters: Counters = self.application.settings["counters"]
        status, body = await self.supervisor.rest(self.principal.tenant, self.operation, path, query, bytes(self._body))
        counters.count(self.principal.tenant, self.operation, status)
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(body)

    async def get(self, *args: str) -> None:
        await self._forward(*args)

    async def post(self, *args: str) -> None:
        await self._forward(*args)

    async def delete(self, *args: str) -> None:
        await self._forward(*args)


class IndexesHandler(RestHandler):
    methods = (("GET", "list"), ("POST", "create"))


class IndexHandler(RestHandler):
    methods = (("GET", "info"), ("DELETE", "drop"))
    groups = ("index",)


class VectorsHandler(RestHandler):
    methods = (("POST", "upsert"),)
    groups = ("index",)


class VectorHandler(RestHandler):
    methods = (("GET", "get_vector"), ("DELETE", "delete_vector"))
    groups = ("index", "vector")


class SearchHandler(RestHandler):
    methods = (("GET", "search"), ("POST", "search"))
    groups = ("index",)


class TrainHandler(RestHandler):
    methods = (("POST", "train"),)
    groups = ("index",)


class NtotalHandler(RestHandler):
    methods = (("GET", "ntotal"),)
    groups = ("index",)


class ResetHandler(RestHandler):
    methods = (("POST", "reset"),)
    groups = ("index",)


class SpecializedSearchHandler(RestHandler):
    methods = (("POST", "specialized_search"),)
    groups = ("index",)


class OpenApiHandler(BaseHandler):
    operation = "openapi"

    def get(self) -> None:
        self.write_json(200, openapi_spec(__version__))


class Counters:
    """Request counts by tenant, operation and status (the operations issue adds more)."""

    def __init__(self) -> None:
        self.requests: dict[tuple[str, str, int], int] = {}

    def count(self, tenant: str, op: str, status: int) -> None:
        key = (tenant, op, status)
        self.requests[key] = self.requests.get(key, 0) + 1


class MetricsHandler(BaseHandler):
    operation = "metrics"

    def get(self) -> None:
        counters: Counters = self.application.settings["counters"]
        lines = [
            "# HELP faiss_proxy_rest_requests_total REST requests on named indexes.",
            "# TYPE faiss_proxy_rest_requests_total counter",
        ]
        for (tenant, op, status), n in sorted(counters.requests.items()):
            lines.append(f'faiss_proxy_rest_requests_total{{tenant="{tenant}",operation="{op}",status="{status}"}} {n}')
        lines += [
            "# HELP faiss_proxy_workers Tenant worker processes running.",
            "# TYPE faiss_proxy_workers gauge",
            f"faiss_proxy_workers {len(self.supervisor.workers)}",
            "# HELP faiss_proxy_worker_restarts_total Tenant workers that died (signal or error exit).",
            "# TYPE faiss_proxy_worker_restarts_total counter",
            f"faiss_proxy_worker_restarts_total {self.supervisor.restarts}",
        ]
        self.set_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
        self.finish("\n".join(lines) + "\n")


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
            (r"/v1/openapi.json", OpenApiHandler),
            (r"/v1/metrics", MetricsHandler),
            (r"/v1/index/?", IndexesHandler),
            (r"/v1/index/([^/]+)", IndexHandler),
            (r"/v1/index/([^/]+)/vectors", VectorsHandler),
            (r"/v1/index/([^/]+)/vectors/([^/]+)", VectorHandler),
            (r"/v1/index/([^/]+)/search", SearchHandler),
            (r"/v1/index/([^/]+)/train", TrainHandler),
            (r"/v1/index/([^/]+)/ntotal", NtotalHandler),
            (r"/v1/index/([^/]+)/reset", ResetHandler),
            (r"/v1/index/([^/]+)/specialized_search", SpecializedSearchHandler),
        ],
        catalog=catalog,
        counters=Counters(),
        supervisor=supervisor,
        proxy_settings=settings,
        started=time.monotonic(),
        log_function=_log_request,
        default_handler_class=NotFoundHandler,
    )


class NotFoundHandler(BaseHandler):
    def prepare(self) -> None:
        raise NotFound(f"no such endpoint: {self.request.path}")

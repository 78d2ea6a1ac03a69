"""Admin pages and the admin JSON API: one small handler class per route.

Pages (server-side rendered, one template each, every form with ``xsrf_form_html()``):

``GET  /admin/login``, ``POST /admin/login``, ``POST /admin/logout``
``GET  /admin``                              tenants, their workers and usage; create
``GET  /admin/tenants/{t}``                  named indexes and API keys of one tenant
``POST /admin/tenants``                      create a tenant
``POST /admin/tenants/{t}/suspend|resume``   suspended tenants' keys get 403
``POST /admin/tenants/{t}/delete``           needs the tenant's name typed as confirmation
``POST /admin/tenants/{t}/keys``             create a key; the key is shown once
``POST /admin/keys/{id}/revoke``

The same operations as JSON under ``/admin/api/`` (see :class:`ApiHandler`); they
take the session cookie (with the XSRF header) or HTTP Basic auth as ``admin``.
Catalog work runs off the IOLoop (``asyncio.to_thread``).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import datetime as dt
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import tornado.web

from faiss_proxy_server.catalog import ApiKey, Catalog, Tenant
from faiss_proxy_server.cli import parse_expiry
from faiss_proxy_server.config import Settings
from faiss_proxy_server.errors import BadRequest, Forbidden, NotFound, ProxyError, Unauthorized, describe
from faiss_proxy_server.metrics import rss_bytes
from faiss_proxy_server.supervisor import Supervisor

from .auth import ADMIN_USER, AdminPassword, LoginThrottle

__all__ = ["AdminContext", "admin_routes", "COOKIE"]

COOKIE = "fp_admin"
SESSION_DAYS = 1


@dataclass
class AdminContext:
    catalog: Catalog
    supervisor: Supervisor
    settings: Settings
    password: AdminPassword
    throttle: LoginThrottle


class TooManyAttempts(ProxyError):
    status = 429
    code = "too_many_requests"


# --- what the pages show ------------------------------------------------------------------
def _when(ts: float | None) -> str:
    if ts is None:
        return "—"
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


def _size(n: float | None) -> str:
    if n is None:
        return "—"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def tenant_usage(ctx: AdminContext, tenant: Tenant, keys: list[ApiKey]) -> dict[str, Any]:
    """One tenant's row: worker state, named indexes, vectors, memory, requests, activity."""
    sup = ctx.supervisor
    worker = sup.workers.get(tenant.name)
    requests = errors = 0
    with sup.metrics._lock:
        for (name, _api, _op), entry in sup.metrics.requests.items():
            if name == tenant.name:
                requests += entry[0]
                errors += entry[1]
        reported = dict(sup.metrics.tenants.get(tenant.name, {}))
    on_disk = ctx.catalog.tenant_dir(tenant.name) / "indexes"
    indexes = sum(1 for p in on_disk.iterdir() if (p / "snapshot.bin").exists()) if on_disk.is_dir() else 0
    last = [k.last_used_at for k in keys if k.last_used_at is not None]
    if worker is not None:
        last.append(time.time() - (time.monotonic() - worker.last_active))
    return {
        "name": tenant.name,
        "status": tenant.status,
        "created_at": tenant.created_at,
        "worker": (
            {"state": "running", "pid": worker.pid, "sessions": worker.sessions, "rss_bytes": rss_bytes(worker.pid)}
            if worker is not None and worker.alive
            else {"state": "stopped", "pid": None, "sessions": 0, "rss_bytes": None}
        ),
        "named_indexes": indexes,
        "vectors": int(reported["vectors"]) if "vectors" in reported else None,
        "requests": requests,
        "errors": errors,
        "last_activity": max(last) if last else None,
        "keys": sum(1 for k in keys if k.revoked_at is None),
    }


def key_row(key: ApiKey) -> dict[str, Any]:
    now = time.time()
    state = "active"
    if key.revoked_at is not None:
        state = "revoked"
    elif key.expires_at is not None and key.expires_at <= now:
        state = "expired"
    return {
        "key_id": key.key_id,
        "name": key.name,
        "scope": key.scope,
        "created_at": key.created_at,
        "expires_at": key.expires_at,
        "last_used_at": key.last_used_at,
        "revoked_at": key.revoked_at,
        "state": state,
    }


# --- base handlers --------------------------------------------------------------------------
class AdminHandler(tornado.web.RequestHandler):
    """Session from a signed cookie; HTML error pages."""

    operation = "admin"
    tenant: str | None = None

    @property
    def ctx(self) -> AdminContext:
        ctx: AdminContext = self.application.settings["admin"]
        return ctx

    def get_current_user(self) -> str | None:
        value = self.get_signed_cookie(COOKIE, max_age_days=SESSION_DAYS)
        return ADMIN_USER if value == ADMIN_USER.encode() else None

    def set_default_headers(self) -> None:
        self.set_header("X-Frame-Options", "DENY")
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Referrer-Policy", "same-origin")
        self.set_header(
            "Content-Security-Policy",
            "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
        )
        self.set_header("Cache-Control", "no-store")

    def render_page(self, template: str, status: int = 200, **kwargs: Any) -> None:
        self.set_status(status)
        self.render(template, when=_when, size=_size, flash=kwargs.pop("flash", None), **kwargs)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        message = exc.message if isinstance(exc, ProxyError) else self._reason
        if isinstance(exc, tornado.web.HTTPError) and exc.log_message:
            message = exc.log_message if status_code != 403 else "forbidden (missing or wrong XSRF token?)"
        self.render("error.html", status=status_code, message=message, when=_when, size=_size, flash=None)

    def _handle_request_exception(self, e: BaseException) -> None:
        if isinstance(e, ProxyError):
            self.send_error(e.status, exc_info=(type(e), e, e.__traceback__))
            return
        super()._handle_request_exception(e)

    def client_address(self) -> str:
        return str(self.request.remote_ip or "-")


def _sync(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Awaitable[Any]:
    return asyncio.to_thread(fn, *args, **kwargs)


# --- login ------------------------------------------------------------------------------------
class LoginHandler(AdminHandler):
    operation = "admin.login"

    def get(self) -> None:
        if self.current_user:
            self.redirect("/admin")
            return
        self.render_page("login.html", error=None, next=self.get_argument("next", "/admin"))

    async def post(self) -> None:
        address = self.client_address()
        wait = self.ctx.throttle.wait_time(address)
        nxt = self.get_argument("next", "/admin")
        if not nxt.startswith("/admin") or nxt.startswith("//"):
            nxt = "/admin"
        if wait > 0:
            self.set_header("Retry-After", str(int(wait) + 1))
            self.render_page(
                "login.html", status=429, error=f"Too many failed logins: wait {int(wait) + 1} s.", next=nxt
            )
            return
        user = self.get_argument("username", "")
        password = self.get_argument("password", "")
        ok = user == ADMIN_USER and await _sync(self.ctx.password.verify, password)
        if not ok:
            self.ctx.throttle.failed(address)
            self.render_page("login.html", status=401, error="Wrong user name or password.", next=nxt)
            return
        self.ctx.throttle.succeeded(address)
        self.set_signed_cookie(
            COOKIE,
            ADMIN_USER,
            expires_days=SESSION_DAYS,
            httponly=True,
            samesite="Strict",
            secure=bool(self.ctx.settings.tls_cert),
        )
        self.redirect(nxt)


class LogoutHandler(AdminHandler):
    operation = "admin.logout"

    def post(self) -> None:
        self.clear_cookie(COOKIE)
        self.redirect("/admin/login")


# --- pages --------------------------------------------------------------------------------------
class TenantsPage(AdminHandler):
    operation = "admin.tenants"

    @tornado.web.authenticated
    async def get(self) -> None:
        await self.show()

    async def show(self, status: int = 200, flash: str | None = None) -> None:
        rows = await _sync(_tenant_rows, self.ctx)
        self.render_page("tenants.html", status=status, tenants=rows, flash=flash)

    @tornado.web.authenticated
    async def post(self) -> None:
        name = self.get_argument("name", "").strip()
        try:
            await _sync(self.ctx.catalog.create_tenant, name)
        except ProxyError as exc:
            await self.show(exc.status, exc.message)
            return
        self.redirect(f"/admin/tenants/{name}")


def _tenant_rows(ctx: AdminContext) -> list[dict[str, Any]]:
    keys = ctx.catalog.list_keys()
    return [tenant_usage(ctx, t, [k for k in keys if k.tenant == t.name]) for t in ctx.catalog.list_tenants()]


async def tenant_detail(ctx: AdminContext, name: str) -> dict[str, Any]:
    tenant = await _sync(ctx.catalog.get_tenant, name)
    keys = await _sync(ctx.catalog.list_keys, name)
    indexes: list[dict[str, Any]] = []
    error = None
    stored = ctx.catalog.tenant_dir(name) / "indexes"
    if tenant.status != "active":
        # Asking the worker would start it for a tenant that may not run (and load every index).
        count = sum(1 for p in stored.iterdir() if p.is_dir()) if stored.is_dir() else 0
        error = f"the tenant is {tenant.status}: its worker is stopped ({count} named indexes on disk)"
    elif stored.is_dir():
        try:
            status, body = await ctx.supervisor.rest(name, "list", {}, {}, b"")
            if status == 200:
                indexes = json.loads(body)["indexes"]
            else:
                error = json.loads(body)["error"]["message"]
        except ProxyError as exc:
            error = exc.message
    return {
        "tenant": tenant_usage(ctx, tenant, keys),
        "keys": [key_row(k) for k in keys],
        "indexes": indexes,
        "indexes_error": error,
    }


async def show_tenant(
    handler: AdminHandler, name: str, status: int = 200, flash: str | None = None, new_key: Any = None
) -> None:
    detail = await tenant_detail(handler.ctx, name)
    handler.render_page("tenant.html", status=status, flash=flash, new_key=new_key, **detail)


class TenantPage(AdminHandler):
    operation = "admin.tenant"

    @tornado.web.authenticated
    async def get(self, name: str) -> None:
        await show_tenant(self, name)


class TenantAction(AdminHandler):
    operation = "admin.tenant_action"

    @tornado.web.authenticated
    async def post(self, name: str, action: str) -> None:
        try:
            if action == "delete":
                if self.get_argument("confirm", "") != name:
                    raise BadRequest(f"type the tenant's name ({name}) to confirm deleting it")
                await delete_tenant(self.ctx, name)
                self.redirect("/admin")
                return
            await set_status(self.ctx, name, "suspended" if action == "suspend" else "active")
        except ProxyError as exc:
            if isinstance(exc, NotFound):
                raise
            await show_tenant(self, name, exc.status, exc.message)
            return
        self.redirect(f"/admin/tenants/{name}")


class KeyCreate(AdminHandler):
    operation = "admin.key_create"

    @tornado.web.authenticated
    async def post(self, name: str) -> None:
        try:
            key, token = await create_key(
                self.ctx,
                name,
                self.get_argument("name", "").strip(),
                self.get_argument("scope", "read-write") == "read-only",
                self.get_argument("expires", "").strip(),
            )
        except ProxyError as exc:
            if isinstance(exc, NotFound):
                raise
            await show_tenant(self, name, exc.status, exc.message)
            return
        await show_tenant(self, name, new_key={"token": token, **key_row(key)})


class KeyRevoke(AdminHandler):
    operation = "admin.key_revoke"

    @tornado.web.authenticated
    async def post(self, key_id: str) -> None:
        key = await revoke_key(self.ctx, key_id)
        self.redirect(f"/admin/tenants/{key.tenant}")


# --- the operations, shared by pages and the API ----------------------------------------------
async def set_status(ctx: AdminContext, name: str, status: str) -> Tenant:
    tenant: Tenant = await _sync(ctx.catalog.set_tenant_status, name, status)
    if status == "suspended":
        await ctx.supervisor.stop_worker(name, "tenant suspended")  # open sessions end now
    return tenant


async def revoke_key(ctx: AdminContext, key_id: str) -> ApiKey:
    key: ApiKey = await _sync(ctx.catalog.revoke_key, key_id)
    ctx.supervisor.end_sessions(key.tenant, [key.key_id], "API key revoked")  # open sessions end now
    return key


async def delete_tenant(ctx: AdminContext, name: str) -> None:
    await _sync(ctx.catalog.get_tenant, name)
    await ctx.supervisor.stop_worker(name, "tenant deleted")  # it snapshots, then its files go
    await _sync(ctx.catalog.delete_tenant, name)
    ctx.supervisor.metrics.forget_tenant(name)


async def create_key(ctx: AdminContext, tenant: str, name: str, read_only: bool, expires: str) -> tuple[ApiKey, str]:
    expires_at = None
    if expires:
        try:
            expires_at = parse_expiry(expires)
        except argparse.ArgumentTypeError as exc:
            raise BadRequest(str(exc)) from None
    if len(name) > 100:
        raise BadRequest("key names are at most 100 characters")
    result: tuple[ApiKey, str] = await _sync(
        ctx.catalog.create_key, tenant, name=name, read_only=read_only, expires_at=expires_at
    )
    return result


# --- JSON API -------------------------------------------------------------------------------
class ApiHandler(AdminHandler):
    """``/admin/api/...``: JSON in, JSON out, one error shape.  Authenticated by the
    session cookie (then the XSRF token is required, as ``X-XSRFToken``) or by
    ``Authorization: Basic`` as ``admin`` (no cookie, so no XSRF; failures count
    towards the login throttle)."""

    def get_current_user(self) -> str | None:
        if self._basic() is not None:
            return self._basic_user
        return super().get_current_user()

    def _basic(self) -> tuple[str, str] | None:
        header = self.request.headers.get("Authorization", "")
        if not header.lower().startswith("basic "):
            return None
        try:
            user, _, password = base64.b64decode(header[6:].strip(), validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError, ValueError):
            return ("", "")
        return user, password

    async def prepare(self) -> None:
        self._basic_user: str | None = None
        creds = self._basic()
        if creds is not None and self.request.method not in ("GET", "HEAD", "OPTIONS") and self._cross_site():
            # A browser that once took the admin password in its Basic-auth prompt sends it
            # along with any site's form POST: a request another site made is refused.
            raise Forbidden("cross-site requests to the admin API are refused")
        if creds is not None:
            address = self.client_address()
            wait = self.ctx.throttle.wait_time(address)
            if wait > 0:
                self.set_header("Retry-After", str(int(wait) + 1))
                raise TooManyAttempts(f"too many failed logins: wait {int(wait) + 1} s")
            user, password = creds
            if user == ADMIN_USER and await _sync(self.ctx.password.verify, password):
                self.ctx.throttle.succeeded(address)
                self._basic_user = ADMIN_USER
            else:
                self.ctx.throttle.failed(address)
                raise Unauthorized("wrong admin user name or password")
        if self.current_user is None:
            raise Unauthorized("log in at /admin/login, or send 'Authorization: Basic' as admin")

    def _cross_site(self) -> bool:
        """Whether a browser says this request comes from another site (Fetch Metadata,
        or an ``Origin`` that is not this server); scripts and curl send neither."""
        if self.request.headers.get("Sec-Fetch-Site", "").lower() in ("cross-site", "same-site"):
            return True
        origin = self.request.headers.get("Origin")
        if origin is None:
            return False
        return origin.lower() != f"{self.request.protocol}://{self.request.host}".lower()

    def check_xsrf_cookie(self) -> None:
        if self._basic() is None:
            super().check_xsrf_cookie()

    def json_body(self) -> dict[str, Any]:
        if not self.request.body:
            return {}
        try:
            body = json.loads(self.request.body)
        except ValueError:
            raise BadRequest("malformed JSON body") from None
        if not isinstance(body, dict):
            raise BadRequest("the JSON body must be an object")
        return body

    def reply(self, status: int, body: Any) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(body))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if status_code == 403 and not isinstance(exc, ProxyError):
            code, message = "forbidden", "XSRF token missing or wrong (send X-XSRFToken, or use Basic auth)"
        else:
            code, message = describe(exc, self._reason)
        if status_code == 401:
            self.set_header("WWW-Authenticate", 'Basic realm="faiss-proxy admin"')
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"error": {"code": code, "message": message}}))


class ApiTenants(ApiHandler):
    async def get(self) -> None:
        self.reply(200, {"tenants": await _sync(_tenant_rows, self.ctx)})

    async def post(self) -> None:
        name = self.json_body().get("name")
        if not isinstance(name, str):
            raise BadRequest("'name' (a string) is needed")
        tenant = await _sync(self.ctx.catalog.create_tenant, name)
        self.reply(201, {"name": tenant.name, "status": tenant.status, "created_at": tenant.created_at})


class ApiTenant(ApiHandler):
    async def get(self, name: str) -> None:
        self.reply(200, await tenant_detail(self.ctx, name))

    async def delete(self, name: str) -> None:
        if self.get_argument("confirm", "") != name:
            raise BadRequest(f"add ?confirm={name} to delete tenant '{name}' and all its data")
        await delete_tenant(self.ctx, name)
        self.reply(200, {"deleted": name})


class ApiTenantStatus(ApiHandler):
    async def post(self, name: str, action: str) -> None:
        tenant = await set_status(self.ctx, name, "suspended" if action == "suspend" else "active")
        self.reply(200, {"name": tenant.name, "status": tenant.status})


class ApiKeys(ApiHandler):
    async def get(self, name: str) -> None:
        keys = await _sync(self.ctx.catalog.list_keys, name)
        self.reply(200, {"keys": [key_row(k) for k in keys]})

    async def post(self, name: str) -> None:
        body = self.json_body()
        read_only = body.get("read_only", False)
        key_name = body.get("name", "")
        expires = body.get("expires", "")
        if type(read_only) is not bool or not isinstance(key_name, str) or not isinstance(expires, str):
            raise BadRequest("'name' and 'expires' are strings, 'read_only' a boolean")
        key, token = await create_key(self.ctx, name, key_name, read_only, expires)
        self.reply(201, {"key": token, **key_row(key)})


class ApiKeyRevoke(ApiHandler):
    async def post(self, key_id: str) -> None:
        key = await revoke_key(self.ctx, key_id)
        self.reply(200, key_row(key))


class AdminNotFound(AdminHandler):
    def prepare(self) -> None:
        raise NotFound(f"no such page: {self.request.path}")


_TENANT = r"([a-z0-9][a-z0-9_-]{0,62})"


def admin_routes() -> list[tuple[str, type[tornado.web.RequestHandler]]]:
    return [
        (r"/admin/?", TenantsPage),
        (r"/admin/login", LoginHandler),
        (r"/admin/logout", LogoutHandler),
        (r"/admin/tenants", TenantsPage),
        (rf"/admin/tenants/{_TENANT}", TenantPage),
        (rf"/admin/tenants/{_TENANT}/(suspend|resume|delete)", TenantAction),
        (rf"/admin/tenants/{_TENANT}/keys", KeyCreate),
        (r"/admin/keys/(k_[0-9a-f]+)/revoke", KeyRevoke),
        (r"/admin/api/tenants", ApiTenants),
        (rf"/admin/api/tenants/{_TENANT}", ApiTenant),
        (rf"/admin/api/tenants/{_TENANT}/(suspend|resume)", ApiTenantStatus),
        (rf"/admin/api/tenants/{_TENANT}/keys", ApiKeys),
        (r"/admin/api/keys/(k_[0-9a-f]+)/revoke", ApiKeyRevoke),
    ]

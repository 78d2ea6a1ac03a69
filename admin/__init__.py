"""faiss-proxy admin web page: tenants, API keys and usage, at ``/admin``.

Installed as ``faiss_proxy_admin``.  A Tornado application of its own (its own
``xsrf_cookies``, signed session cookie and templates) that the gateway mounts
under ``/admin`` on the same port as the API (see
:func:`faiss_proxy_server.runner.Server`).  Tornado's ``demos/blog`` layout:
``templates/base.html`` plus one template per page, one small handler class per
route (:mod:`.handlers`), static files served locally (no CDN), JavaScript only
for the copy button and confirmations.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import tornado.web

from .auth import AdminPassword, LoginThrottle
from .handlers import AdminContext, AdminNotFound, admin_routes

__all__ = ["make_admin_app", "AdminContext", "AdminPassword", "LoginThrottle"]

HERE = Path(__file__).parent


def make_admin_app(ctx: AdminContext, log_function: Any = None) -> tornado.web.Application:
    return tornado.web.Application(
        admin_routes(),
        admin=ctx,
        template_path=str(HERE / "templates"),
        static_path=str(HERE / "static"),
        static_url_prefix="/admin/static/",
        cookie_secret=ctx.catalog.derived_secret("admin-session-cookies").hex(),
        xsrf_cookies=True,
        xsrf_cookie_kwargs={"samesite": "Strict", "secure": bool(ctx.settings.tls_cert)},
        login_url="/admin/login",
        default_handler_class=AdminNotFound,
        log_function=log_function,
        compiled_template_cache=True,
    )

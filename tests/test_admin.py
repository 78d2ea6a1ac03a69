"""The admin page and its JSON API over HTTP (the browser tests are in test_admin_browser.py)."""

from __future__ import annotations

import base64
import http.cookiejar
import json
import re
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import faiss_proxy

from .conftest import LiveServer, Rest, launch_cli_server, run_cli, start_server

PASSWORD = "correct horse battery staple"


class Browser:
    """Cookie-keeping HTTP client that fills in the XSRF field like a browser form."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.jar = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.jar), _NoRedirect())

    def get(self, path: str) -> tuple[int, str, dict[str, str]]:
        return self._open(urllib.request.Request(self.base + path))

    def post(self, path: str, fields: dict[str, str], xsrf: bool = True) -> tuple[int, str, dict[str, str]]:
        data = dict(fields)
        if xsrf:
            data["_xsrf"] = self.xsrf()
        req = urllib.request.Request(self.base + path, data=urllib.parse.urlencode(data).encode())
        return self._open(req)

    def xsrf(self) -> str:
        token = next((c.value for c in self.jar if c.name == "_xsrf"), None)
        if token is None:
            status, html, _ = self.get("/admin/login")
            token = re.search(r'name="_xsrf" value="([^"]+)"', html).group(1)  # type: ignore[union-attr]
        return token

    def login(self, password: str = PASSWORD) -> int:
        status, _, headers = self.post("/admin/login", {"username": "admin", "password": password, "next": "/admin"})
        return status

    def _open(self, req: urllib.request.Request) -> tuple[int, str, dict[str, str]]:
        try:
            with self.opener.open(req, timeout=30) as resp:
                return resp.status, resp.read().decode(), dict(resp.headers)
        except urllib.error.HTTPError as err:
            return err.code, err.read().decode(), dict(err.headers)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def api(
    base: str, method: str, path: str, body: Any = None, password: str = PASSWORD, headers: dict[str, str] | None = None
) -> tuple[int, Any]:
    auth = base64.b64encode(f"admin:{password}".encode()).decode()
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(
        base + path, data=data, method=method, headers={"Authorization": f"Basic {auth}", **(headers or {})}
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


@pytest.fixture
def admin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[LiveServer]:
    monkeypatch.setenv("FAISS_PROXY_ADMIN_PASSWORD", PASSWORD)
    live = start_server(tmp_path / "data")
    yield live
    live.stop()


# --- login, session, XSRF ---------------------------------------------------------------------
def test_pages_need_a_login(admin: LiveServer) -> None:
    b = Browser(admin.url)
    status, _, headers = b.get("/admin")
    assert status == 302 and headers["Location"].startswith("/admin/login")
    status, html, headers = b.get("/admin/login")
    assert status == 200 and 'name="_xsrf"' in html
    assert "default-src 'self'" in headers["Content-Security-Policy"] and headers["X-Frame-Options"] == "DENY"
    assert b.login("wrong password") == 401
    assert b.get("/admin")[0] == 302
    assert b.login() == 302
    session = next(c for c in b.jar if c.name == "fp_admin")
    assert session.has_nonstandard_attr("HttpOnly") or session.get_nonstandard_attr("httponly") is not None
    status, html, _ = b.get("/admin")
    assert status == 200 and "<h1>Tenants</h1>" in html
    assert b.post("/admin/logout", {})[0] == 302
    assert b.get("/admin")[0] == 302


def test_posts_without_xsrf_are_refused(admin: LiveServer) -> None:
    b = Browser(admin.url)
    assert b.post("/admin/login", {"username": "admin", "password": PASSWORD}, xsrf=False)[0] == 403
    assert b.login() == 302
    status, _, _ = b.post("/admin/tenants", {"name": "evil"}, xsrf=False)
    assert status == 403
    # the JSON API with the session cookie needs the XSRF header too
    req = urllib.request.Request(admin.url + "/admin/api/tenants", data=b'{"name": "evil"}', method="POST")
    status, _, _ = b._open(req)
    assert status == 403
    assert admin.catalog.list_tenants() == []


def test_failed_logins_are_rate_limited(admin: LiveServer) -> None:
    b = Browser(admin.url)
    for _ in range(5):
        assert b.login("nope-nope") == 401
    status, html, headers = b.post("/admin/login", {"username": "admin", "password": PASSWORD})
    assert status == 429 and "Too many failed logins" in html and int(headers["Retry-After"]) >= 1
    assert api(admin.url, "GET", "/admin/api/tenants")[0] == 429  # Basic auth shares the throttle
    time.sleep(1.1)
    assert b.login() == 302  # the wait is over; a success clears the count


def test_password_is_stored_hashed(admin: LiveServer) -> None:
    stored = admin.catalog.get_setting("admin_password_hash")
    assert stored.startswith("$argon2id$") and PASSWORD not in stored
    raw = (Path(admin.server.settings.data_path) / "catalog.sqlite3").read_bytes()
    assert PASSWORD.encode() not in raw


# --- tenants and keys through the pages --------------------------------------------------------
def test_tenant_and_key_lifecycle_through_pages(admin: LiveServer) -> None:
    b = Browser(admin.url)
    b.login()
    status, _, headers = b.post("/admin/tenants", {"name": "acme"})
    assert status == 302 and headers["Location"] == "/admin/tenants/acme"
    status, html, _ = b.post("/admin/tenants", {"name": "Bad Name!"})
    assert status == 400 and "tenant names" in html
    status, html, _ = b.post("/admin/tenants/acme/keys", {"name": "<script>x</script>", "scope": "read-only"})
    assert status == 200 and "shown only once" in html
    assert "<script>x</script>" not in html and "&lt;script&gt;x&lt;/script&gt;" in html
    token = re.search(r'id="new-key"[^>]*value="([^"]+)"', html).group(1)  # type: ignore[union-attr]
    (key,) = admin.catalog.list_keys("acme")
    assert key.scope == "read-only" and admin.catalog.authenticate(token).key_id == key.key_id
    # the token is never shown again
    status, html, _ = b.get("/admin/tenants/acme")
    assert token not in html and key.key_id in html
    status, html, _ = b.post("/admin/tenants/acme/keys", {"name": "x", "expires": "yesterday"})
    assert status == 400 and "invalid expiry" in html
    assert b.post(f"/admin/keys/{key.key_id}/revoke", {})[0] == 302
    assert admin.catalog.list_keys("acme")[0].revoked_at is not None
    # delete needs the typed name
    status, html, _ = b.post("/admin/tenants/acme/delete", {"confirm": "acm"})
    assert status == 400 and "type the tenant" in html
    assert b.post("/admin/tenants/acme/delete", {"confirm": "acme"})[0] == 302
    assert admin.catalog.list_tenants() == []
    assert b.get("/admin/tenants/acme")[0] == 404


def test_suspend_refuses_keys_and_resume_restores(admin: LiveServer) -> None:
    admin.catalog.create_tenant("acme")
    _, key = admin.catalog.create_key("acme")
    rest = Rest(admin.url, key)
    assert rest.post("/v1/index", {"name": "x", "dimension": 4})[0] == 201
    faiss_proxy.configure(api_url=admin.url, api_key=key, timeout=30)
    try:
        index = faiss_proxy.open_index("x")
        assert index.ntotal == 0
        b = Browser(admin.url)
        b.login()
        assert b.post("/admin/tenants/acme/suspend", {})[0] == 302
        status, body = rest.get("/v1/index")
        assert status == 403 and "suspended" in body["error"]["message"]
        with pytest.raises(ConnectionError):
            _ = index.ntotal  # the open session ended with the worker
        faiss_proxy.configure(api_url=admin.url, api_key=key, timeout=30)
        with pytest.raises(PermissionError, match="suspended"):
            faiss_proxy.open_index("x")
        assert b.post("/admin/tenants/acme/resume", {})[0] == 302
        faiss_proxy.configure(api_url=admin.url, api_key=key, timeout=30)
        assert faiss_proxy.open_index("x").ntotal == 0
    finally:
        faiss_proxy.configure(api_url="", api_key="")


def test_pages_show_usage(admin: LiveServer) -> None:
    admin.catalog.create_tenant("acme")
    _, key = admin.catalog.create_key("acme", name="svc")
    rest = Rest(admin.url, key)
    rest.post("/v1/index", {"name": "docs", "dimension": 4, "index_type": "IndexHNSWFlat"})
    rest.post("/v1/index/docs/vectors", {"vectors": [{"id": str(i), "values": [float(i)] * 4} for i in range(7)]})
    rest.get("/v1/index/nope")
    b = Browser(admin.url)
    b.login()
    deadline = time.monotonic() + 10
    while True:
        status, html, _ = b.get("/admin")
        row = re.search(r'<tr data-tenant="acme">(.*?)</tr>', html, re.S).group(1)  # type: ignore[union-attr]
        counted = 'data-field="vectors">7<' in row and 'data-field="errors">1<' in row  # counts may trail answers
        if counted or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert 'data-field="indexes">1<' in row and 'data-field="vectors">7<' in row
    assert 'data-field="requests">3<' in row and 'data-field="errors">1<' in row
    assert "running (pid" in row
    status, html, _ = b.get("/admin/tenants/acme")
    assert '<tr data-index="docs">' in html and 'data-field="ntotal">7<' in html and "HNSW32" in html
    assert ">svc<" in html and "read-write" in html


# --- JSON API -----------------------------------------------------------------------------
def test_json_api(admin: LiveServer) -> None:
    url = admin.url
    assert api(url, "GET", "/admin/api/tenants", password="wrong")[0] == 401
    status, body = api(url, "POST", "/admin/api/tenants", {"name": "acme"})
    assert status == 201 and body["name"] == "acme"
    assert api(url, "POST", "/admin/api/tenants", {"name": "acme"})[0] == 409
    status, body = api(url, "POST", "/admin/api/tenants/acme/keys", {"name": "ro", "read_only": True, "expires": "1d"})
    assert status == 201 and body["scope"] == "read-only" and body["expires_at"] > time.time()
    token, key_id = body["key"], body["key_id"]
    assert Rest(url, token).get("/v1/index")[0] == 200
    assert Rest(url, token).post("/v1/index", {"name": "x", "dimension": 2})[0] == 403  # read-only
    status, body = api(url, "GET", "/admin/api/tenants")
    assert [t["name"] for t in body["tenants"]] == ["acme"] and body["tenants"][0]["keys"] == 1
    status, body = api(url, "GET", "/admin/api/tenants/acme")
    assert body["tenant"]["status"] == "active" and body["keys"][0]["key_id"] == key_id and body["indexes"] == []
    assert api(url, "POST", "/admin/api/tenants/acme/suspend")[1]["status"] == "suspended"
    assert Rest(url, token).get("/v1/index")[0] == 403
    assert api(url, "POST", "/admin/api/tenants/acme/resume")[1]["status"] == "active"
    assert api(url, "POST", f"/admin/api/keys/{key_id}/revoke")[1]["state"] == "revoked"
    assert Rest(url, token).get("/v1/index")[0] == 401
    assert api(url, "DELETE", "/admin/api/tenants/acme")[0] == 400  # needs ?confirm=acme
    assert api(url, "DELETE", "/admin/api/tenants/acme?confirm=acme") == (200, {"deleted": "acme"})
    assert not (Path(admin.server.settings.data_path) / "tenants" / "acme").exists()
    status, body = api(url, "GET", "/admin/api/tenants/nosuch")
    assert status == 404 and set(body["error"]) == {"code", "message"}


def test_a_suspended_tenants_page_does_not_start_its_worker(admin: LiveServer) -> None:
    url = admin.url
    assert api(url, "POST", "/admin/api/tenants", {"name": "sleepy"})[0] == 201
    token = api(url, "POST", "/admin/api/tenants/sleepy/keys", {"name": "k"})[1]["key"]
    assert Rest(url, token).post("/v1/index", {"name": "docs", "dimension": 4})[0] == 201
    assert api(url, "POST", "/admin/api/tenants/sleepy/suspend")[0] == 200
    assert admin.worker_pid("sleepy") is None
    status, body = api(url, "GET", "/admin/api/tenants/sleepy")
    assert status == 200 and body["indexes"] == [] and "suspended" in body["indexes_error"], body
    assert "1 named indexes on disk" in body["indexes_error"]
    assert admin.worker_pid("sleepy") is None  # looking did not start it


def test_json_api_refuses_cross_site_requests(admin: LiveServer) -> None:
    """A browser that took the admin password in its Basic prompt attaches it to any site's
    form POST; the API refuses requests a browser marks as cross-site, and changes nothing."""
    url = admin.url
    assert api(url, "POST", "/admin/api/tenants", {"name": "kept"})[0] == 201
    for headers in ({"Origin": "https://evil.example"}, {"Sec-Fetch-Site": "cross-site"}):
        status, body = api(url, "POST", "/admin/api/tenants", {"name": "planted"}, headers=headers)
        assert status == 403 and "cross-site" in body["error"]["message"], (headers, status, body)
        assert api(url, "POST", "/admin/api/tenants/kept/suspend", headers=headers)[0] == 403
    assert [t["name"] for t in api(url, "GET", "/admin/api/tenants")[1]["tenants"]] == ["kept"]
    assert api(url, "GET", "/admin/api/tenants/kept")[1]["tenant"]["status"] == "active"
    # the server's own origin, and reads, are fine
    assert api(url, "POST", "/admin/api/tenants", {"name": "same"}, headers={"Origin": url})[0] == 201
    assert api(url, "GET", "/admin/api/tenants", headers={"Origin": "https://evil.example"})[0] == 200


# --- the same from the command line ----------------------------------------------------------
def test_cli_suspend_resume_and_admin_password(tmp_path: Path) -> None:
    data = tmp_path / "data"
    live = launch_cli_server(data)
    try:
        out = live.log_path.read_text()
        printed = re.search(r"user: admin  password: (\S+)", out)
        assert printed, out
        generated = printed.group(1)
        assert generated not in (data / "catalog.sqlite3").read_bytes().decode("latin-1")
        assert Browser(live.url).login(generated) == 302
        run_cli("tenant", "create", "acme", "--data-dir", str(data))
        key = run_cli("key", "create", "acme", "--data-dir", str(data)).stdout.strip().splitlines()[-1]
        assert "suspended" in run_cli("tenant", "suspend", "acme", "--data-dir", str(data)).stdout
        assert Rest(live.url, key).get("/v1/index")[0] == 403
        run_cli("tenant", "resume", "acme", "--data-dir", str(data))
        assert Rest(live.url, key).get("/v1/index")[0] == 200
        new = subprocess.run(
            [sys.executable, "-m", "faiss_proxy_server", "admin-password", "--data-dir", str(data)],
            input="a new password 123\n",
            capture_output=True,
            text=True,
            check=True,
        )
        assert "set from standard input" in new.stderr
        assert Browser(live.url).login(generated) == 401
        assert Browser(live.url).login("a new password 123") == 302
    finally:
        live.proc.terminate()
        live.proc.wait(30)
    again = launch_cli_server(data)  # the password is printed only when it was generated
    try:
        assert "password:" not in again.log_path.read_text()
    finally:
        again.proc.terminate()
        again.proc.wait(30)

"""The admin page in a real browser: Playwright driving Debian's Chromium.

The browser is never downloaded: ``.ci/run`` installs Debian's ``chromium`` with
apt-get and these tests use ``/usr/bin/chromium`` (or ``FAISS_PROXY_CHROMIUM``).
Screenshots of each page are saved under the test's temporary directory, and under
``FAISS_PROXY_SCREENSHOTS`` when set (that is how ``docs/admin-*.png`` are made:
``FAISS_PROXY_SCREENSHOTS=docs python -m pytest tests/test_admin_browser.py``).
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import faiss_proxy

from .conftest import LiveServer, start_server, unavailable

try:
    from playwright import sync_api
except ImportError:
    unavailable("the playwright package (pip install -e '.[test]')", module_level=True)

PASSWORD = "correct horse battery staple"
CHROMIUM = os.environ.get("FAISS_PROXY_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"

if not Path(CHROMIUM).exists():
    unavailable(f"Debian's Chromium at {CHROMIUM}", module_level=True)


@pytest.fixture
def admin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[LiveServer]:
    monkeypatch.setenv("FAISS_PROXY_ADMIN_PASSWORD", PASSWORD)
    live = start_server(tmp_path / "data")
    yield live
    live.stop()


@pytest.fixture
def page(tmp_path: Path) -> Iterator[Any]:
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        context = browser.new_context(viewport={"width": 1280, "height": 800})
        p = context.new_page()
        p.set_default_timeout(15_000)
        yield p
        context.close()
        browser.close()


def shot(page: Any, tmp_path: Path, name: str) -> None:
    page.screenshot(path=str(tmp_path / f"admin-{name}.png"), full_page=True)
    target = os.environ.get("FAISS_PROXY_SCREENSHOTS")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        shutil.copy(tmp_path / f"admin-{name}.png", Path(target) / f"admin-{name}.png")


def test_admin_flow_in_a_browser(admin: LiveServer, page: Any, tmp_path: Path) -> None:
    url = admin.url
    page.goto(url + "/admin")
    assert "/admin/login" in page.url
    shot(page, tmp_path, "login")

    # a wrong password is refused
    page.fill("input[name=password]", "not the password")
    page.click("button[type=submit]")
    assert page.locator(".flash").inner_text() == "Wrong user name or password."

    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(url + "/admin")
    assert page.locator("h1").inner_text() == "Tenants"

    # create a tenant and a key; the key is shown once, with a copy button
    page.fill("input[name=name]", "acme")
    page.click("form[action='/admin/tenants'] button[type=submit]")
    page.wait_for_url(url + "/admin/tenants/acme")
    page.fill("form[action$='/keys'] input[name=name]", "search-service")
    page.click("button:has-text('Create key')")
    key = page.input_value("#new-key")
    assert key.count(".") == 2  # a JWT
    page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=url)
    page.click("button[data-copy]")
    sync_api.expect(page.locator("button[data-copy]")).to_have_text("Copied")
    assert page.evaluate("navigator.clipboard.readText()") == key

    # use the key from faiss_proxy, then see the counts on the pages
    faiss_proxy.configure(api_url=url, api_key=key, timeout=60)
    try:
        index = faiss_proxy.create_index("docs", 16, "IndexHNSWFlat", params={"M": 16})
        x = np.random.RandomState(0).rand(250, 16).astype("float32")
        index.add_with_ids(x, np.arange(250, dtype="int64"))
        assert index.search(x[:3], 1)[1].ravel().tolist() == [0, 1, 2]
        deadline = time.monotonic() + 15
        while True:
            page.goto(url + "/admin")
            vectors = page.locator("tr[data-tenant=acme] [data-field=vectors]").inner_text()
            if vectors == "250" or time.monotonic() > deadline:
                break
            time.sleep(0.3)
        assert vectors == "250"
        assert page.locator("tr[data-tenant=acme] [data-field=indexes]").inner_text() == "1"
        assert int(page.locator("tr[data-tenant=acme] [data-field=requests]").inner_text()) >= 3
        shot(page, tmp_path, "tenants")
        page.click("#tenants a:has-text('acme')")
        assert page.locator("tr[data-index=docs] [data-field=ntotal]").inner_text() == "250"
        assert "search-service" in page.locator("#keys").inner_text()
        shot(page, tmp_path, "tenant")

        # revoke the key (after a confirmation): the client is refused from then on
        page.once("dialog", lambda dialog: dialog.accept())
        page.click("#keys button:has-text('Revoke')")
        page.wait_for_url(url + "/admin/tenants/acme")
        assert page.locator("#keys .badge.revoked").count() == 1
        faiss_proxy.configure(api_url=url, api_key=key, timeout=60)
        with pytest.raises(PermissionError, match="revoked"):
            faiss_proxy.open_index("docs")
    finally:
        faiss_proxy.configure(api_url="", api_key="")

    # a POST without the XSRF token is refused, even with the session cookie
    response = page.request.post(url + "/admin/tenants", form={"name": "evil"}, max_redirects=0)
    assert response.status == 403
    assert [t.name for t in admin.catalog.list_tenants()] == ["acme"]

    # delete stays disabled until the name is typed
    page.goto(url + "/admin/tenants/acme")
    delete = page.locator("form[data-typed] button")
    assert delete.is_disabled()
    page.fill("form[data-typed] input[name=confirm]", "acme")
    assert delete.is_enabled()
    delete.click()
    page.wait_for_url(url + "/admin")
    assert page.locator("td.empty").inner_text() == "No tenants yet."

    page.click("button:has-text('Log out')")
    page.wait_for_url(url + "/admin/login")
    page.goto(url + "/admin")
    assert "/admin/login" in page.url

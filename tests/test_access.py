"""Revoking a key, its expiry, suspending or deleting a tenant reach sessions that are already
open, whichever way the change is made: the admin JSON API, or the CLI while the server runs.

Each test holds two RPC sessions of one tenant, one per key, changes the catalog, and checks
that exactly the sessions that lost their right end (``ConnectionError`` on the next call,
``PermissionError`` on reconnecting) while the others go on in the same worker.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from faiss_proxy._client import Client
from faiss_proxy_server.catalog import Catalog

from .conftest import LiveServer, Rest, run_cli, start_server
from .test_admin import api

X = np.random.RandomState(3).rand(20, 4).astype("float32")


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    password = secrets.token_urlsafe(16)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FAISS_PROXY_ADMIN_PASSWORD", password)
        server = start_server(tmp_path_factory.mktemp("access"), worker_idle_timeout=120.0)
    server.admin_password = password  # type: ignore[attr-defined]
    server.server.access.expiry_interval = 0.5  # expiry is looked for every 5 s by default
    yield server
    server.stop()


class Session:
    """One RPC session of a key, with a private index in it."""

    def __init__(self, live: LiveServer, key: str) -> None:
        self.live, self.key = live, key
        self.client = Client(live.url, key, timeout=30)
        self.index = self.client.lookup("IndexFlatL2")(4)
        self.index.add(X)

    def alive(self) -> bool:
        try:
            assert self.index.ntotal == len(X)
            return True
        except ConnectionError:
            return False

    def close(self) -> None:
        self.client.close()


def _key(live: LiveServer, tenant: str) -> tuple[str, str]:
    record, token = live.catalog.create_key(tenant)
    return record.key_id, token


def _ends_within(session: Session, seconds: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        if not session.alive():
            return time.monotonic() - started
        time.sleep(0.1)
    raise AssertionError(f"the session was still open after {seconds} s")


def _refused(live: LiveServer, key: str) -> str:
    with pytest.raises(PermissionError) as info:
        Client(live.url, key, timeout=10).lookup("IndexFlatL2")
    return str(info.value)


@pytest.fixture
def two_sessions(live: LiveServer) -> Iterator[tuple[str, tuple[str, Session], tuple[str, Session]]]:
    tenant, _ = live.new_tenant("acc")
    (id_a, key_a), (id_b, key_b) = _key(live, tenant), _key(live, tenant)
    a, b = Session(live, key_a), Session(live, key_b)
    yield tenant, (id_a, a), (id_b, b)
    a.close()
    b.close()


def _cli(live: LiveServer, *args: str) -> None:
    run_cli(*args, "--data-dir", str(live.server.settings.data_path))


def _other_catalog(live: LiveServer) -> Catalog:
    """The catalog as another process (the CLI) sees it."""
    return Catalog(Path(live.server.settings.data_path))


def test_revoking_a_key_through_the_admin_api_ends_its_open_sessions_at_once(live: LiveServer, two_sessions) -> None:
    tenant, (key_id, revoked), (_, kept) = two_sessions
    pid = live.worker_pid(tenant)
    status, body = api(live.url, "POST", f"/admin/api/keys/{key_id}/revoke", {}, password=live.admin_password)  # type: ignore[attr-defined]
    assert status == 200, body
    assert _ends_within(revoked, 2.0) < 1.0  # not waiting for the catalog watcher
    assert "revoked" in _refused(live, revoked.key)
    assert kept.alive() and live.worker_pid(tenant) == pid  # same worker, other key untouched


@pytest.mark.parametrize(
    "how",
    [
        pytest.param(lambda live, key_id: _cli(live, "key", "revoke", key_id), id="cli"),
        pytest.param(lambda live, key_id: _other_catalog(live).revoke_key(key_id), id="catalog"),
    ],
)
def test_revoking_a_key_while_the_server_runs_ends_its_open_sessions(
    live: LiveServer, two_sessions, how: Callable[[LiveServer, str], Any]
) -> None:
    tenant, (key_id, revoked), (_, kept) = two_sessions
    pid = live.worker_pid(tenant)
    how(live, key_id)
    _ends_within(revoked, 5.0)
    assert "revoked" in _refused(live, revoked.key)
    assert kept.alive() and live.worker_pid(tenant) == pid


def test_an_expiring_key_ends_its_open_sessions(live: LiveServer) -> None:
    tenant, _ = live.new_tenant("exp")
    record, token = live.catalog.create_key(tenant, expires_at=time.time() + 2.0)
    _, lasting = live.catalog.create_key(tenant)
    expiring, kept = Session(live, token), Session(live, lasting)
    try:
        assert expiring.alive()
        _ends_within(expiring, 6.0)
        assert time.time() >= record.expires_at  # type: ignore[operator]
        assert "expired" in _refused(live, token)
        assert kept.alive()
    finally:
        expiring.close()
        kept.close()


def test_suspending_a_tenant_from_the_cli_ends_its_sessions_and_resuming_restores(
    live: LiveServer, two_sessions
) -> None:
    tenant, (_, a), (_, b) = two_sessions
    _cli(live, "tenant", "suspend", tenant)
    _ends_within(a, 5.0)
    _ends_within(b, 5.0)
    assert Rest(live.url, a.key).get("/v1/index")[0] == 403
    deadline = time.monotonic() + 5
    while live.worker_pid(tenant) is not None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert live.worker_pid(tenant) is None
    _cli(live, "tenant", "resume", tenant)
    fresh = Session(live, a.key)
    try:
        assert fresh.alive()
    finally:
        fresh.close()


def test_deleting_a_tenant_from_the_cli_kills_its_worker_and_leaves_no_files(live: LiveServer, two_sessions) -> None:
    tenant, (_, a), (_, b) = two_sessions
    assert Rest(live.url, a.key).post("/v1/index", {"name": "docs", "dimension": 4})[0] == 201
    tenant_dir = Path(live.server.settings.data_path) / "tenants" / tenant
    assert tenant_dir.exists()
    bystander, _ = live.new_tenant("bys")
    _, bystander_key = _key(live, bystander)
    other = Session(live, bystander_key)
    try:
        _cli(live, "tenant", "delete", tenant)
        _ends_within(a, 5.0)
        _ends_within(b, 2.0)
        deadline = time.monotonic() + 5
        while (live.worker_pid(tenant) is not None or tenant_dir.exists()) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert live.worker_pid(tenant) is None and not tenant_dir.exists()
        assert Rest(live.url, a.key).get("/v1/index")[0] == 401
        assert other.alive()  # other tenants see nothing
    finally:
        other.close()

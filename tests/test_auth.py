"""Authentication of RPC upgrades: every bad key is an HTTP 401 before any RPyC byte."""

from __future__ import annotations

import socket
import time
import urllib.parse

import jwt
import pytest

import faiss_proxy
from faiss_proxy import AuthenticationError
from faiss_proxy._client import open_rpc_socket

from .conftest import LiveServer


def _upgrade(url: str, headers: dict[str, str], then: bytes = b"") -> tuple[int, bytes]:
    """Send a raw upgrade request; return the status and everything read."""
    parts = urllib.parse.urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
        lines = ["GET /v1/rpc HTTP/1.1", f"Host: {parts.netloc}"] + [f"{k}: {v}" for k, v in headers.items()]
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + then)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
        return int(data.split(b" ", 2)[1]), data


UPGRADE = {"Connection": "Upgrade", "Upgrade": "faiss-proxy-rpc"}


def test_valid_key_upgrades(server: LiveServer, tenant: tuple[str, str]) -> None:
    status, data = _upgrade(server.url, {**UPGRADE, "Authorization": f"Bearer {tenant[1]}"})
    assert status == 101, data
    assert b"Upgrade: faiss-proxy-rpc" in data


@pytest.mark.parametrize(
    "auth",
    [None, "Bearer", "Bearer ", "Basic dXNlcjpwYXNz", "Bearer not-a-jwt", "Bearer a.b.c"],
)
def test_missing_or_malformed_key_is_401(server: LiveServer, auth: str | None) -> None:
    headers = dict(UPGRADE)
    if auth is not None:
        headers["Authorization"] = auth
    # bytes after the headers must not be read as RPyC either
    status, data = _upgrade(server.url, headers, then=b"\x00" * 64)
    assert status == 401, data
    assert b'"code": "unauthorized"' in data
    assert b"www-authenticate: bearer" in data.lower()


def test_tampered_key_is_401(server: LiveServer, tenant: tuple[str, str]) -> None:
    claims = jwt.decode(tenant[1], options={"verify_signature": False})
    claims["sub"] = "someone-else"
    forged_with_wrong_secret = jwt.encode(claims, "guessed-secret-" * 3, algorithm="HS256")
    head, payload, sig = tenant[1].split(".")
    flipped = head + "." + payload + "." + ("A" if sig[0] != "A" else "B") + sig[1:]
    unsigned = jwt.encode(claims, None, algorithm="none")  # type: ignore[arg-type]
    for token in (forged_with_wrong_secret, flipped, unsigned):
        status, _ = _upgrade(server.url, {**UPGRADE, "Authorization": f"Bearer {token}"})
        assert status == 401


def test_expired_key_is_401(server: LiveServer) -> None:
    name, token = server.new_tenant(expires_at=time.time() + 1.5)
    with pytest.raises(AuthenticationError, match="expired"):
        time.sleep(2.6)  # JWT 'exp' has one-second resolution
        open_rpc_socket(server.url, token)


def test_revoked_key_is_401_and_client_gets_authentication_error(server: LiveServer) -> None:
    name, token = server.new_tenant()
    faiss_proxy.configure(api_url=server.url, api_key=token)
    try:
        assert faiss_proxy.IndexFlatL2(4).ntotal == 0
        key_id = jwt.decode(token, options={"verify_signature": False})["jti"]
        server.catalog.revoke_key(key_id)
        status, data = _upgrade(server.url, {**UPGRADE, "Authorization": f"Bearer {token}"})
        assert status == 401 and b"revoked" in data
        faiss_proxy.configure(api_url=server.url, api_key=token)
        with pytest.raises(AuthenticationError, match="revoked"):
            faiss_proxy.IndexFlatL2(4)
        assert isinstance(AuthenticationError("x"), PermissionError)
    finally:
        faiss_proxy.configure(api_url="", api_key="")


def test_deleted_tenant_key_is_401(server: LiveServer) -> None:
    name, token = server.new_tenant()
    server.catalog.delete_tenant(name)
    status, _ = _upgrade(server.url, {**UPGRADE, "Authorization": f"Bearer {token}"})
    assert status == 401


def test_x_api_key_header_is_accepted(server: LiveServer, tenant: tuple[str, str]) -> None:
    status, _ = _upgrade(server.url, {**UPGRADE, "X-API-Key": tenant[1]})
    assert status == 101


def test_upgrade_headers_required(server: LiveServer, tenant: tuple[str, str]) -> None:
    status, data = _upgrade(server.url, {"Authorization": f"Bearer {tenant[1]}"})
    assert status == 400 and b"Upgrade" in data
    status, _ = _upgrade(
        server.url, {"Connection": "Upgrade", "Upgrade": "websocket", "Authorization": f"Bearer {tenant[1]}"}
    )
    assert status == 400


def test_unauthenticated_request_never_starts_a_worker(server: LiveServer) -> None:
    name, token = server.new_tenant()
    bad = token[:-2] + ("xx" if not token.endswith("xx") else "yy")
    status, _ = _upgrade(server.url, {**UPGRADE, "Authorization": f"Bearer {bad}"})
    assert status == 401
    assert server.worker_pid(name) is None


def test_signing_secret_is_private(server: LiveServer) -> None:
    secret = server.catalog.data_dir / "secret.key"
    assert secret.stat().st_mode & 0o777 == 0o600
    assert len(bytes.fromhex(secret.read_text().strip())) == 32


def test_unknown_route_has_error_shape(server: LiveServer) -> None:
    from .conftest import get_json

    status, body = get_json(server.url + "/v1/nope")
    assert status == 404
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}


def test_keys_that_could_inject_headers_are_refused_client_side() -> None:
    from faiss_proxy._client import Client

    for bad in ("", "abc\r\nX-Evil: 1", "a b", "ключ"):
        with pytest.raises(ValueError, match="API key"):
            Client("http://127.0.0.1:9", bad)

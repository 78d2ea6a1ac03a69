"""The ``unix_socket`` setting: everything the TCP port serves, on a Unix socket too.

Clients on the server's machine reach it as ``unix:///path``: RPC sessions (the same
upgrade, the same key checks) and the REST facade, with results equal to local
FAISS and to the TCP port's.  The socket is never TLS, even when the port is.
"""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pytest

from faiss_proxy._client import AuthenticationError, Client, _parse_url

from .conftest import Dataset, run_cli, start_server, vector_items


class UnixHTTPConnection(http.client.HTTPConnection):
    """``http.client`` over a Unix socket (what ``curl --unix-socket`` does)."""

    def __init__(self, path: str) -> None:
        super().__init__("localhost", timeout=30)
        self.path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(30)
        self.sock.connect(self.path)


def request(conn: http.client.HTTPConnection, method: str, path: str, key: str, body: Any = None) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    conn.request(method, path, body=None if body is None else json.dumps(body), headers=headers)
    response = conn.getresponse()
    return response.status, json.loads(response.read() or b"null")


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    """A directory whose socket paths fit in ``sun_path`` (108 bytes); pytest's may not."""
    with tempfile.TemporaryDirectory(prefix="fp-", dir="/tmp") as tmp:
        yield Path(tmp)


def lookup(url: str, key: str, name: str = "IndexFlatL2") -> Any:
    """``name``'s proxy class over a new connection (closed again at once)."""
    client = Client(url, key)
    try:
        return client.lookup(name)
    finally:
        client.close()


def test_rpc_and_rest_over_the_unix_socket_equal_local_faiss(tmp_path: Path, sock_dir: Path, dataset: Dataset) -> None:
    path = sock_dir / "fp.sock"
    live = start_server(tmp_path / "data", unix_socket=str(path))
    try:
        assert stat.S_ISSOCK(path.stat().st_mode) and path.stat().st_mode & 0o777 == 0o666
        tenant, key = live.new_tenant()
        ref = faiss.IndexFlatL2(dataset.d)
        ref.add(dataset.xb)
        D0, I0 = ref.search(dataset.xq, 5)

        # RPC: the same objects and answers as over TCP and as local FAISS.
        over_unix, over_tcp = Client(f"unix://{path}", key), Client(live.url, key)
        try:
            for client in (over_unix, over_tcp):
                index = client.lookup("IndexFlatL2")(dataset.d)
                index.add(dataset.xb)
                for i in range(3):  # the hot path: repeated single queries
                    D, I = index.search(dataset.xq[i : i + 1], 5)
                    np.testing.assert_array_equal(I, I0[i : i + 1])
                D, I = index.search(dataset.xq, 5)
                np.testing.assert_array_equal(I, I0)
                np.testing.assert_allclose(D, D0, rtol=1e-5)
        finally:
            over_unix.close()
            over_tcp.close()

        # REST on one keep-alive connection (the gateway may hand it to the worker).
        conn = UnixHTTPConnection(str(path))
        try:
            assert request(conn, "GET", "/v1/health", key)[0] == 200
            assert request(conn, "POST", "/v1/index", key, {"name": "u", "dimension": dataset.d})[0] == 201
            items = vector_items(dataset.xb[:300], [str(i) for i in range(300)])
            assert request(conn, "POST", "/v1/index/u/vectors", key, {"vectors": items})[0] == 200
            for _ in range(3):
                assert request(conn, "GET", "/v1/index/u/ntotal", key) == (200, {"ntotal": 300})
            status, body = request(conn, "POST", "/v1/index/u/search", key, {"vector": dataset.xq[0].tolist(), "k": 3})
            assert status == 200
            ref300 = faiss.IndexFlatL2(dataset.d)
            ref300.add(dataset.xb[:300])
            assert [hit["id"] for hit in body["results"]] == [str(i) for i in ref300.search(dataset.xq[:1], 3)[1][0]]
            assert request(conn, "GET", "/v1/index/u/ntotal", "not-a-key")[0] == 401
        finally:
            conn.close()
    finally:
        live.stop()
    assert not path.exists()  # removed at shutdown


def test_a_refused_key_over_the_unix_socket_is_an_authentication_error(tmp_path: Path, sock_dir: Path) -> None:
    path = sock_dir / "fp.sock"
    live = start_server(tmp_path / "data", unix_socket=str(path))
    try:
        _, key = live.new_tenant()
        with pytest.raises(AuthenticationError):
            lookup(f"unix://{path}", key[:-4] + "AAAA")
        client = Client(f"unix://{path}", key)  # and the server still serves
        try:
            assert client.lookup("IndexFlatL2")(8).ntotal == 0
        finally:
            client.close()
    finally:
        live.stop()


def test_the_unix_socket_is_not_tls_when_the_port_is(tmp_path: Path, sock_dir: Path) -> None:
    certs = tmp_path / "certs"
    run_cli("dev-cert", str(certs))
    path = sock_dir / "fp.sock"
    live = start_server(
        tmp_path / "data", unix_socket=str(path), tls_cert=str(certs / "cert.pem"), tls_key=str(certs / "key.pem")
    )
    try:
        _, key = live.new_tenant()
        client = Client(f"unix://{path}", key)  # plain: no CA, no handshake
        try:
            index = client.lookup("IndexFlatL2")(4)
            index.add(np.eye(4, dtype=np.float32))
            assert index.search(np.eye(4, dtype=np.float32)[:1], 1)[1].tolist() == [[0]]
        finally:
            client.close()
        assert live.url.startswith("https://")  # while the port speaks TLS only
        context = ssl.create_default_context(cafile=str(certs / "ca.pem"))
        conn = http.client.HTTPSConnection("127.0.0.1", live.server.port, context=context, timeout=30)
        try:
            assert request(conn, "GET", "/v1/health", key)[0] == 200
        finally:
            conn.close()
        plain = http.client.HTTPConnection("127.0.0.1", live.server.port, timeout=30)
        try:
            with pytest.raises((http.client.HTTPException, OSError)):
                request(plain, "GET", "/v1/health", key)
        finally:
            plain.close()
    finally:
        live.stop()


def refused(tmp_path: Path, path: Path) -> str:
    """What ``faiss-proxy serve --unix-socket PATH`` says when it refuses to start."""
    done = run_cli(
        "serve", "--port", "0", "--data-dir", str(tmp_path / "refused"), "--unix-socket", str(path), check=False
    )
    assert done.returncode != 0
    return done.stderr


def test_what_is_at_the_socket_path_decides_whether_the_server_starts(tmp_path: Path, sock_dir: Path) -> None:
    # A socket left by a server that died: replaced.
    stale = sock_dir / "stale.sock"
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(stale))
    dead.close()
    live = start_server(tmp_path / "a", unix_socket=str(stale))
    try:
        _, key = live.new_tenant()
        lookup(f"unix://{stale}", key)
        # A socket another server listens on: refused, and that server keeps it.
        assert "another server is listening on the Unix socket" in refused(tmp_path, stale)
        lookup(f"unix://{stale}", key)
    finally:
        live.stop()
    # Any other file: refused and left alone.
    regular = sock_dir / "notes.txt"
    regular.write_text("keep me")
    assert "a file that is no socket is there" in refused(tmp_path, regular)
    assert regular.read_text() == "keep me"
    # A path longer than a Unix socket address can hold: a clear refusal.
    assert "cannot serve on the Unix socket" in refused(tmp_path, sock_dir / ("x" * 120))


def test_unix_urls_name_an_absolute_socket_path(sock_dir: Path) -> None:
    assert _parse_url("unix:///run/faiss-proxy.sock") == ("", 0, "/run/faiss-proxy.sock")
    for bad in ("unix://host/run/x.sock", "unix:relative.sock", "ftp://host/x"):
        with pytest.raises(ValueError):
            _parse_url(bad)
    with pytest.raises(ConnectionError, match="cannot reach"):
        lookup(f"unix://{sock_dir}/nobody.sock", "key")

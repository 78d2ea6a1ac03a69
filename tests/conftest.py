"""Shared fixtures: a seeded dataset, an in-process server, the real CLI server.

* ``server`` — the gateway running in a background thread of the test process
  (port 0, a temporary data dir); tenant workers are real subprocesses.
* ``tenant`` / ``remote`` — a fresh tenant with a key, and the ``faiss_proxy``
  module configured for it (reset to local mode afterwards).
* ``cli_server`` — the real ``faiss-proxy serve`` command as a subprocess on a free
  port, waited on until ``/v1/health`` answers.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import re
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

import faiss_proxy
from faiss_proxy_server.config import Settings
from faiss_proxy_server.runner import Server

_counter = itertools.count()


@dataclass
class Dataset:
    d: int
    xt: np.ndarray
    xb: np.ndarray
    xq: np.ndarray


def unavailable(what: str, module_level: bool = False) -> None:
    """A tool a test needs is missing: skip on a developer's machine, but fail in CI
    (``CI`` set), whose ``.ci/run`` installs it, so a missing install step cannot hide
    behind a green run."""
    if os.environ.get("CI"):
        pytest.fail(f"CI must provide {what} (.ci/run installs it)", pytrace=False)
    pytest.skip(what, allow_module_level=module_level)


def make_dataset(d: int = 32, nt: int = 4000, nb: int = 5000, nq: int = 40, seed: int = 1234) -> Dataset:
    """Clustered data (as in faiss's own tests: uniform data makes graph indexes look bad)."""
    rs = np.random.RandomState(seed)
    centers = rs.rand(50, d).astype("float32") * 4

    def draw(n: int) -> np.ndarray:
        pts = centers[rs.randint(0, 50, n)] + rs.randn(n, d).astype("float32") * 0.3
        return np.ascontiguousarray(pts, dtype="float32")

    return Dataset(d, draw(nt), draw(nb), draw(nq))


@pytest.fixture(scope="session")
def dataset() -> Dataset:
    return make_dataset()


class LiveServer:
    """An in-process gateway on a free port, run by a background event loop."""

    def __init__(self, settings: Settings) -> None:
        self.loop = asyncio.new_event_loop()
        self.server = Server(settings)
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(10)

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def catalog(self) -> Any:
        return self.server.catalog

    @property
    def supervisor(self) -> Any:
        return self.server.supervisor

    def run(self, fn: Any, *args: Any) -> Any:
        """Run ``fn(*args)`` on the server's loop (for supervisor state)."""

        async def call() -> Any:
            return fn(*args)

        return asyncio.run_coroutine_threadsafe(call(), self.loop).result(10)

    def new_tenant(self, prefix: str = "t", **key_options: Any) -> tuple[str, str]:
        name = f"{prefix}{next(_counter)}-{os.getpid()}"
        self.catalog.create_tenant(name)
        _key, token = self.catalog.create_key(name, **key_options)
        return name, token

    def worker_pid(self, tenant: str) -> int | None:
        def pid() -> int | None:
            w = self.supervisor.workers.get(tenant)
            return w.pid if w is not None and w.alive else None

        result: int | None = self.run(pid)
        return result

    def stop(self) -> None:
        # A graceful stop may take up to the server's own shutdown_timeout (30 s by
        # default) before it kills what is left; wait that long, and say when it did.
        started = time.monotonic()
        limit = self.server.settings.shutdown_timeout + 15
        asyncio.run_coroutine_threadsafe(self.server.stop(), self.loop).result(limit)
        if time.monotonic() - started > 10:
            sys.stderr.write(f"LiveServer.stop took {time.monotonic() - started:.1f} s\n")
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def start_server(tmp: Path, **overrides: Any) -> LiveServer:
    settings = replace(Settings(), host="127.0.0.1", port=0, data_dir=str(tmp), **overrides)
    return LiveServer(settings)


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    live = start_server(tmp_path_factory.mktemp("server"), worker_idle_timeout=60.0)
    yield live
    live.stop()


@pytest.fixture
def tenant(server: LiveServer) -> tuple[str, str]:
    return server.new_tenant()


@pytest.fixture
def remote(server: LiveServer, tenant: tuple[str, str]) -> Iterator[ModuleType]:
    """``faiss_proxy`` configured for a fresh tenant of the in-process server."""
    faiss_proxy.configure(api_url=server.url, api_key=tenant[1], timeout=120)
    yield faiss_proxy
    faiss_proxy.configure(api_url="", api_key="")


@pytest.fixture
def local_faiss() -> ModuleType:
    import faiss

    return faiss


# ----------------------------------------------------------------------------------
# the real command line
# ----------------------------------------------------------------------------------
@dataclass
class CliServer:
    url: str
    data_dir: Path
    proc: subprocess.Popen[str]
    log_path: Path

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run_cli(*args, "--data-dir", str(self.data_dir), check=check)

    def log(self) -> str:
        return self.log_path.read_text()


def run_cli(*args: str, check: bool = True, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "faiss_proxy_server", *args],
        capture_output=True,
        text=True,
        check=check,
        timeout=120,
        env=env,
    )


def get_json(url: str, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"null")


def launch_cli_server(data_dir: Path, *extra: str) -> CliServer:
    log_path = data_dir.parent / f"{data_dir.name}-server.log"
    log_file = open(log_path, "w")  # handed to the child
    proc = subprocess.Popen(
        [sys.executable, "-m", "faiss_proxy_server", "serve", "--port", "0", "--data-dir", str(data_dir), *extra],
        stdout=log_file,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # a process group of its own, as a terminal's job is (Ctrl-C tests)
    )
    deadline = time.monotonic() + 30
    url = None
    while time.monotonic() < deadline:
        m = re.search(r"listening on (http://\S+)", log_path.read_text())
        if m:
            url = m.group(1)
            try:
                status, _ = get_json(url + "/v1/health")
                if status == 200:
                    return CliServer(url, data_dir, proc, log_path)
            except OSError:
                pass
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"faiss-proxy serve did not come up (url={url}):\n{log_path.read_text()}")


@pytest.fixture(scope="module")
def cli_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CliServer]:
    live = launch_cli_server(tmp_path_factory.mktemp("cli") / "data")
    yield live
    live.proc.terminate()
    try:
        live.proc.wait(20)
    except subprocess.TimeoutExpired:
        live.proc.kill()


class Rest:
    """A tiny REST client for tests: ``rest.post(path, body) -> (status, json)``."""

    def __init__(
        self, base: str, key: str | None, header: str = "Authorization", context: ssl.SSLContext | None = None
    ) -> None:
        self.base = base.rstrip("/")
        self.key = key
        self.header = header
        self.context = context

    def call(self, method: str, path: str, body: Any = None, raw: bytes | None = None) -> tuple[int, Any]:
        headers = {"Content-Type": "application/json"}
        if self.key is not None:
            headers[self.header] = f"Bearer {self.key}" if self.header == "Authorization" else self.key
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        req = urllib.request.Request(self.base + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=60, context=self.context) as resp:
                payload = resp.read()
                status = resp.status
        except urllib.error.HTTPError as err:
            payload = err.read()
            status = err.code
        try:
            return status, json.loads(payload) if payload else None
        except ValueError:
            return status, payload.decode("utf-8", "replace")

    def get(self, path: str) -> tuple[int, Any]:
        return self.call("GET", path)

    def post(self, path: str, body: Any = None, raw: bytes | None = None) -> tuple[int, Any]:
        return self.call("POST", path, body if body is not None or raw is not None else {}, raw)

    def delete(self, path: str) -> tuple[int, Any]:
        return self.call("DELETE", path)


@pytest.fixture
def rest(server: LiveServer, tenant: tuple[str, str]) -> Rest:
    """A REST client for a fresh tenant of the in-process server."""
    return Rest(server.url, tenant[1])


def vector_items(x: np.ndarray, ids: list[str], metadata: list[Any] | None = None) -> list[dict[str, Any]]:
    items = []
    for i, (row, ident) in enumerate(zip(x, ids, strict=True)):
        item: dict[str, Any] = {"id": ident, "values": row.tolist()}
        if metadata is not None:
            item["metadata"] = metadata[i]
        items.append(item)
    return items

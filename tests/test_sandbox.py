"""Defense in depth: what a tenant's worker could reach if FAISS were subverted.

The attack assumed is native code execution inside a worker.  The sandbox is
checked two ways: the real workers report (and /proc shows) what was applied, and
a process sandboxed by the same code tries what such an attacker would.
"""

from __future__ import annotations

import json
import os
import secrets
import stat
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import faiss_proxy
from faiss_proxy_server.sandbox import landlock_abi
from faiss_proxy_server.supervisor import others_can_traverse

from .conftest import LiveServer, Rest, start_server

ABI = landlock_abi()


def worker_status(pid: int) -> dict[str, str]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return fields


def test_real_workers_are_locked_down(server: LiveServer) -> None:
    tenant, key = server.new_tenant()
    assert Rest(server.url, key).post("/v1/index", {"name": "s", "dimension": 4})[0] == 201
    pid = server.worker_pid(tenant)
    assert pid is not None
    report = server.run(lambda: server.supervisor.workers[tenant].sandbox)
    assert report["no_new_privs"] is True and worker_status(pid)["NoNewPrivs"] == "1"
    assert report["landlock"] == ABI
    limits = Path(f"/proc/{pid}/limits").read_text()
    assert [line.split()[4] for line in limits.splitlines() if line.startswith("Max core file size")] == ["0"]
    # no descriptor of the gateway leaked in: stdio, the control channel, the REST channels
    fds = report["fds"]
    assert set(fds) >= {0, 1, 2} and len(fds) <= 3 + 1 + server.server.settings.rest_threads + 2
    for fd in os.listdir(f"/proc/{pid}/fd"):
        target = os.readlink(f"/proc/{pid}/fd/{fd}")
        assert "catalog.sqlite3" not in target and "secret.key" not in target, target


def test_workers_inherit_no_secrets_from_the_gateway(server: LiveServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """The gateway's environment may hold the admin password and the metrics token; a worker,
    which runs tenants' calls, is started with an allow-listed environment only."""
    secret = secrets.token_hex(16)
    monkeypatch.setenv("FAISS_PROXY_ADMIN_PASSWORD", secret)
    monkeypatch.setenv("FAISS_PROXY_METRICS_TOKEN", secret)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    tenant, key = server.new_tenant()
    assert Rest(server.url, key).get("/v1/index")[0] == 200  # starts the worker, after setenv
    pid = server.worker_pid(tenant)
    assert pid is not None
    environ = Path(f"/proc/{pid}/environ").read_bytes()
    assert secret.encode() not in environ
    names = {entry.split(b"=", 1)[0].decode() for entry in environ.split(b"\0") if entry}
    assert "PATH" in names and not any(n.startswith("FAISS_PROXY_") for n in names), names


ATTACK = textwrap.dedent(
    """
    import json, os, socket, sys
    from pathlib import Path
    from faiss_proxy_server import sandbox

    data, mine, other = (Path(p) for p in sys.argv[1:4])
    disks = [str(p) for p in sorted(Path("/dev").iterdir()) if p.name[:2] in ("sd", "vd", "xv", "nv", "lo")]
    disks = disks or ["/dev/tty"]
    report = sandbox.apply(mine, 0, None, landlock=True)
    out = {"report": report}

    def attempt(name, fn):
        try:
            fn()
            out[name] = "allowed"
        except OSError as exc:
            out[name] = type(exc).__name__

    attempt("read_other_tenant", lambda: (other / "indexes" / "x" / "snapshot.bin").read_bytes())
    attempt("list_other_tenant", lambda: os.listdir(other))
    attempt("read_secret_key", lambda: (data / "secret.key").read_bytes())
    attempt("read_catalog", lambda: (data / "catalog.sqlite3").read_bytes())
    attempt("write_outside", lambda: (data / "planted").write_text("x"))
    attempt("write_own", lambda: (mine / "scratch").write_text("x"))
    attempt("read_own", lambda: (mine / "scratch").read_text())
    attempt("tcp_connect", lambda: socket.create_connection(("127.0.0.1", int(sys.argv[4])), timeout=2).close())
    # the gateway's environment (FAISS_PROXY_ADMIN_PASSWORD) and memory, host secrets, raw disks
    attempt("read_parent_environ", lambda: Path(f"/proc/{os.getppid()}/environ").read_bytes())
    attempt("read_parent_maps", lambda: Path(f"/proc/{os.getppid()}/maps").read_bytes())
    attempt("read_etc_shadow", lambda: Path("/etc/shadow").read_bytes())
    attempt("list_etc", lambda: os.listdir("/etc"))
    attempt("read_disk", lambda: open(disks[0], "rb").close())
    attempt("read_own_proc", lambda: Path("/proc/self/status").read_text())
    import faiss, numpy as np  # the worker's own work still runs
    index = faiss.IndexFlatL2(8)
    index.add(np.ones((4, 8), "float32"))
    out["faiss"] = int(index.ntotal)
    print(json.dumps(out))
    """
)


@pytest.mark.skipif(ABI == 0, reason="this kernel has no Landlock")
def test_a_subverted_worker_cannot_reach_other_tenants(server: LiveServer, tmp_path: Path) -> None:
    data = Path(server.server.settings.data_path)
    mine = data / "tenants" / "attacker"
    other = data / "tenants" / "victim"
    (other / "indexes" / "x").mkdir(parents=True, exist_ok=True)
    (other / "indexes" / "x" / "snapshot.bin").write_bytes(b"victim's vectors")
    mine.mkdir(parents=True, exist_ok=True)
    port = server.server.port
    run = subprocess.run(
        [sys.executable, "-c", ATTACK, str(data), str(mine), str(other), str(port)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert out["report"]["landlock"] == ABI
    for what in ("read_other_tenant", "list_other_tenant", "read_secret_key", "read_catalog", "write_outside"):
        assert out[what] == "PermissionError", (what, out)
    for what in ("read_parent_environ", "read_parent_maps", "read_etc_shadow", "list_etc", "read_disk"):
        assert out[what] in ("PermissionError", "FileNotFoundError"), (what, out)
    assert out["read_parent_environ"] == "PermissionError", out  # /proc/<pid> of the parent exists
    assert out["write_own"] == out["read_own"] == out["read_own_proc"] == "allowed"
    if ABI >= 4:
        assert out["tcp_connect"] == "PermissionError"
    assert out["faiss"] == 4
    assert not (data / "planted").exists()


def _uid_setup_possible() -> bool:
    return others_can_traverse(Path(sys.prefix)) and others_can_traverse(Path(sys.base_prefix))


@pytest.fixture
def uid_server() -> Iterator[LiveServer]:
    if os.geteuid() != 0:
        pytest.skip("separate worker uids need the server to run as root")
    # Every ancestor of the data dir must be traversable by the workers' uids.
    base = Path(tempfile.mkdtemp(prefix="faiss-proxy-uid-", dir="/tmp"))
    base.chmod(0o755)
    live = start_server(base / "data", worker_uid_base=61000)
    (base / "data").chmod(0o755)
    yield live
    live.stop()
    subprocess.run(["rm", "-rf", str(base)], check=False)


def test_workers_get_a_uid_of_their_own_when_root(uid_server: LiveServer) -> None:
    if not _uid_setup_possible():
        # This machine's Python lives where other uids cannot read it (e.g. under
        # /root): the server must say so clearly instead of starting broken workers.
        name, key = uid_server.new_tenant("ux")
        status, body = Rest(uid_server.url, key).post("/v1/index", {"name": "i", "dimension": 4})
        assert status == 503 and "not reachable by other users" in body["error"]["message"]
        pytest.skip(f"Python ({sys.prefix}) is not readable by other uids here; checked the clear refusal instead")
    live = uid_server
    a, key_a = live.new_tenant("ua")
    b, key_b = live.new_tenant("ub")
    for key in (key_a, key_b):
        rest = Rest(live.url, key)
        assert rest.post("/v1/index", {"name": "i", "dimension": 4})[0] == 201
        assert rest.post("/v1/index/i/vectors", {"vectors": [{"id": "1", "values": [1, 2, 3, 4]}]})[0] == 200
    uids = {}
    for tenant in (a, b):
        pid = live.worker_pid(tenant)
        assert pid is not None
        real, effective, *_ = worker_status(pid)["Uid"].split()
        uids[tenant] = int(effective)
        assert int(real) == int(effective) >= 61000
        directory = Path(live.server.settings.data_path) / "tenants" / tenant
        st = directory.stat()
        assert st.st_uid == uids[tenant] and stat.S_IMODE(st.st_mode) == 0o700
        files = list(directory.rglob("*"))
        assert files and all(p.stat().st_uid == uids[tenant] for p in files)
    assert uids[a] != uids[b]
    faiss_proxy.configure(api_url=live.url, api_key=key_a, timeout=60)
    try:
        index = faiss_proxy.open_index("i")
        D, I = index.search(np.array([[1, 2, 3, 4]], "float32"), 1)
        assert I.tolist() == [[1]]
    finally:
        faiss_proxy.configure(api_url="", api_key="")

"""The real ``faiss-proxy`` command end to end: serve, tenants, keys, a client process."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

from .conftest import CliServer, get_json

CLIENT = textwrap.dedent(
    """
    import numpy as np
    import faiss_proxy as faiss
    rs = np.random.RandomState(0)
    xt = rs.rand(3000, 32).astype("float32")
    xb = rs.rand(2000, 32).astype("float32")
    xq = rs.rand(5, 32).astype("float32")
    index = faiss.index_factory(32, "IVF16,PQ8x4")
    index.train(xt); index.add(xb); index.nprobe = 8
    D, I = index.search(xq, 10)
    import faiss as local
    ref = local.index_factory(32, "IVF16,PQ8x4")
    ref.train(xt); ref.add(xb); ref.nprobe = 8
    assert (ref.search(xq, 10)[1] == I).all()
    print("OK", index.ntotal)
    """
)


def _client_env(cli_server: CliServer, key: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(FAISS_PROXY_URL=cli_server.url, FAISS_PROXY_API_KEY=key)
    return env


def _run_client(cli_server: CliServer, key: str, code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], env=_client_env(cli_server, key), capture_output=True, text=True, timeout=120
    )


def test_readme_flow(cli_server: CliServer) -> None:
    status, body = get_json(cli_server.url + "/v1/health")
    assert status == 200 and body["status"] == "ok"
    assert "created tenant acme" in cli_server.cli("tenant", "create", "acme").stdout
    created = cli_server.cli("key", "create", "acme")
    key = created.stdout.strip().splitlines()[-1]
    assert key.count(".") == 2  # a JWT, alone on the last line
    run = _run_client(cli_server, key, CLIENT)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "OK 2000"
    log = cli_server.log()
    assert "op=rpc" in log and "tenant=acme" in log and "status=101" in log
    # one line per RPC session: tenant, key id, calls, errors, duration, outcome
    # (written by the worker when it sees the client's socket close)
    deadline = time.monotonic() + 10
    while "rpc session tenant=acme" not in log and time.monotonic() < deadline:
        time.sleep(0.1)
        log = cli_server.log()
    session_lines = [line for line in log.splitlines() if "rpc session tenant=acme" in line]
    assert session_lines and "outcome=closed" in session_lines[-1] and "duration=" in session_lines[-1]
    assert key not in log  # keys are never logged


def test_tenant_and_key_commands_while_serving(cli_server: CliServer) -> None:
    cli_server.cli("tenant", "create", "beta")
    assert "beta\tactive" in cli_server.cli("tenant", "list").stdout
    dup = cli_server.cli("tenant", "create", "beta", check=False)
    assert dup.returncode == 1 and "already exists" in dup.stderr
    bad = cli_server.cli("tenant", "create", "Bad Name!", check=False)
    assert bad.returncode == 1 and "tenant names" in bad.stderr

    ro = cli_server.cli("key", "create", "beta", "--read-only", "--expires", "30d", "--name", "ci")
    key = ro.stdout.strip().splitlines()[-1]
    rows = cli_server.cli("key", "list", "beta").stdout.strip().splitlines()
    assert len(rows) == 1
    key_id, tenant, scope, state, name = rows[0].split("\t")[:5]
    assert (tenant, scope, state, name) == ("beta", "read-only", "active", "ci")
    assert key_id.startswith("k_")

    ok = _run_client(cli_server, key, "import faiss_proxy as f; print(f.IndexFlatL2(4).ntotal)")
    assert ok.returncode == 0 and ok.stdout.strip() == "0", ok.stderr

    assert "revoked key" in cli_server.cli("key", "revoke", key_id).stdout
    assert "\trevoked\t" in cli_server.cli("key", "list").stdout
    again = cli_server.cli("key", "revoke", key_id, check=False)
    assert again.returncode == 1 and "already revoked" in again.stderr
    refused = _run_client(cli_server, key, "import faiss_proxy as f; f.IndexFlatL2(4)")
    assert refused.returncode != 0 and "AuthenticationError" in refused.stderr and "revoked" in refused.stderr

    assert "deleted tenant beta" in cli_server.cli("tenant", "delete", "beta").stdout
    assert "beta" not in cli_server.cli("tenant", "list").stdout
    missing = cli_server.cli("key", "create", "beta", check=False)
    assert missing.returncode == 1 and "does not exist" in missing.stderr


def test_bad_expiry_is_a_usage_error(cli_server: CliServer) -> None:
    bad = cli_server.cli("key", "create", "acme", "--expires", "tomorrow-ish", check=False)
    assert bad.returncode == 2 and "invalid expiry" in bad.stderr


def test_sigterm_stops_server_and_workers(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from .conftest import launch_cli_server, run_cli

    live = launch_cli_server(tmp_path / "data")
    run_cli("tenant", "create", "t", "--data-dir", str(live.data_dir))
    key = run_cli("key", "create", "t", "--data-dir", str(live.data_dir)).stdout.strip().splitlines()[-1]
    env = _client_env(live, key)
    subprocess.run([sys.executable, "-c", "import faiss_proxy as f; f.IndexFlatL2(4)"], env=env, check=True, timeout=60)
    live.proc.terminate()
    assert live.proc.wait(30) == 0
    log = live.log()
    assert "shutting down" in log and "worker stopped tenant=t" in log

"""Examples run against a real server."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from .conftest import CliServer

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def test_quickstart_example(cli_server: CliServer) -> None:
    cli_server.cli("tenant", "create", "examples")
    key = cli_server.cli("key", "create", "examples").stdout.strip().splitlines()[-1]
    env = dict(os.environ, FAISS_PROXY_URL=cli_server.url, FAISS_PROXY_API_KEY=key)
    run = subprocess.run(
        [sys.executable, str(EXAMPLES / "quickstart.py")], env=env, capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("remote search, ntotal = 20000")

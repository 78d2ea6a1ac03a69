"""With no server configured, faiss_proxy is local faiss; without faiss, a clear ImportError."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap


def _run(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("FAISS_PROXY_")}
    clean.update(env)
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], env=clean, capture_output=True, text=True, timeout=120
    )


def test_falls_back_to_local_faiss() -> None:
    run = _run(
        """
        import numpy as np, faiss, faiss_proxy
        assert not faiss_proxy.is_remote()
        assert faiss_proxy.IndexFlatL2 is faiss.IndexFlatL2
        index = faiss_proxy.index_factory(8, "Flat")
        index.add(np.eye(8, dtype="float32"))
        print(index.search(np.eye(8, dtype="float32")[:2], 1)[1].ravel().tolist())
        """
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "[0, 1]"


def test_without_faiss_and_server_import_error_says_how_to_configure() -> None:
    run = _run(
        """
        import sys
        sys.modules["faiss"] = None  # as if faiss-cpu were not installed
        import faiss_proxy
        try:
            faiss_proxy.IndexFlatL2
        except ImportError as exc:
            print(exc)
        """
    )
    assert run.returncode == 0, run.stderr
    assert "configure(api_url=" in run.stdout and "FAISS_PROXY_URL" in run.stdout


def test_client_package_does_not_import_faiss_or_server_code() -> None:
    run = _run(
        """
        import sys, faiss_proxy
        faiss_proxy.configure(api_url="http://127.0.0.1:9", api_key="k")
        assert faiss_proxy.is_remote()
        heavy = ("faiss.", "faiss_proxy_server", "tornado", "jwt")
        bad = [m for m in sys.modules if m == "faiss" or m.startswith(heavy)]
        print(bad)
        """
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "[]"


def test_configure_needs_a_key() -> None:
    run = _run(
        """
        import faiss_proxy
        try:
            faiss_proxy.configure(api_url="http://127.0.0.1:9")
        except ValueError as exc:
            print(exc)
        """
    )
    assert "API key" in run.stdout


def test_named_indexes_need_a_server() -> None:
    run = _run(
        """
        import faiss_proxy
        try:
            faiss_proxy.open_index("docs")
        except RuntimeError as exc:
            print(exc)
        """
    )
    assert run.returncode == 0, run.stderr
    assert "named indexes live on a faiss-proxy server" in run.stdout and "configure" in run.stdout

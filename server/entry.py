"""The ``faiss-proxy`` console script: the CLI, or a clear word when the server is not installed.

The base package is the client (numpy + rpyc); the command ships with it, but the server
needs the ``[server]`` extra.  Without it, importing the CLI would end in a traceback about
``tornado`` or ``jwt``; this entry point checks first and says what to install.
"""

from __future__ import annotations

import importlib.util
import sys

__all__ = ["main", "missing_server_dependencies"]

#: Import names of the ``[server]`` extra (pyproject.toml).
SERVER_MODULES = ("faiss", "tornado", "jwt", "orjson", "prometheus_client", "cryptography", "argon2")


def missing_server_dependencies() -> list[str]:
    return [name for name in SERVER_MODULES if importlib.util.find_spec(name) is None]


def main() -> None:
    missing = missing_server_dependencies()
    if missing:
        sys.stderr.write(
            f"faiss-proxy: the server is not installed (missing: {', '.join(missing)}).\n"
            "  pip install 'faiss-proxy[server]'\n"
            "(the base package is the client library: import faiss_proxy)\n"
        )
        raise SystemExit(2)
    from .cli import main as cli_main

    cli_main()

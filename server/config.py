"""Server settings: one table, one source of truth.

Every setting has a default, a help text, a command-line flag (``--worker-idle-timeout``)
and an environment variable (``FAISS_PROXY_WORKER_IDLE_TIMEOUT``).  A flag beats the
environment, which beats the default.  The README's settings table is checked
against :data:`SETTINGS` by the test suite.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["Setting", "SETTINGS", "Settings", "add_arguments", "load_settings", "ENV_PREFIX"]

ENV_PREFIX = "FAISS_PROXY_"


@dataclass(frozen=True)
class Setting:
    name: str
    type: type
    default: Any
    help: str
    #: Allowed range ``(low, high)`` of a numeric setting; None: any value of the type.
    limits: tuple[float, float] | None = None
    #: Allowed values of a string setting; None: any string.
    choices: tuple[str, ...] | None = None

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper()


SETTINGS: tuple[Setting, ...] = (
    Setting("host", str, "127.0.0.1", "Interface the HTTP/RPC port binds to."),
    Setting("port", int, 8000, "TCP port for REST, RPC upgrades and health checks (0 picks a free port)."),
    Setting(
        "unix_socket",
        str,
        "",
        "Also serve everything the port serves on this Unix socket path (clients on the same machine: "
        "FAISS_PROXY_URL=unix:///that/path; who may connect is up to the directory's permissions). '': none.",
    ),
    Setting(
        "data_dir",
        str,
        "./faiss-proxy-data",
        "Directory for the catalog (tenants, keys), the signing secret and tenant data.",
    ),
    Setting(
        "worker_idle_timeout",
        float,
        300.0,
        "Seconds a tenant worker with no open session keeps running before it is stopped.",
    ),
    Setting(
        "worker_start_timeout",
        float,
        30.0,
        "Seconds to wait for a new tenant worker to report ready before the RPC upgrade fails with 503.",
    ),
    Setting(
        "worker_memory_limit_mb",
        int,
        0,
        "Memory limit per tenant worker in MiB (RLIMIT_DATA); exceeding it raises MemoryError. 0: no limit.",
    ),
    Setting(
        "session_threads",
        int,
        4,
        "Threads serving one RPC session, so calls from several client threads run in parallel.",
    ),
    Setting(
        "session_spin_us",
        float,
        200.0,
        "Microseconds a session thread busy-waits for a client's next call after answering one, before it sleeps "
        "(only while that client calls back within this time; saves a wake-up per call). 0: never; at most 100000.",
        limits=(0, 100_000),
    ),
    Setting("omp_threads", int, 0, "OpenMP threads a worker uses for batch calls; 0 uses all cores."),
    Setting(
        "omp_min_rows", int, 32, "Calls whose largest array argument has fewer rows than this run on one OpenMP thread."
    ),
    Setting(
        "max_message_mb",
        int,
        1024,
        "Largest RPC message (arguments or results of one call) in MiB; larger frames close the session.",
    ),
    Setting("max_body_mb", int, 256, "Largest REST request body in MiB; larger bodies get 413."),
    Setting("max_k", int, 1024, "Largest k (results per query) a REST search may ask for."),
    Setting("max_batch", int, 100_000, "Most vectors (or queries) in one REST request."),
    Setting(
        "rest_threads",
        int,
        8,
        "REST channels (and threads) per tenant worker: how many REST requests of one tenant run at once "
        "through the gateway.",
    ),
    Setting(
        "rest_direct_connections",
        int,
        64,
        "Plain-HTTP REST connections per tenant worker that, once a request on them is authenticated, the "
        "worker serves itself (a thread each; the gateway keeps serving the rest; not with TLS or "
        "tenant_rate_limit). 0: the gateway serves every REST request.",
    ),
    Setting(
        "snapshot_wal_mb",
        float,
        256.0,
        "Write-ahead log size (MiB) after which a named index is snapshotted and its log compacted.",
    ),
    Setting(
        "snapshot_interval",
        float,
        300.0,
        "Seconds after which a named index with logged changes is snapshotted anyway.",
    ),
    Setting(
        "metrics_token",
        str,
        "",
        "If set, GET /v1/metrics needs 'Authorization: Bearer <this token>'. Empty: metrics are public.",
    ),
    Setting("log_level", str, "info", "Log level: debug, info, warning or error."),
    Setting("log_format", str, "text", "Log line format: 'text' (key=value) or 'json' (one object per line)."),
    Setting(
        "shutdown_timeout",
        float,
        30.0,
        "Seconds SIGTERM/SIGINT waits for in-flight requests and worker snapshots before stopping anyway.",
    ),
    Setting("tenant_max_indexes", int, 0, "Most named indexes per tenant (403 / PermissionError beyond). 0: no limit."),
    Setting(
        "tenant_max_vectors",
        int,
        0,
        "Most vectors in all named indexes of a tenant (403 / PermissionError beyond). 0: no limit.",
    ),
    Setting("tenant_max_sessions", int, 0, "Most concurrent RPC sessions per tenant (429 beyond). 0: no limit."),
    Setting(
        "tenant_rate_limit",
        float,
        0.0,
        "Requests per second per tenant, with bursts of the same size, counted twice over: REST requests "
        "and RPC session starts in the gateway, and RPC calls in the worker, each against its own budget "
        "of this size; beyond: 429 / PermissionError. 0: no limit.",
    ),
    Setting(
        "worker_nice",
        int,
        5,
        "Nice value added to tenant workers, so the gateway (REST, admin, health) keeps CPU when busy "
        "workers fill every core. 0: same priority as the gateway.",
    ),
    Setting(
        "worker_sandbox",
        str,
        "on",
        "'on': workers run under Landlock (read only Python and libraries, write only their tenant dir, "
        "no TCP) where the kernel has it, plus no-new-privs and rlimits; 'off': rlimits only.",
        choices=("on", "off"),
    ),
    Setting(
        "worker_huge_pages",
        str,
        "on",
        "'on': a worker's large allocations (index storage) ask the kernel for transparent huge pages "
        "(glibc.malloc.hugetlb=1), which makes scans of large indexes ~10% faster; 'off': the system default.",
        choices=("on", "off"),
    ),
    Setting(
        "worker_uid_base",
        int,
        0,
        "When the server runs as root: run each tenant's worker as uid/gid BASE + tenant number, owning only "
        "its tenant dir (mode 0700). 0: workers keep the server's uid.",
    ),
    Setting("tls_cert", str, "", "PEM certificate (chain) file: serve HTTPS, and RPC over TLS. Needs tls_key."),
    Setting("tls_key", str, "", "PEM private key file for tls_cert."),
)


@dataclass(frozen=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 8000
    unix_socket: str = ""
    data_dir: str = "./faiss-proxy-data"
    worker_idle_timeout: float = 300.0
    worker_start_timeout: float = 30.0
    worker_memory_limit_mb: int = 0
    session_threads: int = 4
    session_spin_us: float = 200.0
    omp_threads: int = 0
    omp_min_rows: int = 32
    max_message_mb: int = 1024
    max_body_mb: int = 256
    max_k: int = 1024
    max_batch: int = 100_000
    rest_threads: int = 8
    rest_direct_connections: int = 64
    snapshot_wal_mb: float = 256.0
    snapshot_interval: float = 300.0
    metrics_token: str = ""
    log_level: str = "info"
    log_format: str = "text"
    shutdown_timeout: float = 30.0
    tenant_max_indexes: int = 0
    tenant_max_vectors: int = 0
    tenant_max_sessions: int = 0
    tenant_rate_limit: float = 0.0
    worker_nice: int = 5
    worker_sandbox: str = "on"
    worker_huge_pages: str = "on"
    worker_uid_base: int = 0
    tls_cert: str = ""
    tls_key: str = ""

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir).expanduser().resolve()


def _convert(setting: Setting, raw: str) -> Any:
    try:
        value = setting.type(raw)
    except ValueError as exc:
        raise SystemExit(f"invalid value {raw!r} for {setting.env}/{setting.flag}: {exc}") from exc
    if setting.limits is not None and not setting.limits[0] <= value <= setting.limits[1]:
        low, high = setting.limits
        raise SystemExit(f"invalid value {raw!r} for {setting.env}/{setting.flag}: must be between {low} and {high}")
    if setting.choices is not None and value not in setting.choices:
        raise SystemExit(
            f"invalid value {raw!r} for {setting.env}/{setting.flag}: must be one of {', '.join(setting.choices)}"
        )
    return value


def add_arguments(parser: argparse.ArgumentParser, names: tuple[str, ...] | None = None) -> None:
    """Add ``--flag`` options for the given settings (all by default)."""
    for s in SETTINGS:
        if names is None or s.name in names:
            parser.add_argument(
                s.flag,
                dest=s.name,
                default=None,
                metavar=s.type.__name__.upper(),
                help=f"{s.help} (default: {s.default!r}; env {s.env})",
            )


def load_settings(args: argparse.Namespace | None = None, env: Mapping[str, str] | None = None) -> Settings:
    """Defaults, overridden by ``FAISS_PROXY_*`` variables, overridden by flags."""
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    for s in SETTINGS:
        value = s.default
        if s.env in env and env[s.env] != "":
            value = _convert(s, env[s.env])
        flag_value = getattr(args, s.name, None) if args is not None else None
        if flag_value is not None:
            value = _convert(s, flag_value)
        values[s.name] = value
    return Settings(**values)

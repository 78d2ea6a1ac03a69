"""The catalog: tenants and API keys in SQLite, and the key signing secret.

Everything lives in the data directory, so ``faiss-proxy serve`` needs no external
service.  The CLI (``faiss-proxy tenant ...``, ``faiss-proxy key ...``) opens the
same SQLite file, in WAL mode, so it works while the server runs: a key revoked
from the CLI is refused on the server's next authentication.

API keys are JWTs (HS256, signed with ``secret.key``, created on first use with
mode 0600) carrying the tenant, the key id and the scope.  The token alone is not
enough: every authentication also checks the key id against this catalog, which
is what makes revocation immediate.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import secrets
import shutil
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt

from .errors import BadRequest, Conflict, Forbidden, NotFound, Unauthorized

__all__ = ["Catalog", "Tenant", "ApiKey", "Principal", "SCOPES"]

log = logging.getLogger("faiss_proxy.catalog")
ISSUER = "faiss-proxy"
SCOPES = ("read-write", "read-only")
_TENANT_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
_SCHEMA = """
CREATE TABLE IF NOT EXISTS tenants (
    name TEXT PRIMARY KEY,
    created_at REAL NOT NULL,
    status TEXT NOT NULL DEFAULT 'active'
);
CREATE TABLE IF NOT EXISTS api_keys (
    key_id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL REFERENCES tenants(name) ON DELETE CASCADE,
    name TEXT NOT NULL DEFAULT '',
    scope TEXT NOT NULL,
    created_at REAL NOT NULL,
    expires_at REAL,
    revoked_at REAL,
    last_used_at REAL
);
CREATE INDEX IF NOT EXISTS api_keys_tenant ON api_keys(tenant);
CREATE TABLE IF NOT EXISTS settings (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""
TENANT_STATUSES = ("active", "suspended")


@dataclass(frozen=True)
class Tenant:
    name: str
    created_at: float
    status: str


@dataclass(frozen=True)
class ApiKey:
    key_id: str
    tenant: str
    name: str
    scope: str
    created_at: float
    expires_at: float | None
    revoked_at: float | None
    last_used_at: float | None


@dataclass(frozen=True)
class Principal:
    """Who an authenticated request acts as."""

    tenant: str
    key_id: str
    scope: str
    expires: float | None = None  # the key's expiry (Unix time), if it has one

    @property
    def read_only(self) -> bool:
        return self.scope == "read-only"


class Catalog:
    #: ``last_used_at`` is written at most this often per key (seconds).
    LAST_USED_RESOLUTION = 30.0

    def __init__(self, data_dir: Path) -> None:
        self._local = threading.local()
        self._claims: dict[str, dict[str, Any]] = {}  # verified tokens -> their claims
        self._last_used: dict[str, float] = {}
        self._watch_db: sqlite3.Connection | None = None  # see data_version
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.data_dir / "catalog.sqlite3"
        with self._db() as db:
            db.executescript(_SCHEMA)
        self._secret = self._load_secret()

    # --- storage ---------------------------------------------------------------------
    @contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        """This thread's connection (kept open: opening one costs about a millisecond,
        more than the whole rest of a request)."""
        local = self._local
        db: sqlite3.Connection | None = getattr(local, "db", None)
        if db is None or getattr(local, "pid", None) != os.getpid():
            db = sqlite3.connect(self.path, timeout=10, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("PRAGMA foreign_keys=ON")
            local.db, local.pid = db, os.getpid()
        yield db

    def _load_secret(self) -> bytes:
        path = self.data_dir / "secret.key"
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return bytes.fromhex(path.read_text().strip())
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
        return bytes.fromhex(path.read_text().strip())

    def tenant_dir(self, tenant: str) -> Path:
        return self.data_dir / "tenants" / tenant

    # --- tenants ---------------------------------------------------------------------
    def create_tenant(self, name: str) -> Tenant:
        if not _TENANT_NAME.match(name):
            raise BadRequest(
                "tenant names are 1-63 characters: lowercase letters, digits, '-' and '_', "
                "starting with a letter or digit"
            )
        tenant = Tenant(name, time.time(), "active")
        with self._db() as db:
            try:
                db.execute("INSERT INTO tenants VALUES (?, ?, ?)", (name, tenant.created_at, tenant.status))
            except sqlite3.IntegrityError:
                raise Conflict(f"tenant '{name}' already exists") from None
        self.tenant_dir(name).mkdir(parents=True, exist_ok=True)
        return tenant

    def get_tenant(self, name: str) -> Tenant:
        with self._db() as db:
            row = db.execute("SELECT name, created_at, status FROM tenants WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise NotFound(f"tenant '{name}' does not exist")
        return Tenant(*row)

    def tenant_number(self, name: str) -> int:
        """A small positive number unique among existing tenants (its row id)."""
        with self._db() as db:
            row = db.execute("SELECT rowid FROM tenants WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise NotFound(f"tenant '{name}' does not exist")
        return int(row[0])

    def list_tenants(self) -> list[Tenant]:
        with self._db() as db:
            rows = db.execute("SELECT name, created_at, status FROM tenants ORDER BY name").fetchall()
        return [Tenant(*r) for r in rows]

    def set_tenant_status(self, name: str, status: str) -> Tenant:
        """Suspend or resume a tenant: a suspended tenant's keys get 403 (immediately)."""
        if status not in TENANT_STATUSES:
            raise BadRequest(f"tenant status must be one of {TENANT_STATUSES}")
        self.get_tenant(name)
        with self._db() as db:
            db.execute("UPDATE tenants SET status = ? WHERE name = ?", (status, name))
        return self.get_tenant(name)

    # --- small persistent settings (the admin password hash) ---------------------------
    def get_setting(self, key: str) -> str | None:
        with self._db() as db:
            row = db.execute("SELECT value FROM settings WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def put_setting(self, key: str, value: str) -> None:
        with self._db() as db:
            db.execute(
                "INSERT INTO settings VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value", (key, value)
            )

    def derived_secret(self, purpose: str) -> bytes:
        """A secret for ``purpose`` (e.g. signing admin cookies), derived from secret.key."""
        return hmac.new(self._secret, purpose.encode(), hashlib.sha256).digest()

    def delete_tenant(self, name: str) -> None:
        self.get_tenant(name)
        with self._db() as db:
            db.execute("DELETE FROM api_keys WHERE tenant = ?", (name,))
            db.execute("DELETE FROM tenants WHERE name = ?", (name,))
        shutil.rmtree(self.tenant_dir(name), ignore_errors=True)

    # --- keys ------------------------------------------------------------------------
    def create_key(
        self, tenant: str, *, name: str = "", read_only: bool = False, expires_at: float | None = None
    ) -> tuple[ApiKey, str]:
        """Create a key; returns its record and the token (shown once, never stored)."""
        self.get_tenant(tenant)
        now = time.time()
        if expires_at is not None and expires_at <= now:
            raise BadRequest("the expiry must be in the future")
        key = ApiKey(
            key_id="k_" + secrets.token_hex(8),
            tenant=tenant,
            name=name,
            scope="read-only" if read_only else "read-write",
            created_at=now,
            expires_at=expires_at,
            revoked_at=None,
            last_used_at=None,
        )
        with self._db() as db:
            db.execute(
                "INSERT INTO api_keys VALUES (?, ?, ?, ?, ?, ?, NULL, NULL)",
                (key.key_id, tenant, name, key.scope, key.created_at, expires_at),
            )
        claims: dict[str, object] = {
            "iss": ISSUER,
            "sub": tenant,
            "jti": key.key_id,
            "scope": key.scope,
            "iat": int(now),
        }
        if expires_at is not None:
            claims["exp"] = int(expires_at)
        token = jwt.encode(claims, self._secret, algorithm="HS256")
        return key, token

    def list_keys(self, tenant: str | None = None) -> list[ApiKey]:
        query = "SELECT * FROM api_keys"
        params: tuple[str, ...] = ()
        if tenant is not None:
            self.get_tenant(tenant)
            query += " WHERE tenant = ?"
            params = (tenant,)
        with self._db() as db:
            rows = db.execute(query + " ORDER BY created_at", params).fetchall()
        return [ApiKey(*r) for r in rows]

    def revoke_key(self, key_id: str) -> ApiKey:
        with self._db() as db:
            cur = db.execute(
                "UPDATE api_keys SET revoked_at = ? WHERE key_id = ? AND revoked_at IS NULL",
                (time.time(), key_id),
            )
            row = db.execute("SELECT * FROM api_keys WHERE key_id = ?", (key_id,)).fetchone()
        if row is None:
            raise NotFound(f"API key '{key_id}' does not exist")
        if cur.rowcount == 0:
            raise Conflict(f"API key '{key_id}' is already revoked")
        return ApiKey(*row)

    # --- watching for changes ----------------------------------------------------------
    def data_version(self) -> int:
        """A number that changes whenever the catalog was changed through another
        connection (this process's other threads, or the CLI while the server runs).
        It uses a connection of its own, kept for this, and costs a few microseconds."""
        if self._watch_db is None:
            self._watch_db = sqlite3.connect(self.path, timeout=10, isolation_level=None, check_same_thread=False)
        return int(self._watch_db.execute("PRAGMA data_version").fetchone()[0])

    def access_state(self, tenants: list[str], since: float, now: float) -> dict[str, tuple[str, list[str]]]:
        """For each of ``tenants`` that still exists: its status and the ids of its keys
        that were revoked, or that expired, in ``[since, now]``.  A tenant missing from
        the result was deleted."""
        if not tenants:
            return {}
        marks = ",".join("?" * len(tenants))
        out: dict[str, tuple[str, list[str]]] = {}
        with self._db() as db:
            for name, status in db.execute(f"SELECT name, status FROM tenants WHERE name IN ({marks})", tenants):
                out[name] = (status, [])
            rows = db.execute(
                f"SELECT key_id, tenant FROM api_keys WHERE tenant IN ({marks}) AND "
                "(revoked_at >= ? OR (expires_at >= ? AND expires_at <= ?))",
                (*tenants, since, since, now),
            )
            for key_id, tenant in rows:
                if tenant in out:
                    out[tenant][1].append(key_id)
        return out

    # --- authentication ----------------------------------------------------------------
    def note_used(self, key_ids: list[str]) -> None:
        """Record that these keys served requests the gateway did not see (REST
        connections served by a worker, see faiss_proxy_server.restdirect)."""
        with self._db() as db:
            for key_id in key_ids:
                self._touch(db, key_id)

    def _touch(self, db: sqlite3.Connection, key_id: str) -> None:
        """``last_used_at`` of a key, written at most every ``LAST_USED_RESOLUTION`` s."""
        now = time.time()
        if now - self._last_used.get(key_id, 0.0) < self.LAST_USED_RESOLUTION:
            return
        self._last_used[key_id] = now
        try:
            db.execute("UPDATE api_keys SET last_used_at = ? WHERE key_id = ?", (now, key_id))
        except sqlite3.OperationalError as exc:
            # A full or read-only data dir must not lock tenants out of reads:
            # "last used" is bookkeeping, authentication does not depend on it.
            log.warning("could not record the last use of key %s: %s", key_id, exc)

    def authenticate(self, token: str) -> Principal:
        """Verify a bearer token: signature, expiry, then the catalog (revocation).

        A token whose signature was verified once is remembered (its expiry is still
        checked every time); revocation and the tenant's status are read from the
        catalog on every request, so they take effect at once."""
        claims = self._claims.get(token)
        if claims is None:
            try:
                claims = jwt.decode(
                    token,
                    self._secret,
                    algorithms=["HS256"],
                    issuer=ISSUER,
                    options={"require": ["iss", "sub", "jti", "scope", "iat"]},
                )
            except jwt.ExpiredSignatureError:
                raise Unauthorized("API key expired") from None
            except jwt.InvalidTokenError:
                raise Unauthorized("invalid API key") from None
            if len(self._claims) >= 4096:
                self._claims.clear()
            self._claims[token] = claims
        elif "exp" in claims and time.time() >= claims["exp"]:
            self._claims.pop(token, None)
            raise Unauthorized("API key expired")
        key_id, tenant, scope = claims["jti"], claims["sub"], claims["scope"]
        with self._db() as db:
            row = db.execute(
                "SELECT k.tenant, k.scope, k.revoked_at, t.status FROM api_keys k "
                "JOIN tenants t ON t.name = k.tenant WHERE k.key_id = ?",
                (key_id,),
            ).fetchone()
            if row is None or row[0] != tenant or row[1] != scope:
                raise Unauthorized("invalid API key")
            if row[2] is not None:
                raise Unauthorized("API key revoked")
            if row[3] != "active":
                raise Forbidden(f"tenant '{tenant}' is {row[3]}")
            self._touch(db, key_id)
        exp = claims.get("exp")
        return Principal(tenant=tenant, key_id=key_id, scope=scope, expires=None if exp is None else float(exp))

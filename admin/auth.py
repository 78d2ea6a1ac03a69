"""The admin's password and the guard against guessing it.

There is one admin account, ``admin``.  Its password comes from
``FAISS_PROXY_ADMIN_PASSWORD`` or, when that is unset and no password was ever
set, is generated on first start and printed once.  Only an Argon2id hash is
stored (in the catalog's ``settings`` table); ``faiss-proxy admin-password``
sets a new one.

Failed logins are counted per client address: after :data:`FREE_FAILURES`
failures, each further attempt must wait (doubling from 1 s up to 15 minutes)
and is answered 429 meanwhile, whether the password is right or not.
"""

from __future__ import annotations

import secrets
import threading
import time
from dataclasses import dataclass

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from faiss_proxy_server.catalog import Catalog

__all__ = ["AdminPassword", "LoginThrottle", "ADMIN_USER", "PASSWORD_SETTING", "PASSWORD_VARIABLE", "FREE_FAILURES"]

ADMIN_USER = "admin"
PASSWORD_SETTING = "admin_password_hash"
PASSWORD_VARIABLE = "FAISS_PROXY_ADMIN_PASSWORD"  # the environment variable's name
FREE_FAILURES = 5
MAX_LOCKOUT = 900.0


class AdminPassword:
    """Checks and sets the admin password (hashes only ever touch the catalog)."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        self.hasher = PasswordHasher()

    def ensure(self, from_env: str | None) -> str | None:
        """At start-up: apply the environment's password, or generate one if none
        exists.  Returns a generated password (to print once), else None."""
        stored = self.catalog.get_setting(PASSWORD_SETTING)
        if from_env:
            if stored is None or not self.verify(from_env):
                self.set(from_env)
            return None
        if stored is None:
            generated = secrets.token_urlsafe(15)
            self.set(generated)
            return generated
        return None

    def set(self, password: str) -> None:
        if len(password) < 8:
            raise ValueError("the admin password needs at least 8 characters")
        self.catalog.put_setting(PASSWORD_SETTING, self.hasher.hash(password))

    def verify(self, password: str) -> bool:
        stored = self.catalog.get_setting(PASSWORD_SETTING)
        if stored is None:
            return False
        try:
            self.hasher.verify(stored, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False
        if self.hasher.check_needs_rehash(stored):
            self.catalog.put_setting(PASSWORD_SETTING, self.hasher.hash(password))
        return True


@dataclass
class _Failures:
    count: int = 0
    until: float = 0.0
    last: float = 0.0


class LoginThrottle:
    """Per-address failure counting with an exponential wait (thread-safe)."""

    def __init__(self, window: float = 900.0) -> None:
        self.window = window
        self._lock = threading.Lock()
        self._by_address: dict[str, _Failures] = {}

    def wait_time(self, address: str) -> float:
        """Seconds this address must still wait before it may try again (0: go ahead)."""
        now = time.monotonic()
        with self._lock:
            entry = self._by_address.get(address)
            if entry is None:
                return 0.0
            if now - entry.last > self.window:
                del self._by_address[address]
                return 0.0
            return max(0.0, entry.until - now)

    def failed(self, address: str) -> None:
        now = time.monotonic()
        with self._lock:
            if len(self._by_address) > 10_000:
                self._by_address.clear()
            entry = self._by_address.setdefault(address, _Failures())
            entry.count += 1
            entry.last = now
            if entry.count >= FREE_FAILURES:
                entry.until = now + min(MAX_LOCKOUT, 2.0 ** (entry.count - FREE_FAILURES))

    def succeeded(self, address: str) -> None:
        with self._lock:
            self._by_address.pop(address, None)

"""Catalog changes take effect on sessions that are already open.

Keys are checked when a request or an RPC session starts (:meth:`.catalog.Catalog.authenticate`).
An RPC session then lives on in its tenant's worker, so revoking its key, letting the key
expire, suspending or deleting the tenant must also reach what is already running, whichever
way the change was made: the admin page and its JSON API (which act at once as well), or the
``faiss-proxy tenant|key`` CLI writing the catalog while the server runs.

:class:`AccessWatcher` polls the catalog's ``data_version`` (a few microseconds) every
``interval`` seconds, and looks for expired keys every ``expiry_interval``; on a change it
asks the catalog about the tenants that have a worker and then

* a deleted tenant: its worker is killed at once (its files are gone: no snapshot),
  then whatever it wrote meanwhile is removed;
* a suspended tenant: its worker is stopped (in-flight calls finish, then a snapshot);
* a revoked or expired key: the worker closes the sessions opened with it, and only those.

The client of an ended session gets ``ConnectionError`` on its call; its next call
reconnects and is refused like any new session (HTTP 401 / 403, ``PermissionError``).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import shutil
import time

from .catalog import Catalog
from .errors import NotFound
from .supervisor import Supervisor

__all__ = ["AccessWatcher"]

log = logging.getLogger("faiss_proxy.access")

#: Keys revoked or expired this many seconds before the previous check still count
#: (a change committed while a check was running is not missed).
_OVERLAP = 5.0


class AccessWatcher:
    def __init__(
        self, catalog: Catalog, supervisor: Supervisor, interval: float = 1.0, expiry_interval: float = 5.0
    ) -> None:
        self.catalog = catalog
        self.supervisor = supervisor
        self.interval = interval
        self.expiry_interval = expiry_interval
        self._version: int | None = None
        self._since = time.time() - _OVERLAP
        self._next_expiry = 0.0
        self._ended: dict[str, set[str]] = {}  # per tenant: keys whose sessions were ended
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                self.check()
            except Exception:  # a locked or unreadable catalog: try again next time
                log.exception("checking the catalog for revoked keys and suspended tenants failed")

    def _remove_files(self, tenant: str, _stopped: object = None) -> None:
        """Once a deleted tenant's worker is dead: remove whatever it wrote after the
        deleting command had removed its directory (unless the name was created anew)."""
        try:
            self.catalog.get_tenant(tenant)
            return
        except NotFound:
            pass
        shutil.rmtree(self.catalog.tenant_dir(tenant), ignore_errors=True)

    def check(self) -> None:
        """One round: act on what changed since the last one."""
        now = time.time()
        version = self.catalog.data_version()
        if version == self._version and now < self._next_expiry:
            return
        self._version = version
        self._next_expiry = now + self.expiry_interval
        tenants = [t for t, w in self.supervisor.workers.items() if w.alive]
        state = self.catalog.access_state(tenants, self._since, now)
        self._since = now - _OVERLAP
        for tenant in tenants:
            if tenant not in state:
                log.info("tenant %s was deleted: stopping its worker", tenant)
                stopped = self.supervisor.request_stop(tenant, "tenant deleted", kill=True)
                if stopped is not None:
                    stopped.add_done_callback(functools.partial(self._remove_files, tenant))
                self._ended.pop(tenant, None)
                continue
            status, refused = state[tenant]
            if status != "active":
                log.info("tenant %s is %s: stopping its worker", tenant, status)
                self.supervisor.request_stop(tenant, f"tenant {status}")
                self._ended.pop(tenant, None)
                continue
            ended = self._ended.setdefault(tenant, set())
            new = sorted(set(refused) - ended)
            if new:
                log.info("ending RPC sessions of tenant %s opened with revoked or expired keys %s", tenant, new)
                self.supervisor.end_sessions(tenant, new, "API key revoked or expired")
                ended.update(new)
        for tenant in set(self._ended) - set(tenants):
            del self._ended[tenant]

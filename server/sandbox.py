"""Defense in depth for tenant workers: what a worker may touch if FAISS is subverted.

The reflection boundary (:mod:`.reflection`) is the first wall.  This module is the
second, for the case where a tenant nevertheless gets native code execution
inside its worker (a memory-safety bug in FAISS or NumPy).  It is applied by the
worker right after start, before any tenant data is read:

* **no inherited descriptors** beyond stdio and its own channels (the supervisor
  starts workers with ``close_fds``; :func:`apply` reports any extra);
* **no new privileges** (``PR_SET_NO_NEW_PRIVS``): no setuid binary can raise it;
* **rlimits**: no core dumps (they would hold tenant vectors), a bounded number
  of open files, and the memory limit (``worker_memory_limit_mb``);
* ``umask 077``: what the worker writes is private to its uid;
* **a uid of its own** (setting ``worker_uid_base``, only when the server runs
  as root): the tenant's directory is chowned to that uid, mode 0700, and the
  worker drops to it, so even without Landlock it cannot open another tenant's
  files;
* **Landlock** (Linux 5.13+; setting ``worker_sandbox``): the worker may read
  only the Python installation, its own packages and system libraries, the few
  files of ``/etc`` the loader and libc need, its own ``/proc/<pid>`` (not other
  processes' environment or memory maps) and harmless ``/dev`` nodes, and read
  and write only beneath its own tenant directory.  With Landlock ABI 4+ it may
  not open or accept TCP connections (it never needs to: the gateway hands it
  sockets), and with ABI 6+ it may not signal processes or reach abstract Unix
  sockets outside its own sandbox.

What was applied is reported to the gateway in the worker's ``ready`` event and
logged.  Nothing here replaces running the server itself as an unprivileged user.
"""

from __future__ import annotations

import ctypes
import os
import resource
import struct
import sys
from pathlib import Path
from typing import Any

__all__ = ["apply", "landlock_abi", "restrict_paths", "MAX_OPEN_FILES"]

MAX_OPEN_FILES = 4096

_SYS_LANDLOCK_CREATE_RULESET = 444
_SYS_LANDLOCK_ADD_RULE = 445
_SYS_LANDLOCK_RESTRICT_SELF = 446
_LANDLOCK_CREATE_RULESET_VERSION = 1
_LANDLOCK_RULE_PATH_BENEATH = 1
_PR_SET_NO_NEW_PRIVS = 38

# Filesystem access rights, by the ABI version that introduced them.
_EXECUTE, _WRITE_FILE, _READ_FILE, _READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
_FS_V1 = (1 << 13) - 1  # EXECUTE .. MAKE_SYM
_REFER, _TRUNCATE, _IOCTL_DEV = 1 << 13, 1 << 14, 1 << 15
_READ = _EXECUTE | _READ_FILE | _READ_DIR
_NET_BIND_TCP, _NET_CONNECT_TCP = 1 << 0, 1 << 1
_SCOPE_ABSTRACT_UNIX_SOCKET, _SCOPE_SIGNAL = 1 << 0, 1 << 1

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def landlock_abi() -> int:
    """The kernel's Landlock ABI version, 0 when Landlock is unavailable."""
    try:
        abi = _libc.syscall(_SYS_LANDLOCK_CREATE_RULESET, None, ctypes.c_size_t(0), _LANDLOCK_CREATE_RULESET_VERSION)
    except (AttributeError, OSError):
        return 0
    return int(abi) if abi > 0 else 0


def _fs_rights(abi: int) -> int:
    rights = _FS_V1
    if abi >= 2:
        rights |= _REFER
    if abi >= 3:
        rights |= _TRUNCATE
    if abi >= 5:
        rights |= _IOCTL_DEV
    return rights


def _check(result: int, what: str) -> int:
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return result


def restrict_paths(read: list[Path], read_write: list[Path]) -> int:
    """Landlock this process: read (and execute) beneath ``read``, anything beneath
    ``read_write``, nothing else; no TCP (ABI 4+); scoped signals/sockets (ABI 6+).
    Returns the ABI used (0: not available, nothing done)."""
    abi = landlock_abi()
    if abi <= 0:
        return 0
    fs = _fs_rights(abi)
    net = (_NET_BIND_TCP | _NET_CONNECT_TCP) if abi >= 4 else 0
    scoped = (_SCOPE_ABSTRACT_UNIX_SOCKET | _SCOPE_SIGNAL) if abi >= 6 else 0
    if abi >= 6:
        attr = struct.pack("=QQQ", fs, net, scoped)
    elif abi >= 4:
        attr = struct.pack("=QQ", fs, net)
    else:
        attr = struct.pack("=Q", fs)
    buf = ctypes.create_string_buffer(attr, len(attr))
    ruleset = _check(
        _libc.syscall(_SYS_LANDLOCK_CREATE_RULESET, buf, ctypes.c_size_t(len(attr)), 0), "landlock_create_ruleset"
    )
    try:
        for paths, rights in ((read, _READ), (read_write, fs)):
            for path in paths:
                try:
                    fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
                except OSError:
                    continue  # a path that does not exist grants nothing
                try:
                    is_dir = os.path.isdir(path)
                    allowed = rights if is_dir else rights & (_EXECUTE | _WRITE_FILE | _READ_FILE | _TRUNCATE)
                    rule = ctypes.create_string_buffer(struct.pack("=Qi", allowed & fs, fd), 12)
                    _check(
                        _libc.syscall(_SYS_LANDLOCK_ADD_RULE, ruleset, _LANDLOCK_RULE_PATH_BENEATH, rule, 0), "add_rule"
                    )
                finally:
                    os.close(fd)
        _check(_libc.syscall(_SYS_LANDLOCK_RESTRICT_SELF, ruleset, 0), "landlock_restrict_self")
    finally:
        os.close(ruleset)
    return abi


def _no_new_privs() -> bool:
    try:
        return _libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0
    except (AttributeError, OSError):
        return False


def _readable_roots() -> list[Path]:
    """What a worker needs to read: Python, its packages, system libraries, /proc."""
    roots = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}
    for entry in sys.path:
        if entry and os.path.isdir(entry) and ("site-packages" in entry or "dist-packages" in entry):
            roots.add(entry)
    # Our own packages wherever they are installed from (an editable install points
    # into a source tree: allow the package directories, not the tree).
    import faiss_proxy
    import faiss_proxy_server

    for module in (faiss_proxy, faiss_proxy_server):
        roots.add(str(Path(module.__file__ or ".").resolve().parent))
    roots.update(["/usr", "/lib", "/lib64", "/lib32", "/sys"])
    # Of /etc only what the dynamic loader, libc and Python read: not TLS keys, not
    # shadow files, not the host's configuration.
    roots.update(f"/etc/{name}" for name in _ETC_FILES)
    roots.update(str(p) for p in Path("/etc").glob("python3*"))
    # Of /proc only this process and a few system-wide counters: another process's
    # environ or cmdline (the gateway's holds FAISS_PROXY_ADMIN_PASSWORD) stays
    # unreadable even where the worker keeps the gateway's uid.
    roots.update([f"/proc/{os.getpid()}", *(f"/proc/{name}" for name in _PROC_FILES)])
    # Of /dev only the harmless character devices: no disks, no terminals.
    roots.update(f"/dev/{name}" for name in _DEV_FILES)
    return [Path(r) for r in sorted(roots)]


_ETC_FILES = (
    "ld.so.cache",
    "ld.so.conf",
    "ld.so.conf.d",
    "alternatives",
    "localtime",
    "timezone",
    "nsswitch.conf",
    "passwd",
    "group",
    "os-release",
)
_PROC_FILES = ("cpuinfo", "meminfo", "stat", "loadavg", "sys")
_DEV_FILES = ("null", "zero", "urandom", "random", "full")


def apply(tenant_dir: Path, memory_limit_mb: int, uid: int | None, landlock: bool) -> dict[str, Any]:
    """Lock this worker down (see module doc); returns what was applied."""
    report: dict[str, Any] = {}
    os.umask(0o077)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    limit = MAX_OPEN_FILES if hard == resource.RLIM_INFINITY else min(hard, MAX_OPEN_FILES)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(soft, limit) if soft != resource.RLIM_INFINITY else limit, limit))
    if memory_limit_mb > 0:
        data = memory_limit_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_DATA, (data, data))
    report["rlimits"] = {"core": 0, "nofile": limit, "data_mb": memory_limit_mb or None}
    if uid is not None and os.geteuid() == 0:
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
    report["uid"] = os.geteuid()
    report["no_new_privs"] = _no_new_privs()
    report["landlock"] = 0
    if landlock:
        tenant_dir.mkdir(parents=True, exist_ok=True)
        report["landlock"] = restrict_paths(_readable_roots(), [tenant_dir, Path("/dev/null")])
    report["fds"] = sorted(int(fd) for fd in os.listdir("/proc/self/fd"))
    return report

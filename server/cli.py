"""The ``faiss-proxy`` command: parse, build, run.

``faiss-proxy serve``                       start the server (settings: flags or FAISS_PROXY_*)
``faiss-proxy tenant create|list|delete``   manage tenants
``faiss-proxy key create TENANT``           print a new API key, alone, on the last line
``faiss-proxy key list [TENANT]``           first column: key id
``faiss-proxy key revoke KEY_ID``
``faiss-proxy tenant suspend|resume NAME``  a suspended tenant's keys get 403
``faiss-proxy admin-password``              set the admin page's password
``faiss-proxy dev-cert DIR``                write a test CA and server certificate (TLS)

Tenant and key commands open the catalog in ``--data-dir`` directly, so they work
while the server runs.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import logging
import secrets
import sys
from collections.abc import Sequence

from .catalog import Catalog
from .config import add_arguments, load_settings
from .errors import BadRequest, ProxyError

__all__ = ["main", "parse_expiry"]


def parse_expiry(text: str) -> float:
    """``30d``, ``12h``, ``45m``, ``3600s`` from now, or an ISO-8601 date/time."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    now = dt.datetime.now(dt.UTC)
    if text and text[-1] in units and text[:-1].isdigit():
        return now.timestamp() + int(text[:-1]) * units[text[-1]]
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"invalid expiry {text!r}: use e.g. 30d, 12h, 45m or 2027-01-31T00:00"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return when.timestamp()


def _fmt_time(ts: float | None) -> str:
    if ts is None:
        return "-"
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="faiss-proxy", description="Serve FAISS to many tenants over the network.")
    sub = p.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the server")
    add_arguments(serve)

    def with_data_dir(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
        add_arguments(parser, ("data_dir",))
        return parser

    tenant = sub.add_parser("tenant", help="manage tenants").add_subparsers(dest="action", required=True)
    with_data_dir(tenant.add_parser("create", help="create a tenant")).add_argument("name")
    with_data_dir(tenant.add_parser("list", help="list tenants"))
    delete = with_data_dir(tenant.add_parser("delete", help="delete a tenant, its keys and its data"))
    delete.add_argument("name")
    suspend = with_data_dir(tenant.add_parser("suspend", help="suspend a tenant: its keys get 403"))
    suspend.add_argument("name")
    resume = with_data_dir(tenant.add_parser("resume", help="resume a suspended tenant"))
    resume.add_argument("name")

    with_data_dir(
        sub.add_parser("admin-password", help="set a new admin password (read from stdin, or generated and printed)")
    )

    key = sub.add_parser("key", help="manage API keys").add_subparsers(dest="action", required=True)
    create = with_data_dir(key.add_parser("create", help="create an API key; prints it on the last line"))
    create.add_argument("tenant")
    create.add_argument("--name", default="", help="a label for the key")
    create.add_argument("--read-only", action="store_true", help="searches and reads only")
    create.add_argument(
        "--expires", type=parse_expiry, default=None, help="expiry: 30d, 12h, 45m, 3600s from now, or an ISO-8601 date"
    )
    klist = with_data_dir(key.add_parser("list", help="list API keys (first column: key id)"))
    klist.add_argument("tenant", nargs="?")
    revoke = with_data_dir(key.add_parser("revoke", help="revoke an API key by id"))
    revoke.add_argument("key_id")

    cert = sub.add_parser("dev-cert", help="write a throw-away CA and server certificate for testing TLS")
    cert.add_argument("directory")
    cert.add_argument("--host", action="append", default=[], help="another name or IP for the certificate")
    return p


def _run_admin(args: argparse.Namespace, catalog: Catalog) -> None:
    if args.command == "tenant":
        if args.action == "create":
            t = catalog.create_tenant(args.name)
            print(f"created tenant {t.name}")
        elif args.action == "list":
            for t in catalog.list_tenants():
                print(f"{t.name}\t{t.status}\t{_fmt_time(t.created_at)}")
        elif args.action == "delete":
            catalog.delete_tenant(args.name)
            print(f"deleted tenant {args.name}")
        elif args.action in ("suspend", "resume"):
            t = catalog.set_tenant_status(args.name, "suspended" if args.action == "suspend" else "active")
            print(f"tenant {t.name} is {t.status}")
    elif args.command == "admin-password":
        from faiss_proxy_admin.auth import AdminPassword

        password = "" if sys.stdin.isatty() else sys.stdin.readline().strip()
        generated = not password
        if generated:
            password = secrets.token_urlsafe(15)
        try:
            AdminPassword(catalog).set(password)
        except ValueError as exc:
            raise BadRequest(str(exc)) from None
        if generated:
            print("new admin password (shown once):", file=sys.stderr)
            print(password)
        else:
            print("admin password set from standard input", file=sys.stderr)
    elif args.command == "key":
        if args.action == "create":
            k, token = catalog.create_key(
                args.tenant, name=args.name, read_only=args.read_only, expires_at=args.expires
            )
            print(
                f"created key {k.key_id} for tenant {k.tenant} ({k.scope}, expires {_fmt_time(k.expires_at)})",
                file=sys.stderr,
            )
            print(token)
        elif args.action == "list":
            for k in catalog.list_keys(args.tenant):
                state = "revoked" if k.revoked_at else "active"
                print(
                    "\t".join(
                        [
                            k.key_id,
                            k.tenant,
                            k.scope,
                            state,
                            k.name or "-",
                            _fmt_time(k.created_at),
                            _fmt_time(k.expires_at),
                            _fmt_time(k.last_used_at),
                        ]
                    )
                )
        elif args.action == "revoke":
            k = catalog.revoke_key(args.key_id)
            print(f"revoked key {k.key_id} of tenant {k.tenant}")


def main(argv: Sequence[str] | None = None) -> None:
    args = _build_parser().parse_args(argv)
    settings = load_settings(args)
    if args.command == "dev-cert":
        from pathlib import Path

        from .devcert import write_dev_cert

        paths = write_dev_cert(Path(args.directory), args.host)
        print(f"CA certificate (clients: FAISS_PROXY_CA): {paths['ca']}")
        print(f"server certificate and key: --tls-cert {paths['cert']} --tls-key {paths['key']}")
        return
    if args.command == "serve":
        from .logs import setup_logging, stop_logging
        from .runner import serve

        setup_logging(settings.log_level, sys.stderr, settings.log_format)
        try:
            asyncio.run(serve(settings))
        finally:
            stop_logging()
        return
    logging.basicConfig(
        level=getattr(logging, settings.log_level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        _run_admin(args, Catalog(settings.data_path))
    except ProxyError as exc:
        print(f"faiss-proxy: {exc.message}", file=sys.stderr)
        sys.exit(1)

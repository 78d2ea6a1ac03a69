"""What the gateway and the tenant workers share about REST requests, without Tornado.

A REST request is served either by the gateway (:mod:`.resthttp`, on Tornado's HTTP
layer, which forwards it to the worker over a REST channel) or, on a connection the
gateway has handed over, by the tenant's worker itself (:mod:`.restdirect`).  Both
route with :data:`ROUTES`, find the key with :func:`api_token`, decode path segments
and query strings alike, and write the same access-log line (:func:`log_http`), so a
request is answered and logged the same way whichever process serves it.
"""

from __future__ import annotations

import logging
import re
import time
import urllib.parse
from collections.abc import Mapping
from email.utils import formatdate

from .errors import BadRequest, NotFound

__all__ = [
    "ROUTES",
    "PREFIX",
    "Route",
    "match_route",
    "unquote_segment",
    "parse_query",
    "api_token",
    "log_http",
    "http_date",
]

log = logging.getLogger("faiss_proxy.access")


class Route:
    """One REST path: its regex, the names of its groups, and HTTP method -> operation."""

    def __init__(self, pattern: str, groups: tuple[str, ...], methods: tuple[tuple[str, str], ...]) -> None:
        self.pattern = pattern
        self.regex = re.compile(pattern + "$")
        self.groups = groups
        self.methods = methods
        self.operations = dict(methods)
        self.allow = ", ".join(method for method, _ in methods)

    @property
    def template(self) -> str:
        """The path with each group as ``{}`` (``/v1/index/{}/search``)."""
        return re.sub(r"\(\[\^/\]\+\)", "{}", self.pattern.replace("/?", ""))


ROUTES: tuple[Route, ...] = (
    Route(r"/v1/index/?", (), (("GET", "list"), ("POST", "create"))),
    Route(r"/v1/index/([^/]+)", ("index",), (("GET", "info"), ("DELETE", "drop"))),
    Route(r"/v1/index/([^/]+)/vectors", ("index",), (("POST", "upsert"),)),
    Route(
        r"/v1/index/([^/]+)/vectors/([^/]+)", ("index", "vector"), (("GET", "get_vector"), ("DELETE", "delete_vector"))
    ),
    Route(r"/v1/index/([^/]+)/search", ("index",), (("GET", "search"), ("POST", "search"))),
    Route(r"/v1/index/([^/]+)/train", ("index",), (("POST", "train"),)),
    Route(r"/v1/index/([^/]+)/ntotal", ("index",), (("GET", "ntotal"),)),
    Route(r"/v1/index/([^/]+)/reset", ("index",), (("POST", "reset"),)),
    Route(r"/v1/index/([^/]+)/specialized_search", ("index",), (("POST", "specialized_search"),)),
)

#: The prefix the server's router sends to the REST facade.
PREFIX = r"/v1/index(/.*)?"


def match_route(path: str) -> tuple[Route, re.Match[str]]:
    """The route of ``path`` (without its query); :class:`NotFound` if none."""
    for route in ROUTES:
        match = route.regex.match(path)
        if match is not None:
            return route, match
    raise NotFound(f"no such endpoint: {path}")


def unquote_segment(value: str) -> str:
    """A path segment, percent-decoded as UTF-8 (as Tornado decodes its path arguments)."""
    try:
        return urllib.parse.unquote_to_bytes(value).decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("the path is not valid percent-encoded UTF-8") from None


def parse_query(query: str) -> dict[str, str]:
    """The query string as a dict; a repeated name keeps its last value."""
    if not query:
        return {}
    return {k: v[-1] for k, v in urllib.parse.parse_qs(query, keep_blank_values=True).items()}


def api_token(headers: Mapping[str, str]) -> str | None:
    """The key of ``Authorization: Bearer <key>``, else of ``X-API-Key``; None if neither
    holds one (a request without a usable key)."""
    header = headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if not header:
        token = headers.get("X-API-Key", "")
        scheme = "Bearer" if token else ""
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    return token


def log_http(tenant: str | None, operation: str, method: str, path: str, status: int, duration_ms: float) -> None:
    """The access-log line of one HTTP request (never keys or bodies)."""
    level = logging.INFO if status < 500 else logging.ERROR
    if not log.isEnabledFor(level):
        return
    tenant = tenant or "-"
    log.log(
        level,
        "http tenant=%s op=%s method=%s path=%s status=%d duration=%.2fms",
        tenant,
        operation,
        method,
        path,
        status,
        duration_ms,
        extra={
            "fields": {
                "kind": "http",
                "tenant": tenant,
                "operation": operation,
                "method": method,
                "path": path,
                "status": status,
                "duration_ms": round(duration_ms, 3),
            }
        },
    )


class _Date:
    """The ``Date`` header, formatted once a second."""

    second = -1
    text = ""


def http_date() -> str:
    """Now, as an HTTP ``Date`` header value (formatted at most once a second)."""
    second = int(time.time())
    if second != _Date.second:
        _Date.text = formatdate(second, usegmt=True)
        _Date.second = second
    return _Date.text

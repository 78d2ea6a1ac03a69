"""One error hierarchy for the server; each error knows its HTTP status.

REST handlers raise these and a single renderer (:mod:`.app`) turns them into
``{"error": {"code": ..., "message": ...}}`` with the right status.
"""

from __future__ import annotations

__all__ = [
    "ProxyError",
    "BadRequest",
    "Unauthorized",
    "Forbidden",
    "NotFound",
    "Conflict",
    "ServiceUnavailable",
]


class ProxyError(Exception):
    status = 500
    code = "internal"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadRequest(ProxyError):
    status = 400
    code = "bad_request"


class Unauthorized(ProxyError):
    status = 401
    code = "unauthorized"


class Forbidden(ProxyError):
    status = 403
    code = "forbidden"


class NotFound(ProxyError):
    status = 404
    code = "not_found"


class Conflict(ProxyError):
    status = 409
    code = "conflict"


class ServiceUnavailable(ProxyError):
    status = 503
    code = "unavailable"

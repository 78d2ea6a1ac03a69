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
    "PayloadTooLarge",
    "StorageError",
    "OutOfMemory",
    "LimitExceeded",
    "MethodNotAllowed",
    "TooManyRequests",
    "describe",
]


class ProxyError(Exception):
    status = 500
    code = "internal"
    builtin: type[Exception] | None = None  # what a Python client gets (default: by status)

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def http_headers(self) -> dict[str, str]:
        """HTTP headers that go with this error's answer."""
        return {}

    def as_builtin(self) -> Exception:
        """The same error for a Python client (``faiss_proxy.open_index`` of a missing
        name raises KeyError, a duplicate name ValueError, ...)."""
        cls = self.builtin or _BUILTIN.get(self.status, RuntimeError)
        return cls(self.message)


class BadRequest(ProxyError):
    status = 400
    code = "bad_request"


class Unauthorized(ProxyError):
    status = 401
    code = "unauthorized"

    def http_headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": 'Bearer realm="faiss-proxy"'}


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


class MethodNotAllowed(ProxyError):
    """The path exists, the method does not; ``Allow`` lists the methods it has."""

    status = 405
    code = "http_error"

    def __init__(self, allow: str) -> None:
        super().__init__("Method Not Allowed")
        self.allow = allow

    def http_headers(self) -> dict[str, str]:
        return {"Allow": self.allow}


class PayloadTooLarge(ProxyError):
    status = 413
    code = "payload_too_large"


class StorageError(ProxyError):
    """The data dir could not take a change (disk full, read-only): nothing was changed."""

    status = 507
    code = "storage_error"
    builtin = OSError


class OutOfMemory(ProxyError):
    status = 507
    code = "out_of_memory"
    builtin = MemoryError


def describe(exc: BaseException | None, reason: str) -> tuple[str, str]:
    """``(code, message)`` of the one error shape, for any exception a handler saw."""
    import tornado.web

    if isinstance(exc, ProxyError):
        return exc.code, exc.message
    if isinstance(exc, tornado.web.HTTPError):
        return "http_error", exc.log_message or reason
    return "internal", "internal server error"


_BUILTIN: dict[int, type[Exception]] = {
    400: ValueError,
    401: PermissionError,
    403: PermissionError,
    404: KeyError,
    409: ValueError,
    413: ValueError,
    503: ConnectionError,
}


class LimitExceeded(ProxyError):
    """A per-tenant quota (vectors, named indexes) would be exceeded: nothing was changed."""

    status = 403
    code = "limit_exceeded"
    builtin = PermissionError


class TooManyRequests(ProxyError):
    """The tenant's request rate or concurrent sessions are over their limit; retry later."""

    status = 429
    code = "rate_limited"
    builtin = PermissionError

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after

    def http_headers(self) -> dict[str, str]:
        if self.retry_after is None:
            return {}
        return {"Retry-After": str(max(1, round(self.retry_after + 0.5)))}

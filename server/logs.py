"""Logging for the gateway: records are formatted and written off the event loop.

Writing a log line is a system call; on a busy gateway one access-log line per
request made that call on the IOLoop for every request (about 0.1 ms here).  The
gateway's handlers therefore only enqueue records (:class:`logging.handlers.QueueHandler`);
a :class:`~logging.handlers.QueueListener` thread formats and writes them.
:func:`stop_logging` flushes what is queued (at shutdown, and at exit).
"""

from __future__ import annotations

import atexit
import datetime
import json
import logging
import logging.handlers
import queue
from typing import Any, TextIO

__all__ = ["setup_logging", "stop_logging", "make_formatter", "JsonFormatter", "LOG_FORMAT"]

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``ts``, ``level``, ``logger``, ``message``, plus the
    record's structured ``fields`` (tenant, operation, duration, status, ...) when
    the call site gave them with ``extra={"fields": {...}}``."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            out.update(fields)
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def make_formatter(log_format: str) -> logging.Formatter:
    if log_format == "json":
        return JsonFormatter()
    if log_format == "text":
        return logging.Formatter(LOG_FORMAT)
    raise SystemExit(f"unknown log format {log_format!r}: use 'text' or 'json'")


_listener: logging.handlers.QueueListener | None = None


def setup_logging(level: str, stream: TextIO, log_format: str = "text") -> None:
    """Send every record of this process through a queue to ``stream``."""
    global _listener
    stop_logging()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(make_formatter(log_format))
    records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(logging.handlers.QueueHandler(records))
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
    _listener = logging.handlers.QueueListener(records, handler, respect_handler_level=False)
    _listener.start()
    atexit.register(stop_logging)


def stop_logging() -> None:
    """Write out the queued records and stop the writer thread."""
    global _listener
    if _listener is not None:
        listener, _listener = _listener, None
        listener.stop()

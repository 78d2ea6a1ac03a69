"""Logging for the gateway: records are formatted and written off the event loop.

Writing a log line is a system call; on a busy gateway one access-log line per
request made that call on the IOLoop for every request (about 0.1 ms here).  The
gateway's handlers therefore only append records to a queue, and a writer thread
formats them and writes what has accumulated every 20 ms, in one write.
:func:`stop_logging` writes out what is queued (at shutdown, and at exit).

Why not ``QueueHandler``/``QueueListener``: the stdlib's handler formats and copies
each record on the caller's thread (it prepares records for other processes), and
its listener wakes up for every record, so each request handed the GIL to the
listener thread and back, which cost the event loop about 12% of its time under load.
Also (from the Logging HOWTO's "Optimization" section) ``logging._srcfile = None``
skips the walk up the stack for the caller's file and line, which no format here
prints.
"""

from __future__ import annotations

import atexit
import collections
import datetime
import json
import logging
import threading
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


class _QueueHandler(logging.Handler):
    """Appends each record to the writer's queue, as it is (no formatting, no copy,
    no lock: ``deque.append`` is atomic).  Arguments are formatted when the line is
    written; the call sites log immutable values."""

    def __init__(self, records: collections.deque[logging.LogRecord]) -> None:
        super().__init__()
        self.records = records

    def handle(self, record: logging.LogRecord) -> Any:
        accepted = self.filter(record)
        if accepted:
            self.records.append(record)
        return accepted

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


class _Writer:
    """Formats the queued records with ``handler`` and writes them every
    ``interval`` seconds, one write per batch (so a burst of requests costs the
    event loop no thread switch per line)."""

    def __init__(self, handler: logging.StreamHandler[TextIO], interval: float = 0.02) -> None:
        self.records: collections.deque[logging.LogRecord] = collections.deque()
        self.handler = handler
        self.interval = interval
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="faiss-proxy-log-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stopped.wait(self.interval):
            self.write_out()
        self.write_out()

    def write_out(self) -> None:
        records, lines = self.records, []
        while records:
            record = records.popleft()
            try:
                lines.append(self.handler.format(record))
            except Exception:
                self.handler.handleError(record)
        if lines:
            terminator = self.handler.terminator
            try:
                self.handler.stream.write(terminator.join(lines) + terminator)
                self.handler.stream.flush()
            except Exception:  # a closed or broken log stream never stops the server
                pass

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join()


_writer: _Writer | None = None
_srcfile = logging._srcfile


def setup_logging(level: str, stream: TextIO, log_format: str = "text") -> None:
    """Send every record of this process through the writer thread to ``stream``."""
    global _writer
    stop_logging()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(make_formatter(log_format))
    writer = _Writer(handler)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(_QueueHandler(writer.records))
    logging._srcfile = None  # no caller lookup per record (see the module doc)
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
    _writer = writer
    atexit.register(stop_logging)


def stop_logging() -> None:
    """Write out the queued records and stop the writer thread."""
    global _writer
    if _writer is not None:
        writer, _writer = _writer, None
        writer.stop()
        logging._srcfile = _srcfile

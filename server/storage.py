"""Durable storage for named indexes: a write-ahead log and snapshots.

One directory per named index::

    <tenant dir>/indexes/<name>/
        snapshot.bin          the index and its id/metadata registry at sequence S
        wal-000000000042.log  records with sequence numbers from 42 on

**Write-ahead log.**  Every acknowledged mutation is one record, appended and
``fsync``-ed before the caller gets its answer::

    !IIQ  payload length, crc32 (of sequence + payload), sequence number
    !I    length of the JSON header
    JSON  what to do (``{"op": "upsert", ...}``)
    bytes the raw arrays the header points into (vectors, ids)

A record whose length or checksum does not hold (a torn write at a crash) ends the
log: :func:`read_log` reports where, and :meth:`WriteAheadLog.open` truncates the
file there with a warning.  A server never refuses to start over a bad log tail.

**Snapshots.**  ``snapshot.bin`` holds a JSON state (sequence number, definition,
registry) and ``faiss.serialize_index`` bytes, with a checksum.  It is written to a
temporary file, fsync-ed and renamed over the old one (then the directory is
fsync-ed), so a crash leaves either the old or the new snapshot.  After a snapshot
at sequence S the log is rotated and files holding only records ``<= S`` are
deleted.  Start-up = newest snapshot + replay of every record after S.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["WriteAheadLog", "LogRecord", "read_log", "write_snapshot", "read_snapshot", "SnapshotError", "fsync_dir"]

log = logging.getLogger("faiss_proxy.storage")

RECORD = struct.Struct("!IIQ")
JSON_LEN = struct.Struct("!I")
SNAPSHOT_MAGIC = b"FPXSNAP1"
SNAPSHOT_HEAD = struct.Struct("!QQ")  # json length, blob length
MAX_RECORD = 1 << 34  # a length beyond this is a torn header, not a record


class SnapshotError(Exception):
    """A snapshot file that cannot be read (bad magic, length or checksum)."""


@dataclass
class LogRecord:
    seq: int
    header: dict[str, Any]
    blob: memoryview


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def encode_record(
    seq: int, header: dict[str, Any], blob: bytes | memoryview = b""
) -> tuple[bytes, bytes, bytes | memoryview]:
    head = json.dumps(header, separators=(",", ":")).encode()
    payload_head = JSON_LEN.pack(len(head)) + head
    crc = zlib.crc32(struct.pack("!Q", seq))
    crc = zlib.crc32(payload_head, crc)
    crc = zlib.crc32(blob, crc)
    return RECORD.pack(len(payload_head) + len(blob), crc, seq), payload_head, blob


def read_log(path: Path) -> tuple[list[LogRecord], int, str | None]:
    """All intact records of one log file, the offset where they end, and why
    reading stopped early (None when the file ended cleanly)."""
    data = memoryview(path.read_bytes())
    records: list[LogRecord] = []
    pos = 0
    while pos < len(data):
        if len(data) - pos < RECORD.size:
            return records, pos, "torn record header"
        length, crc, seq = RECORD.unpack_from(data, pos)
        start = pos + RECORD.size
        if length > MAX_RECORD or start + length > len(data) or length < JSON_LEN.size:
            return records, pos, "torn record"
        payload = data[start : start + length]
        if zlib.crc32(payload, zlib.crc32(struct.pack("!Q", seq))) != crc:
            return records, pos, "checksum mismatch"
        (json_len,) = JSON_LEN.unpack_from(payload, 0)
        if JSON_LEN.size + json_len > length:
            return records, pos, "bad header length"
        try:
            header = json.loads(bytes(payload[JSON_LEN.size : JSON_LEN.size + json_len]))
        except ValueError:
            return records, pos, "bad header"
        records.append(LogRecord(seq, header, payload[JSON_LEN.size + json_len :]))
        pos = start + length
    return records, pos, None


def _log_files(directory: Path) -> list[tuple[int, Path]]:
    files = []
    for p in directory.glob("wal-*.log"):
        try:
            files.append((int(p.stem[4:]), p))
        except ValueError:
            continue
    return sorted(files)


class WriteAheadLog:
    """The log of one named index (not thread-safe: callers hold the index's write lock)."""

    def __init__(self, directory: Path, fsync: bool = True) -> None:
        self.directory = directory
        self.fsync = fsync
        self.seq = 0
        self._file: Any = None
        self._path: Path | None = None
        self.bytes_since_snapshot = 0

    def replay(self, after: int) -> Iterator[LogRecord]:
        """Records with sequence > ``after``, oldest first, as long as they follow on
        one another.

        A bad tail (a torn last write) is truncated with a warning.  Damage anywhere
        else (inside an older file, or a gap in the sequence numbers) ends the replay
        there: what follows is not applied on top of a hole, so the index is the
        consistent state up to the damage; the files after it are renamed
        ``*.damaged`` (kept for the operator, never replayed) and the error is logged."""
        self.seq = after
        files = _log_files(self.directory)
        for i, (_first, path) in enumerate(files):
            records, end, problem = read_log(path)
            stop = None
            if problem is not None:
                log.warning(
                    "write-ahead log %s: %s at byte %d of %d; truncating the log there",
                    path,
                    problem,
                    end,
                    path.stat().st_size,
                )
                if i < len(files) - 1:  # not a torn last write: keep the evidence
                    stop = f"{path.name} is damaged before its end"
                    shutil.copyfile(path, path.with_name(path.name + ".damaged"))
                with open(path, "r+b") as fh:
                    fh.truncate(end)
                    os.fsync(fh.fileno())
            for j, record in enumerate(records):
                if record.seq <= self.seq:
                    continue
                if record.seq != self.seq + 1:
                    stop = f"{path.name} jumps from record {self.seq} to {record.seq}"
                    _keep_only(path, records[:j])
                    break
                self.seq = record.seq
                self.bytes_since_snapshot += len(record.blob)
                yield record
            if stop is not None:
                later = [p for _, p in files[i + 1 :]]
                for p in later:
                    p.rename(p.with_name(p.name + ".damaged"))
                log.error(
                    "write-ahead log of %s: %s; replayed up to record %d, set aside %d later file(s) as *.damaged",
                    self.directory,
                    stop,
                    self.seq,
                    len(later),
                )
                return

    def open(self) -> None:
        """Start appending (after :meth:`replay`): to a fresh file named by the next sequence."""
        self._rotate()

    def _rotate(self) -> None:
        if self._file is not None:
            self._file.close()
        self._path = self.directory / f"wal-{self.seq + 1:012d}.log"
        self._file = open(self._path, "ab", buffering=0)
        if self.fsync:
            fsync_dir(self.directory)

    def append(self, header: dict[str, Any], blob: bytes | memoryview = b"") -> int:
        """Write one record and make it durable; returns its sequence number."""
        if self._file is None:
            raise OSError(errno.EROFS, f"the write-ahead log in {self.directory} is not open for writing")
        seq = self.seq + 1
        parts = encode_record(seq, header, blob)
        start = self._file.tell()
        try:
            _write_all(self._file, parts[0] + parts[1])
            if len(parts[2]):
                _write_all(self._file, parts[2])
            if self.fsync:
                os.fdatasync(self._file.fileno())
        except OSError:
            # Whatever reached the file is a torn record: cut it off so later
            # appends do not land behind garbage.
            try:
                self._file.truncate(start)
                self._file.seek(start)
            except OSError:
                pass
            raise
        self.seq = seq
        self.bytes_since_snapshot += RECORD.size + len(parts[1]) + len(parts[2])
        return seq

    def rotate_after_snapshot(self) -> int:
        """Start a new file; return the sequence the snapshot covers."""
        self._rotate()
        self.bytes_since_snapshot = 0
        return self.seq

    def drop_through(self, seq: int) -> None:
        """Delete log files whose records all have sequence <= ``seq``."""
        files = _log_files(self.directory)
        for i, (_first, path) in enumerate(files):
            nxt = files[i + 1][0] if i + 1 < len(files) else None
            if nxt is not None and nxt - 1 <= seq and path != self._path:
                path.unlink(missing_ok=True)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    @property
    def size(self) -> int:
        return sum(p.stat().st_size for _f, p in _log_files(self.directory) if p.exists())


def _keep_only(path: Path, kept: list[LogRecord]) -> None:
    """Cut ``path`` back to its records ``kept`` (a prefix); the whole original stays
    beside it as ``*.damaged``."""
    damaged = path.with_name(path.name + ".damaged")
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        for record in kept:
            _write_all(fh, b"".join(bytes(part) for part in encode_record(record.seq, record.header, record.blob)))
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(path, damaged)
    os.replace(tmp, path)
    fsync_dir(path.parent)


def _write_all(fh: Any, data: bytes | memoryview) -> None:
    view = memoryview(data).cast("B")
    while len(view):
        written = fh.write(view)
        view = view[written:]


def write_snapshot(path: Path, state: dict[str, Any], blob: bytes | memoryview, fsync: bool = True) -> None:
    """Atomically replace ``path`` with a snapshot of ``state`` + ``blob``."""
    head = json.dumps(state, separators=(",", ":")).encode()
    crc = zlib.crc32(blob, zlib.crc32(head))
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        fh.write(SNAPSHOT_MAGIC + SNAPSHOT_HEAD.pack(len(head), len(blob)))
        fh.write(head)
        fh.write(blob)
        fh.write(struct.pack("!I", crc))
        fh.flush()
        if fsync:
            os.fsync(fh.fileno())
    os.replace(tmp, path)
    if fsync:
        fsync_dir(path.parent)


def read_snapshot(path: Path) -> tuple[dict[str, Any], memoryview]:
    data = memoryview(path.read_bytes())
    fixed = len(SNAPSHOT_MAGIC) + SNAPSHOT_HEAD.size
    if len(data) < fixed + 4 or bytes(data[: len(SNAPSHOT_MAGIC)]) != SNAPSHOT_MAGIC:
        raise SnapshotError(f"{path}: not a faiss-proxy snapshot")
    json_len, blob_len = SNAPSHOT_HEAD.unpack_from(data, len(SNAPSHOT_MAGIC))
    if fixed + json_len + blob_len + 4 != len(data):
        raise SnapshotError(f"{path}: truncated snapshot")
    head = data[fixed : fixed + json_len]
    blob = data[fixed + json_len : fixed + json_len + blob_len]
    (crc,) = struct.unpack_from("!I", data, fixed + json_len + blob_len)
    if zlib.crc32(blob, zlib.crc32(head)) != crc:
        raise SnapshotError(f"{path}: checksum mismatch")
    return json.loads(bytes(head)), blob

"""Durable outbox of verdict messages: SQLite in WAL mode, one fsync per commit.

A verdict is written here before anything is sent, and deleted only once the broker has
acknowledged it (PUBACK), so a crash, ``kill -9``, power cut or broker outage loses nothing that
:meth:`Outbox.put` has returned for.

``seq`` numbering: the next number lives in the database (table ``meta``) and is read, written
into the message and advanced in the same transaction that inserts the row. A committed seq is
therefore never reused, also across restarts and crashes; seq starts at 1 and grows by exactly one
per committed message. (A put that a crash interrupts before its commit leaves no row and no
number used, and the caller never got that number back.)

Bound: with ``max_rows`` set, :meth:`Outbox.put` raises :class:`OutboxFull` instead of adding a
row; it never drops an older verdict to make room. The caller is expected to turn that error into
an alarm (stop the line, light the stack light): verdicts are not being delivered.

Storage faults (disk full, read-only, corrupt file): a failed transaction is rolled back when SQLite left
it open, and the original error is raised, never a secondary "cannot rollback" one; nothing of it is
stored and no seq is used. Errors at open are one-line :class:`OutboxError` messages that say which
fault it is (:func:`storage_fault`).

One process owns an outbox at a time (an ``flock`` on ``<path>.lock``, released by the kernel even
on ``kill -9``); a second owner gets :class:`OutboxLocked`. Within the owner, every method is
thread-safe (one connection, one lock).
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any

__all__ = ["Outbox", "OutboxError", "OutboxFull", "OutboxLocked", "check_outbox", "diagnose", "encode_message",
           "lock_path", "storage_fault", "write_probe"]

_SCHEMA = 1


class OutboxError(RuntimeError):
    """The outbox cannot do what was asked."""


class OutboxFull(OutboxError):
    """``max_rows`` unsent messages are waiting: nothing was added. Raise an alarm."""


class OutboxLocked(OutboxError):
    """Another process owns this outbox."""


_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def storage_fault(exc: BaseException) -> str | None:
    """What kind of storage fault ``exc`` is: "disk full", "read-only", "corrupt", "I/O error", or None
    when it is not a storage error (a bad message, a closed outbox)."""
    if isinstance(exc, OutboxFull):
        return "outbox full"
    if isinstance(exc, OSError):
        if exc.errno in _FULL:
            return "disk full"
        if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
            return "read-only"
        return "I/O error"
    if isinstance(exc, sqlite3.Error):
        code = getattr(exc, "sqlite_errorcode", None)
        text = str(exc).lower()
        if code == sqlite3.SQLITE_FULL or "disk is full" in text:
            return "disk full"
        if code == sqlite3.SQLITE_READONLY or "readonly" in text or "read-only" in text:
            return "read-only"
        if code in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB) or "malformed" in text or "not a database" in text:
            return "corrupt"
        if isinstance(exc, sqlite3.OperationalError | sqlite3.DatabaseError):
            return "I/O error"
    return None


def lock_path(path: Path) -> Path:
    """The outbox's lock file (the owner's flock)."""
    return path.with_name(path.name + ".lock")


def write_probe(path: Path) -> OSError | None:
    """Open ``path`` for writing (created when missing) and close it, writing nothing: the error when the
    filesystem refuses writes (read-only, also the kernel's emergency read-only after a filesystem error,
    which statvfs does not show). Opening an existing file changes nothing on disk: cheap to repeat."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644))
    except OSError as e:
        return e
    return None


_NEARLY_FULL = 64 << 10  # below this, an unexplained SQLite I/O error is taken for a full disk


def diagnose(path: Path, exc: BaseException) -> str | None:
    """:func:`storage_fault` of ``exc``; when SQLite says only "disk I/O error" (e.g. it could not grow its
    shared-memory file), what the filesystem of ``path`` says instead: "read-only" or "disk full"."""
    kind = storage_fault(exc)
    if kind != "I/O error":
        return kind
    err = write_probe(lock_path(path))
    if err is not None:
        return storage_fault(err)
    try:
        st = os.statvfs(path.parent)
    except OSError:
        return kind
    if st.f_flag & os.ST_RDONLY:
        return "read-only"
    return "disk full" if st.f_bavail * st.f_frsize < _NEARLY_FULL else kind


def _open_error(path: Path, exc: BaseException) -> OutboxError:
    if path.is_dir():
        return OutboxError(f"outbox {path} is a directory, not an outbox file")
    return OutboxError(f"outbox {path}: {diagnose(path, exc) or 'error'} ({exc})")


def check_outbox(path: str | os.PathLike[str]) -> None:
    """Read-only check of an outbox file without taking it over (``run --check``, also while a station
    runs): OutboxError when it is a directory, not a database, corrupt or of another schema. A missing
    file is fine (it is created on the first start)."""
    path = Path(path)
    if path.is_dir():
        raise OutboxError(f"outbox {path} is a directory, not an outbox file")
    if not path.exists():
        return
    try:
        db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=5.0)
    except sqlite3.Error as e:
        raise _open_error(path, e) from None
    try:
        ok = db.execute("PRAGMA quick_check").fetchone()[0]
        if ok != "ok":
            raise OutboxError(f"outbox {path}: corrupt ({ok})")
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if tables and "meta" in tables:
            schema = db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
            if schema is not None and int(schema[0]) != _SCHEMA:
                raise OutboxError(f"outbox {path}: schema {schema[0]}, this code reads {_SCHEMA}")
        elif tables:
            raise OutboxError(f"outbox {path}: not an outbox (tables {sorted(tables)})")
    except sqlite3.Error as e:
        raise _open_error(path, e) from None
    finally:
        db.close()


def encode_message(message: dict[str, Any]) -> bytes:
    """Compact UTF-8 JSON. NaN/Infinity are refused (ValueError): they are not JSON."""
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")


class Outbox:
    """Durable FIFO of JSON messages keyed by ``seq`` (see the module docstring)."""

    def __init__(self, path: str | os.PathLike[str], *, max_rows: int | None = None) -> None:
        if max_rows is not None and max_rows < 1:
            raise ValueError(f"max_rows must be >= 1 or None, got {max_rows}")
        self.path = Path(path)
        self.max_rows = max_rows
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        if self.path.is_dir():
            raise OutboxError(f"outbox {self.path} is a directory, not an outbox file")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._lock_fd: int | None = os.open(lock_path(self.path), os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise OutboxError(f"outbox {self.path}: {storage_fault(e)} ({e.strerror or e})") from None
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            self._lock_fd = None
            raise OutboxLocked(f"outbox {self.path} is in use by another process") from None
        try:
            self._db = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False, timeout=30.0)
            self._init_db()
        except sqlite3.Error as e:
            self.close()
            raise _open_error(self.path, e) from None
        except BaseException:
            self.close()
            raise

    # -- setup -----------------------------------------------------------------------------------

    def _init_db(self) -> None:
        db = self._conn()
        mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise OutboxError(f"outbox {self.path}: SQLite refused WAL mode (got {mode!r})")
        db.execute("PRAGMA synchronous=FULL")
        with self._transaction(db):
            db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL)")
            db.execute(
                "CREATE TABLE IF NOT EXISTS outbox "
                "(seq INTEGER PRIMARY KEY, payload BLOB NOT NULL, created REAL NOT NULL)"
            )
            db.execute("INSERT OR IGNORE INTO meta VALUES ('schema', ?)", (_SCHEMA,))
            db.execute("INSERT OR IGNORE INTO meta VALUES ('next_seq', 1)")
            schema = self._meta(db, "schema")
            if schema != _SCHEMA:
                raise OutboxError(f"outbox {self.path}: schema {schema}, this code reads {_SCHEMA}")
            # Defensive: never hand out a number at or below one that is stored.
            max_seq = db.execute("SELECT COALESCE(MAX(seq), 0) FROM outbox").fetchone()[0]
            if self._meta(db, "next_seq") <= max_seq:
                db.execute("UPDATE meta SET value = ? WHERE key = 'next_seq'", (max_seq + 1,))
        self._rows = db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]

    @staticmethod
    def _meta(db: sqlite3.Connection, key: str) -> int:
        return int(db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()[0])

    @staticmethod
    @contextmanager
    def _transaction(db: sqlite3.Connection) -> Iterator[None]:
        """BEGIN IMMEDIATE ... COMMIT. On any error: roll back what SQLite left open (after a full disk it
        has often rolled back itself) and raise the original error; a failing rollback is not raised over it."""
        db.execute("BEGIN IMMEDIATE")
        try:
            yield
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                try:
                    db.execute("ROLLBACK")
                except sqlite3.Error:
                    pass  # the connection is unusable or already rolled back; the original error says why
            raise

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise OutboxError(f"outbox {self.path} is closed")
        return self._db

    # -- API -------------------------------------------------------------------------------------

    def put(self, message: dict[str, Any]) -> int:
        """Store ``message`` with the next ``seq`` written into it; return that seq once it is on disk.

        Raises OutboxFull (nothing stored) when ``max_rows`` messages are waiting, ValueError/TypeError
        (nothing stored, no seq used) when the message is not JSON-serialisable.
        """
        if not isinstance(message, dict):
            raise TypeError(f"message must be a dict, got {type(message).__name__}")
        with self._lock:
            db = self._conn()
            with self._transaction(db):
                if self.max_rows is not None and self._rows >= self.max_rows:
                    oldest = db.execute("SELECT MIN(created) FROM outbox").fetchone()[0]
                    age = f", the oldest waiting {time.time() - oldest:.0f} s" if oldest is not None else ""
                    raise OutboxFull(
                        f"outbox {self.path} is full: {self._rows} unsent messages (max_rows={self.max_rows}){age}; "
                        "verdicts are not reaching the broker"
                    )
                seq = self._meta(db, "next_seq")
                payload = encode_message({**message, "seq": seq})
                db.execute("INSERT INTO outbox (seq, payload, created) VALUES (?, ?, ?)", (seq, payload, time.time()))
                db.execute("UPDATE meta SET value = ? WHERE key = 'next_seq'", (seq + 1,))
            self._rows += 1
            return seq

    def pending(self, limit: int = 100, *, after: int = 0) -> list[tuple[int, bytes]]:
        """Up to ``limit`` stored messages with seq > ``after``, in seq order, as ``(seq, payload)``."""
        if limit <= 0:
            return []
        with self._lock:
            rows = (
                self._conn()
                .execute("SELECT seq, payload FROM outbox WHERE seq > ? ORDER BY seq LIMIT ?", (after, limit))
                .fetchall()
            )
        return [(int(s), bytes(p)) for s, p in rows]

    def ack(self, seq: int) -> bool:
        """Delete message ``seq`` (delivered). False when it was not stored (already acked)."""
        return self.ack_many((seq,)) == 1

    def ack_many(self, seqs: Iterable[int]) -> int:
        """Delete several delivered messages in one transaction; return how many were stored."""
        seqs = [(int(s),) for s in seqs]
        if not seqs:
            return 0
        with self._lock:
            db = self._conn()
            with self._transaction(db):
                before = db.total_changes
                db.executemany("DELETE FROM outbox WHERE seq = ?", seqs)
                deleted = db.total_changes - before
            self._rows -= deleted
            return deleted

    def probe(self, integrity: bool = False) -> None:
        """One durable write transaction that changes nothing a reader sees (a heartbeat row in ``meta``):
        raises the storage error while the disk is full, read-only or the file corrupt. ``integrity``: also
        run SQLite's ``quick_check`` (reads the whole file) first."""
        with self._lock:
            db = self._conn()
            if integrity:
                result = db.execute("PRAGMA quick_check").fetchone()[0]
                if result != "ok":
                    raise sqlite3.DatabaseError(f"database disk image is malformed ({result})")
            with self._transaction(db):
                db.execute("INSERT OR REPLACE INTO meta VALUES ('probe', ?)", (int(time.time()),))

    def count(self) -> int:
        """Messages stored and not yet acked."""
        with self._lock:
            self._conn()
            return self._rows

    def last_seq(self) -> int:
        """The highest seq ever handed out (0 before the first put)."""
        with self._lock:
            return self._meta(self._conn(), "next_seq") - 1

    def oldest_age_s(self) -> float | None:
        """Seconds since the oldest waiting message was stored; None when empty."""
        with self._lock:
            oldest = self._conn().execute("SELECT MIN(created) FROM outbox").fetchone()[0]
        return None if oldest is None else max(0.0, time.time() - oldest)

    def close(self) -> None:
        with self._lock:
            if getattr(self, "_db", None) is not None:
                self._db.close()
                self._db = None
            if self._lock_fd is not None:
                os.close(self._lock_fd)  # releases the flock
                self._lock_fd = None

    @property
    def closed(self) -> bool:
        return getattr(self, "_db", None) is None

    def __enter__(self) -> Outbox:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Outbox({str(self.path)!r}, max_rows={self.max_rows})"

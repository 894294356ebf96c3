"""One way to open the package's SQLite files: the DICOM node's job queue, the send ledger, a reader study's answers.

* :func:`connect`: a connection that waits for another writer (busy timeout) instead of failing at
  once; it creates the file (``mode="rwc"``), only opens an existing one (``"rw"``), or reads (``"ro"``);
* :func:`use_wal`: write-ahead logging, so readers never block the writer;
* :func:`schema_version`, :func:`set_schema_version` (``PRAGMA user_version``) and
  :func:`create_schema` for stores whose tables are created on first use;
* :func:`file_problem` and :func:`integrity_problems`: why a file is not a usable database.

Standard library only: the reader study imports it without torch.
"""

from __future__ import annotations

import os
import sqlite3
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path

__all__ = [
    "SQLITE_MAGIC",
    "connect",
    "create_schema",
    "file_problem",
    "integrity_problems",
    "schema_version",
    "set_schema_version",
    "use_wal",
]

#: The first 16 bytes of every SQLite database file.
SQLITE_MAGIC = b"SQLite format 3\x00"


def connect(
    path: str | os.PathLike, timeout: float = 30.0, mode: str = "rwc", autocommit: bool = False, threads: bool = False
) -> sqlite3.Connection:
    """A connection to ``path`` that waits up to ``timeout`` seconds for another connection's lock.

    ``mode``: ``rwc`` creates the file, ``rw`` never does (a missing file is an error), ``ro`` reads
    only. ``autocommit``: every statement commits at once unless a ``BEGIN`` says otherwise (else
    Python's implicit transactions, committed by ``commit()``). ``threads``: usable from other
    threads than the one that connected (the caller serialises the calls).
    """
    if mode not in ("rwc", "rw", "ro"):
        raise ValueError(f"mode must be 'rwc', 'rw' or 'ro', got {mode!r}")
    uri = "file:" + urllib.parse.quote(str(Path(path).resolve())) + f"?mode={mode}"
    return sqlite3.connect(
        uri, uri=True, timeout=timeout, check_same_thread=not threads, isolation_level=None if autocommit else ""
    )


def _busy(error: sqlite3.OperationalError) -> bool:
    return "locked" in str(error) or "busy" in str(error)


def use_wal(connection: sqlite3.Connection, timeout: float = 30.0, synchronous: str | None = None) -> None:
    """Write-ahead logging (and ``PRAGMA synchronous``, e.g. ``FULL``: a commit survives a power cut).

    Switching a file to WAL needs a moment alone with it: retried for up to ``timeout`` seconds
    while another connection is busy with the file.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            mode = connection.execute("PRAGMA journal_mode").fetchone()[0]
            if str(mode).lower() != "wal":
                mode = connection.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            break
        except sqlite3.OperationalError as error:
            if not _busy(error) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)
    if str(mode).lower() != "wal":
        raise sqlite3.OperationalError(f"could not switch to WAL mode (got {mode})")
    if synchronous:
        connection.execute(f"PRAGMA synchronous = {synchronous}")


def schema_version(connection: sqlite3.Connection) -> int:
    """``PRAGMA user_version``: 0 for a new file (or one written before versions were kept)."""
    return int(connection.execute("PRAGMA user_version").fetchone()[0])


def set_schema_version(connection: sqlite3.Connection, version: int) -> None:
    connection.execute(f"PRAGMA user_version = {int(version)}")


def create_schema(connection: sqlite3.Connection, script: str, version: int, newer: Callable[[int], Exception]) -> None:
    """Create the tables of ``script`` (``CREATE ... IF NOT EXISTS``) and mark the file ``version``.

    A file of a later version was written by a newer release: raises ``newer(found_version)``.
    """
    found = schema_version(connection)
    if found > version:
        raise newer(found)
    connection.executescript(script)
    if found != version:
        set_schema_version(connection, version)


def file_problem(path: str | os.PathLike) -> str | None:
    """Why ``path`` is no SQLite database file (not a regular file, empty, another format); None when it is one."""
    path = Path(path)
    if not path.is_file():
        return "it is not a regular file"
    size = path.stat().st_size
    if size == 0:
        return "the file is empty (0 bytes; an SQLite database never is, even without rows)"
    with open(path, "rb") as handle:
        head = handle.read(len(SQLITE_MAGIC))
    if head != SQLITE_MAGIC:
        return f"it is not an SQLite database ({size} bytes starting {head[:8]!r})"
    return None


def integrity_problems(connection: sqlite3.Connection, limit: int = 5) -> list[str]:
    """What ``PRAGMA integrity_check`` finds (at most ``limit`` lines); empty when the database is sound."""
    found = [str(row[0]) for row in connection.execute(f"PRAGMA integrity_check({int(limit)})").fetchall()]
    return [] if found == ["ok"] else found

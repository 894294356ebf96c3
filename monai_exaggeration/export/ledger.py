"""A persistent send ledger: which SOP instances a destination has confirmed.

SQLite (WAL, one row per (SOP Instance UID, destination)). A row is written only after the peer
confirmed the instance (success or a warning status), so an export that is interrupted and run
again sends exactly what is missing, and a re-run sends nothing twice (the series' UIDs are
deterministic).

The ledger is only a record of what the peer once confirmed: ``export --verify`` asks the peer
which instances it holds, marks the ones it lost (:meth:`SendLedger.mark_lost`, so they count as
unsent until they are stored again) and the ones it listed (:meth:`SendLedger.mark_verified`).

Integrity: the file carries a schema version (``PRAGMA user_version``, :data:`SCHEMA_VERSION`).
Opening an existing ledger checks that it is a non-empty SQLite file that passes
``PRAGMA integrity_check`` and has a known schema; ledgers of earlier versions without a version
number are migrated in place. Anything else raises :class:`LedgerError` (never treated as a new,
empty ledger). A new ledger is written completely under a temporary name and then linked into
place, so a ledger file that exists is never legitimately empty, even while another process is
creating it.

One exporter per ledger: :meth:`SendLedger.exclusive` holds a lock on the ledger
(:func:`~monai_exaggeration.utils.path_lock`) for the whole of an export, so a second export on the
same ledger (another process of this machine, a cron job, the DICOM node) waits until the first is
done and then sends only what the first did not: no instance is sent twice.
"""

from __future__ import annotations

import datetime
import os
import sqlite3
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from filelock import Timeout

from monai_exaggeration import storage
from monai_exaggeration.utils import link_into_place, path_lock

__all__ = ["FOUND_BY_QUERY", "SCHEMA_VERSION", "LedgerBusyError", "LedgerError", "SendLedger", "move_aside"]

#: Schema version in ``PRAGMA user_version``. 1: the original table (written without a version
#: number, user_version 0); 2: adds ``verified_at`` and ``lost_at``.
SCHEMA_VERSION = 2
#: ``status`` of a row recorded because a query found the instance at the destination (no C-STORE status).
FOUND_BY_QUERY = -1

_V1_COLUMNS = ["sop_instance_uid", "destination", "status", "file", "sent_at"]
_COLUMNS = [*_V1_COLUMNS, "verified_at", "lost_at"]
_SCHEMA = """
CREATE TABLE sent (
    sop_instance_uid TEXT NOT NULL,
    destination TEXT NOT NULL,
    status INTEGER NOT NULL,
    file TEXT NOT NULL,
    sent_at TEXT NOT NULL,
    verified_at TEXT,
    lost_at TEXT,
    PRIMARY KEY (sop_instance_uid, destination)
)
"""
_WHAT_TO_DO = (
    "its record of what reached the PACS cannot be used. Run the export again with --verify: it moves the file "
    "aside and rebuilds the ledger from what the PACS holds (or move the file aside yourself and re-run with --verify)"
)


class LedgerError(ValueError):
    """The ledger file is empty, not SQLite, damaged, or of an unknown schema; ``problem`` says which."""

    def __init__(self, path: Path, problem: str) -> None:
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"send ledger {path} is unusable: {problem} -- {_WHAT_TO_DO}")


class LedgerBusyError(ValueError):
    """Another export holds the ledger and did not finish within the time this one was given to wait."""

    def __init__(self, path: Path, waited: float) -> None:
        self.path = Path(path)
        super().__init__(
            f"send ledger {path} is in use by another export (waited {waited:g} s) -- let that export finish, then run "
            "this one again: it sends only what is still missing"
        )


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _companions(path: Path) -> list[Path]:
    """SQLite's write-ahead log and shared-memory files next to ``path``."""
    return [path.with_name(path.name + suffix) for suffix in ("-wal", "-shm")]


def move_aside(path: str | os.PathLike) -> Path:
    """Rename a damaged ledger (and its -wal/-shm files) to ``<stem>.damaged-<UTC time>.sqlite``; returns the new path."""
    path = Path(path)
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S")
    target = path.with_name(f"{path.stem}.damaged-{stamp}{path.suffix or '.sqlite'}")
    counter = 1
    while target.exists():
        target = path.with_name(f"{path.stem}.damaged-{stamp}-{counter}{path.suffix or '.sqlite'}")
        counter += 1
    for source, destination in zip([path, *_companions(path)], [target, *_companions(target)]):
        if source.exists():
            os.replace(source, destination)
    return target


class SendLedger:
    """The confirmed instances per destination, in an SQLite file (created on first use).

    Raises :class:`LedgerError` (a ``ValueError``) when an existing file is not a usable ledger.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not self.path.exists():
            self._create()
        problem = storage.file_problem(self.path)
        if problem:
            raise LedgerError(self.path, problem)
        try:
            self._db = storage.connect(self.path, mode="rw")  # never creates an empty file
        except sqlite3.Error as error:
            raise ValueError(f"send ledger {self.path} cannot be opened ({error})") from error
        try:
            self._check_database()
        except sqlite3.DatabaseError as error:
            self._db.close()
            if isinstance(error, sqlite3.OperationalError) and "locked" in str(error):
                raise ValueError(f"send ledger {self.path} cannot be opened ({error})") from error
            raise LedgerError(self.path, f"SQLite cannot read it ({error})") from error
        except BaseException:
            self._db.close()
            raise

    # ------------------------------------------------------------------------------------ opening

    def _create(self) -> None:
        """Write a complete, empty ledger under a temporary name, then link it into place (unless another process won)."""
        orphans = [p.name for p in _companions(self.path) if p.exists() and p.stat().st_size > 0]
        if orphans:
            raise LedgerError(self.path, f"the ledger file is missing but its SQLite journal {orphans} remains")
        temporary = self.path.with_name(f".{self.path.name}.{uuid.uuid4().hex}.tmp")
        try:
            db = storage.connect(temporary)
            try:
                storage.use_wal(db)
                storage.create_schema(db, _SCHEMA, SCHEMA_VERSION, newer=ValueError)
                db.commit()
            finally:
                db.close()  # checkpoints the WAL into the file
            link_into_place(temporary, self.path)  # unless another process created it meanwhile: then use theirs
        finally:
            for leftover in [temporary, *_companions(temporary)]:
                leftover.unlink(missing_ok=True)

    def _check_database(self) -> None:
        """``PRAGMA integrity_check``, the schema version (migrating version 1), the table's columns."""
        problems = storage.integrity_problems(self._db)
        if problems:
            raise LedgerError(self.path, "PRAGMA integrity_check failed: " + "; ".join(problems))
        storage.use_wal(self._db)
        version = self.schema_version
        if version == 0:
            self._migrate_from_v1()
        elif version != SCHEMA_VERSION:
            raise LedgerError(
                self.path,
                f"unknown schema version {version} (this version of monai_exaggeration reads version "
                f"{SCHEMA_VERSION}; a newer one may have written it)",
            )
        columns = self._columns()
        if columns != _COLUMNS:
            raise LedgerError(self.path, f"schema version {SCHEMA_VERSION} but its 'sent' table has columns {columns}")

    def _columns(self) -> list[str]:
        return [row[1] for row in self._db.execute("PRAGMA table_info(sent)").fetchall()]

    def _migrate_from_v1(self) -> None:
        """A ledger without a version number (written before versions existed): add the version 2 columns."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            if self.schema_version == 0:  # another process may have migrated it meanwhile
                tables = sorted(
                    row[0] for row in self._db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
                )
                if not tables:
                    raise LedgerError(self.path, "it is an SQLite database without any table (an empty ledger)")
                if "sent" not in tables or self._columns() != _V1_COLUMNS:
                    raise LedgerError(
                        self.path,
                        f"unknown schema without a version number (tables {tables}; is it a send ledger at all?)",
                    )
                self._db.execute("ALTER TABLE sent ADD COLUMN verified_at TEXT")
                self._db.execute("ALTER TABLE sent ADD COLUMN lost_at TEXT")
                storage.set_schema_version(self._db, SCHEMA_VERSION)
            self._db.commit()
        except BaseException:
            self._db.rollback()
            raise

    @property
    def schema_version(self) -> int:
        return storage.schema_version(self._db)

    # ------------------------------------------------------------------------------------ one exporter

    @contextmanager
    def exclusive(self, wait: float | None = None, log: Any = None) -> Iterator[SendLedger]:
        """Hold the ledger alone, across processes, for the duration of the ``with`` block.

        When another export holds it, say so on ``log`` (a logger) and wait until it is done, at
        most ``wait`` seconds (None: as long as it takes), else raise :class:`LedgerBusyError`.
        """
        lock = path_lock(self.path)
        try:
            lock.acquire(timeout=0)
        except Timeout:
            if log is not None:
                log.warning(
                    "send ledger %s is in use by another export: waiting for it to finish (then only what it "
                    "did not send is sent)",
                    self.path,
                )
            try:
                lock.acquire(timeout=-1 if wait is None else wait)
            except Timeout:
                raise LedgerBusyError(self.path, wait or 0.0) from None
        try:
            yield self
        finally:
            lock.release()

    # ------------------------------------------------------------------------------------ rows

    def is_sent(self, sop_instance_uid: str, destination: str) -> bool:
        """True if ``destination`` confirmed ``sop_instance_uid`` (and no query found it missing since)."""
        row = self._db.execute(
            "SELECT 1 FROM sent WHERE sop_instance_uid = ? AND destination = ? AND lost_at IS NULL",
            (sop_instance_uid, destination),
        ).fetchone()
        return row is not None

    def record(
        self, sop_instance_uid: str, destination: str, status: int, file: str | os.PathLike, verified: bool = False
    ) -> None:
        """Remember a confirmed instance (committed at once, so a crash right after keeps it).

        ``verified``: a query found it at the destination (then ``status`` is :data:`FOUND_BY_QUERY`
        when it was not sent by this ledger's owner).
        """
        now = _now()
        self._db.execute(
            "INSERT OR REPLACE INTO sent VALUES (?, ?, ?, ?, ?, ?, NULL)",
            (sop_instance_uid, destination, int(status), str(file), now, now if verified else None),
        )
        self._db.commit()

    def record_found(self, found: Iterable[tuple[str, str | os.PathLike]], destination: str) -> None:
        """Instances (uid, file) a query found at ``destination`` though this ledger lacked them (rebuilding a ledger)."""
        now = _now()
        self._db.executemany(
            "INSERT OR REPLACE INTO sent VALUES (?, ?, ?, ?, ?, ?, NULL)",
            [(uid, destination, FOUND_BY_QUERY, str(file), now, now) for uid, file in found],
        )
        self._db.commit()

    def mark_verified(self, sop_instance_uids: Iterable[str], destination: str) -> None:
        """A query found these instances at ``destination``."""
        now = _now()
        self._db.executemany(
            "UPDATE sent SET verified_at = ?, lost_at = NULL WHERE sop_instance_uid = ? AND destination = ?",
            [(now, uid, destination) for uid in sop_instance_uids],
        )
        self._db.commit()

    def mark_lost(self, sop_instance_uids: Iterable[str], destination: str) -> None:
        """A query found these confirmed instances missing at ``destination``: they count as unsent until stored again."""
        now = _now()
        self._db.executemany(
            "UPDATE sent SET lost_at = ? WHERE sop_instance_uid = ? AND destination = ?",
            [(now, uid, destination) for uid in sop_instance_uids],
        )
        self._db.commit()

    def count(self, destination: str | None = None) -> int:
        """Number of confirmed instances (for one destination, or all), not counting those found missing."""
        if destination is None:
            return int(self._db.execute("SELECT COUNT(*) FROM sent WHERE lost_at IS NULL").fetchone()[0])
        return int(
            self._db.execute(
                "SELECT COUNT(*) FROM sent WHERE destination = ? AND lost_at IS NULL", (destination,)
            ).fetchone()[0]
        )

    def count_lost(self, destination: str | None = None) -> int:
        """Instances a query found missing that were not stored again since."""
        if destination is None:
            return int(self._db.execute("SELECT COUNT(*) FROM sent WHERE lost_at IS NOT NULL").fetchone()[0])
        return int(
            self._db.execute(
                "SELECT COUNT(*) FROM sent WHERE destination = ? AND lost_at IS NOT NULL", (destination,)
            ).fetchone()[0]
        )

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> SendLedger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

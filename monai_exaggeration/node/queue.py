"""The node's job queue: one SQLite row per received instance, keyed by (SOP Instance UID, model version).

States: ``queued`` (waiting), ``running`` (claimed by the worker), ``done``, ``failed`` (waiting for
a retry at ``next_try``), ``parked`` (gave up; ``reason`` says why). WAL journal with
``synchronous=FULL``: a committed row survives a crash or power loss, so the C-STORE success that
follows the commit is never a lie. :meth:`JobQueue.claim` takes the next due job atomically
(``BEGIN IMMEDIATE``). At start-up :meth:`JobQueue.recover` hands jobs left ``running`` by a crash
back to the queue (counting the interrupted attempt, so a job that kills the node every time is
parked after ``max_attempts``).
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from monai_exaggeration import storage
from monai_exaggeration.retry import backoff_delay

__all__ = ["PENDING", "STATES", "Job", "JobQueue"]

STATES = ("queued", "running", "done", "failed", "parked")
#: States of a job that still needs work (they count against ``max_jobs`` and keep their spool file).
PENDING = ("queued", "running", "failed")
SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    sop_instance_uid TEXT NOT NULL,
    model_version TEXT NOT NULL,
    sop_class_uid TEXT NOT NULL,
    calling_ae TEXT NOT NULL DEFAULT '',
    spool_file TEXT NOT NULL,
    spool_bytes INTEGER NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('queued', 'running', 'done', 'failed', 'parked')),
    attempts INTEGER NOT NULL DEFAULT 0,
    next_try REAL NOT NULL,
    reason TEXT NOT NULL DEFAULT '',
    received_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    duplicates INTEGER NOT NULL DEFAULT 0,
    result TEXT NOT NULL DEFAULT '',
    UNIQUE (sop_instance_uid, model_version)
);
CREATE INDEX IF NOT EXISTS jobs_due ON jobs (state, next_try);
"""


@dataclass(frozen=True)
class Job:
    id: int
    sop_instance_uid: str
    model_version: str
    sop_class_uid: str
    calling_ae: str
    spool_file: str
    spool_bytes: int
    state: str
    attempts: int
    next_try: float
    reason: str
    received_at: float
    duplicates: int
    result: str


_JOB_COLUMNS = ", ".join(name for name in Job.__dataclass_fields__)


class JobQueue:
    """The queue in ``path`` (created on first use). Thread-safe: one connection behind a lock."""

    def __init__(self, path: str | os.PathLike, read_only: bool = False) -> None:
        self.path = Path(path)
        if read_only:
            if not self.path.is_file():
                raise FileNotFoundError(f"no job queue at {self.path}: has the node run with this work_dir?")
            self._db = storage.connect(self.path, mode="ro", threads=True)
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = storage.connect(self.path, autocommit=True, threads=True)
            try:
                storage.use_wal(self._db, synchronous="FULL")
                storage.create_schema(
                    self._db,
                    _SCHEMA,
                    SCHEMA_VERSION,
                    lambda found: ValueError(f"job queue {self.path} was written by a newer release (schema {found})"),
                )
            except BaseException:
                self._db.close()
                raise
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> JobQueue:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----------------------------------------------------------------------------------- writing

    def _transaction(self):
        return _Transaction(self)

    def find(self, sop_instance_uid: str, model_version: str) -> Job | None:
        with self._lock:
            row = self._db.execute(
                f"SELECT {_JOB_COLUMNS} FROM jobs WHERE sop_instance_uid=? AND model_version=?",
                (sop_instance_uid, model_version),
            ).fetchone()
        return Job(*row) if row else None

    def note_duplicate(self, job_id: int) -> None:
        with self._transaction() as db:
            db.execute("UPDATE jobs SET duplicates = duplicates + 1 WHERE id=?", (job_id,))

    def enqueue(
        self,
        sop_instance_uid: str,
        model_version: str,
        sop_class_uid: str,
        calling_ae: str,
        spool_file: str,
        spool_bytes: int,
        max_jobs: int | None = None,
        max_spool_bytes: float | None = None,
    ) -> tuple[str, Job | None]:
        """Add a job; returns ``("queued", job)``, ``("duplicate", existing job)`` or ``("full", None)``.

        The duplicate check and the limits are applied in the same transaction as the insert.
        """
        now = time.time()
        with self._transaction() as db:
            row = db.execute(
                f"SELECT {_JOB_COLUMNS} FROM jobs WHERE sop_instance_uid=? AND model_version=?",
                (sop_instance_uid, model_version),
            ).fetchone()
            if row:
                db.execute("UPDATE jobs SET duplicates = duplicates + 1 WHERE id=?", (row[0],))
                return "duplicate", Job(*row)
            jobs, spooled = db.execute(
                f"SELECT COUNT(*), COALESCE(SUM(spool_bytes), 0) FROM jobs WHERE state IN {PENDING}"
            ).fetchone()
            if (max_jobs is not None and jobs >= max_jobs) or (
                max_spool_bytes is not None and spooled + spool_bytes > max_spool_bytes
            ):
                return "full", None
            cursor = db.execute(
                "INSERT INTO jobs (sop_instance_uid, model_version, sop_class_uid, calling_ae, spool_file, spool_bytes, "
                "state, next_try, received_at) VALUES (?, ?, ?, ?, ?, ?, 'queued', ?, ?)",
                (sop_instance_uid, model_version, sop_class_uid, calling_ae, spool_file, int(spool_bytes), now, now),
            )
            job_id = cursor.lastrowid
        return "queued", self.get(job_id)

    def get(self, job_id: int) -> Job:
        with self._lock:
            row = self._db.execute(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE id=?", (job_id,)).fetchone()
        if row is None:
            raise KeyError(f"no job {job_id}")
        return Job(*row)

    def claim(self, now: float | None = None) -> Job | None:
        """The next due job (queued, or failed with ``next_try`` passed), marked running; None when none is due."""
        now = time.time() if now is None else now
        with self._transaction() as db:
            row = db.execute(
                "SELECT id FROM jobs WHERE state IN ('queued', 'failed') AND next_try <= ? ORDER BY next_try, id LIMIT 1",
                (now,),
            ).fetchone()
            if row is None:
                return None
            db.execute("UPDATE jobs SET state='running', attempts=attempts+1, started_at=? WHERE id=?", (now, row[0]))
        return self.get(row[0])

    def finish(self, job_id: int, result: str = "") -> None:
        with self._transaction() as db:
            db.execute(
                "UPDATE jobs SET state='done', reason='', result=?, finished_at=? WHERE id=?",
                (result, time.time(), job_id),
            )

    def fail(
        self,
        job_id: int,
        reason: str,
        max_attempts: int,
        backoff_s: float,
        max_backoff_s: float,
        permanent: bool = False,
    ) -> str:
        """Record a failed attempt: ``failed`` with a back-off (``backoff_s * 2**(attempts-1)``), or ``parked``
        when the attempts are used up or ``permanent``. Returns the new state."""
        with self._transaction() as db:
            attempts = db.execute("SELECT attempts FROM jobs WHERE id=?", (job_id,)).fetchone()[0]
            if permanent or attempts >= max_attempts:
                state, next_try = "parked", time.time()
            else:
                state, next_try = "failed", time.time() + backoff_delay(attempts - 1, backoff_s, max_backoff_s)
            db.execute(
                "UPDATE jobs SET state=?, reason=?, next_try=?, finished_at=? WHERE id=?",
                (state, reason[:2000], next_try, time.time(), job_id),
            )
        return state

    def recover(self, max_attempts: int) -> list[Job]:
        """Jobs a crash left ``running``: back to ``queued`` at once, or ``parked`` when their attempts are used up."""
        with self._transaction() as db:
            rows = db.execute(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE state='running' ORDER BY id").fetchall()
            for row in rows:
                job = Job(*row)
                parked = job.attempts >= max_attempts
                db.execute(  # next_try is left as it was: the job keeps its place at the head of the queue
                    "UPDATE jobs SET state=?, reason=? WHERE id=?",
                    (
                        "parked" if parked else "queued",
                        f"interrupted {job.attempts} time(s): the node stopped while it ran"
                        if parked
                        else "resumed after an interrupted run",
                        job.id,
                    ),
                )
        return [Job(*row) for row in rows]

    def adopt_model_version(self, model_version: str) -> int:
        """Move pending jobs of other model versions to ``model_version`` (a duplicate of an existing job is marked done)."""
        moved = 0
        with self._transaction() as db:
            rows = db.execute(
                f"SELECT id, sop_instance_uid FROM jobs WHERE state IN {PENDING} AND model_version<>?", (model_version,)
            ).fetchall()
            for job_id, uid in rows:
                if db.execute(
                    "SELECT 1 FROM jobs WHERE sop_instance_uid=? AND model_version=?", (uid, model_version)
                ).fetchone():
                    db.execute(
                        "UPDATE jobs SET state='done', reason='superseded: already a job of the current model' "
                        "WHERE id=?",
                        (job_id,),
                    )
                else:
                    db.execute("UPDATE jobs SET model_version=? WHERE id=?", (model_version, job_id))
                    moved += 1
        return moved

    def requeue(self, states: Iterable[str] = ("parked",)) -> int:
        """Put jobs in ``states`` back into the queue with fresh attempts; returns how many."""
        states = tuple(states)
        if not set(states) <= {"parked", "failed"}:
            raise ValueError(f"only parked and failed jobs can be requeued, not {states}")
        with self._transaction() as db:
            marks = ",".join("?" * len(states))
            cursor = db.execute(
                f"UPDATE jobs SET state='queued', attempts=0, next_try=?, reason='requeued by hand' "
                f"WHERE state IN ({marks})",
                (time.time(), *states),
            )
            return cursor.rowcount

    # ----------------------------------------------------------------------------------- reading

    def pending(self) -> tuple[int, int]:
        """(jobs still to do, bytes of their spool files)."""
        with self._lock:
            count, size = self._db.execute(
                f"SELECT COUNT(*), COALESCE(SUM(spool_bytes), 0) FROM jobs WHERE state IN {PENDING}"
            ).fetchone()
        return int(count), int(size)

    def counts(self) -> dict[str, int]:
        """Jobs per state (every state present, 0 when none) and ``duplicates`` (re-sent instances acknowledged)."""
        with self._lock:
            rows = dict(self._db.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetchall())
            duplicates = self._db.execute("SELECT COALESCE(SUM(duplicates), 0) FROM jobs").fetchone()[0]
        return {**{state: int(rows.get(state, 0)) for state in STATES}, "duplicates": int(duplicates)}

    def jobs(self, states: Iterable[str] = STATES, limit: int | None = None) -> list[Job]:
        states = tuple(states)
        marks = ",".join("?" * len(states))
        query = f"SELECT {_JOB_COLUMNS} FROM jobs WHERE state IN ({marks}) ORDER BY id"
        if limit is not None:
            query += f" LIMIT {int(limit)}"
        with self._lock:
            return [Job(*row) for row in self._db.execute(query, states).fetchall()]


class _Transaction:
    """``BEGIN IMMEDIATE`` ... ``COMMIT`` (``ROLLBACK`` on error) under the queue's lock."""

    def __init__(self, queue: JobQueue) -> None:
        self.queue = queue

    def __enter__(self) -> sqlite3.Connection:
        self.queue._lock.acquire()
        try:
            self.queue._db.execute("BEGIN IMMEDIATE")
        except BaseException:
            self.queue._lock.release()
            raise
        return self.queue._db

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            self.queue._db.execute("ROLLBACK" if exc_type else "COMMIT")
        finally:
            self.queue._lock.release()

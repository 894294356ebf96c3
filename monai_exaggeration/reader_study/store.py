"""The response store of a reader study: one SQLite file, ``DIR/responses.sqlite``, safe for concurrent use.

Schema (one row per reader, case and question; a changed answer replaces the row)::

    CREATE TABLE responses (
        reader_id   TEXT NOT NULL,
        case_id     TEXT NOT NULL,
        question_id TEXT NOT NULL,
        arm         TEXT NOT NULL,   -- the arm the case was read in
        phase       TEXT NOT NULL,   -- "before" | "after" (the question's phase)
        value       TEXT NOT NULL,   -- the answer as JSON: 4, "yes", "real", ["heart size"], "free text"
        answered_at TEXT NOT NULL,   -- UTC ISO 8601 with microseconds, time of the last change
        PRIMARY KEY (reader_id, case_id, question_id)
    )
    CREATE TABLE explanations (      -- when each reader was first served each case's explanation
        reader_id   TEXT NOT NULL,
        case_id     TEXT NOT NULL,
        shown_at    TEXT NOT NULL,   -- UTC ISO 8601 with microseconds, never changed afterwards
        PRIMARY KEY (reader_id, case_id)
    )

The database is in WAL mode (readers never block the writer) with a busy timeout, and every call
opens its own short-lived connection, so any number of threads and processes (web workers, the
analysis) may use one store at the same time. :meth:`ResponseStore.save` is a single ``INSERT ...
ON CONFLICT DO UPDATE`` statement committed at once: an answer is stored exactly once, and the
latest save of a (reader, case, question) wins. The store does not validate answers against the
study's questions; the reading app does that before saving.

:meth:`ResponseStore.mark_explained` records, once and for good, that a reader has been served a
case's explanation; ``save(..., final_once_explained=True)`` then refuses (:class:`AnswerFrozenError`)
to create or change that reader's answer to that case, checking and writing in one ``BEGIN
IMMEDIATE`` transaction so that no answer slips in after the explanation was recorded.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd

from monai_exaggeration import storage

__all__ = ["RESPONSE_COLUMNS", "AnswerFrozenError", "ResponseStore"]

#: Columns of the ``responses`` table, of :meth:`ResponseStore.answers` rows and of :meth:`ResponseStore.to_frame`.
RESPONSE_COLUMNS = ["reader_id", "case_id", "question_id", "arm", "phase", "value", "answered_at"]
_PHASES = ("before", "after")
#: ``PRAGMA user_version`` of the file (0: written before versions were kept; the tables are the same).
SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    reader_id   TEXT NOT NULL,
    case_id     TEXT NOT NULL,
    question_id TEXT NOT NULL,
    arm         TEXT NOT NULL,
    phase       TEXT NOT NULL,
    value       TEXT NOT NULL,
    answered_at TEXT NOT NULL,
    PRIMARY KEY (reader_id, case_id, question_id)
);
CREATE TABLE IF NOT EXISTS explanations (
    reader_id TEXT NOT NULL,
    case_id   TEXT NOT NULL,
    shown_at  TEXT NOT NULL,
    PRIMARY KEY (reader_id, case_id)
);
"""
_UPSERT = """
INSERT INTO responses (reader_id, case_id, question_id, arm, phase, value, answered_at)
VALUES (?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (reader_id, case_id, question_id) DO UPDATE SET
    arm = excluded.arm, phase = excluded.phase, value = excluded.value, answered_at = excluded.answered_at
"""
_SELECT = f"SELECT {', '.join(RESPONSE_COLUMNS)} FROM responses"
_ORDER = " ORDER BY answered_at, reader_id, case_id, question_id"


class AnswerFrozenError(ValueError):
    """The answer may no longer be given or changed: the case's explanation was shown at ``shown_at``."""

    def __init__(self, shown_at: str) -> None:
        super().__init__(f"the explanation of this case was shown at {shown_at}")
        self.shown_at = shown_at


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


class ResponseStore:
    """Reader answers in ``path`` (created with its table on first use). See the module docstring.

    ``timeout``: seconds a call waits for a lock held by another connection before failing.
    """

    def __init__(self, path: str | os.PathLike, timeout: float = 30.0) -> None:
        self.path = Path(path)
        self.timeout = float(timeout)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._initialise()

    def __repr__(self) -> str:
        return f"ResponseStore({str(self.path)!r})"

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        connection = storage.connect(self.path, timeout=self.timeout, autocommit=True)
        try:
            yield connection
        finally:
            connection.close()

    def _initialise(self) -> None:
        """WAL mode, the tables and the schema version."""
        with self._connect() as connection:
            storage.use_wal(connection, timeout=self.timeout)
            storage.create_schema(
                connection,
                _SCHEMA,
                SCHEMA_VERSION,
                lambda found: ValueError(
                    f"response store {self.path} was written by a newer release (schema {found}) -- use that release"
                ),
            )

    # ------------------------------------------------------------------------------------- writing

    def save(
        self,
        reader_id: str,
        case_id: str,
        question_id: str,
        arm: str,
        phase: str,
        value: Any,
        final_once_explained: bool = False,
    ) -> str:
        """Store (or replace) one answer and commit at once; return its ``answered_at`` time.

        ``value`` is any JSON value (number, text, boolean, list, mapping); NaN and infinities are refused.
        ``final_once_explained``: once :meth:`mark_explained` has recorded the case's explanation for
        this reader, refuse (:class:`AnswerFrozenError`) a new or different answer; saving the answer
        already stored changes nothing and returns its time.
        """
        for name, text in (("reader_id", reader_id), ("case_id", case_id), ("question_id", question_id), ("arm", arm)):
            if not isinstance(text, str) or not text:
                raise ValueError(f"{name} must be a non-empty string, got {text!r}")
        if phase not in _PHASES:
            raise ValueError(f"phase must be 'before' or 'after', got {phase!r}")
        try:
            encoded = json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
        except (TypeError, ValueError) as error:
            raise ValueError(f"answer value must be JSON (numbers, text, lists): {error}") from None
        row = (reader_id, case_id, question_id, arm, phase, encoded)
        with self._connect() as connection:
            if not final_once_explained:
                answered_at = _now()
                connection.execute(_UPSERT, (*row, answered_at))
                return answered_at
            connection.execute("BEGIN IMMEDIATE")  # the check and the write see the same database
            try:
                shown = connection.execute(
                    "SELECT shown_at FROM explanations WHERE reader_id = ? AND case_id = ?", (reader_id, case_id)
                ).fetchone()
                if shown is not None:
                    stored = connection.execute(
                        "SELECT value, answered_at FROM responses WHERE reader_id = ? AND case_id = ? AND question_id = ?",
                        (reader_id, case_id, question_id),
                    ).fetchone()
                    if stored is None or stored[0] != encoded:
                        raise AnswerFrozenError(shown[0])
                    connection.execute("COMMIT")
                    return stored[1]
                answered_at = _now()
                connection.execute(_UPSERT, (*row, answered_at))
                connection.execute("COMMIT")
                return answered_at
            except BaseException:
                connection.execute("ROLLBACK")
                raise

    def mark_explained(self, reader_id: str, case_id: str) -> str:
        """Record that ``reader_id`` has been served the explanation of ``case_id``; return when that first happened."""
        for name, text in (("reader_id", reader_id), ("case_id", case_id)):
            if not isinstance(text, str) or not text:
                raise ValueError(f"{name} must be a non-empty string, got {text!r}")
        with self._connect() as connection:
            connection.execute(
                "INSERT OR IGNORE INTO explanations (reader_id, case_id, shown_at) VALUES (?, ?, ?)",
                (reader_id, case_id, _now()),
            )
            return connection.execute(
                "SELECT shown_at FROM explanations WHERE reader_id = ? AND case_id = ?", (reader_id, case_id)
            ).fetchone()[0]

    # ------------------------------------------------------------------------------------- reading

    def _rows(self, where: str = "", parameters: tuple = ()) -> list[dict[str, Any]]:
        with self._connect() as connection:
            rows = connection.execute(_SELECT + where + _ORDER, parameters).fetchall()
        return [dict(zip(RESPONSE_COLUMNS[:5], row[:5]), value=json.loads(row[5]), answered_at=row[6]) for row in rows]

    def answers(self, reader_id: str, case_id: str | None = None) -> list[dict[str, Any]]:
        """That reader's answers only (to ``case_id`` only, when given), oldest first: dicts with
        :data:`RESPONSE_COLUMNS` keys, ``value`` decoded."""
        if case_id is not None:
            return self._rows(" WHERE reader_id = ? AND case_id = ?", (reader_id, case_id))
        return self._rows(" WHERE reader_id = ?", (reader_id,))

    def progress(self) -> dict[str, int]:
        """``{reader_id: number of distinct cases with at least one answer}``."""
        with self._connect() as connection:
            rows = connection.execute(
                "SELECT reader_id, COUNT(DISTINCT case_id) FROM responses GROUP BY reader_id ORDER BY reader_id"
            ).fetchall()
        return {reader: int(count) for reader, count in rows}

    def explained(self, reader_id: str, case_id: str | None = None) -> dict[str, str]:
        """``{case_id: shown_at}`` of the cases whose explanation ``reader_id`` has been served (``case_id`` only, when given)."""
        query, parameters = "SELECT case_id, shown_at FROM explanations WHERE reader_id = ?", (reader_id,)
        if case_id is not None:
            query, parameters = query + " AND case_id = ?", (reader_id, case_id)
        with self._connect() as connection:
            return dict(connection.execute(query + " ORDER BY case_id", parameters).fetchall())

    def count(self) -> int:
        """Number of stored answers."""
        with self._connect() as connection:
            return int(connection.execute("SELECT COUNT(*) FROM responses").fetchone()[0])

    def to_frame(self) -> pd.DataFrame:
        """Every answer as a DataFrame with :data:`RESPONSE_COLUMNS` (``value`` decoded from JSON)."""
        return pd.DataFrame(self._rows(), columns=RESPONSE_COLUMNS)

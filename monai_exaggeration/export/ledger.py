"""A persistent send ledger: which SOP instances a destination has confirmed.

SQLite (WAL, one row per (SOP Instance UID, destination)). A row is written only after the peer
confirmed the instance (success or a warning status), so an export that is interrupted and run
again sends exactly what is missing, and a re-run sends nothing twice (the series' UIDs are
deterministic).
"""

from __future__ import annotations

import datetime
import os
import sqlite3
import time
from pathlib import Path

__all__ = ["SendLedger"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS sent (
    sop_instance_uid TEXT NOT NULL,
    destination TEXT NOT NULL,
    status INTEGER NOT NULL,
    file TEXT NOT NULL,
    sent_at TEXT NOT NULL,
    PRIMARY KEY (sop_instance_uid, destination)
)
"""


class SendLedger:
    """The confirmed instances per destination, in an SQLite file (created on first use)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, timeout=30.0)
        for attempt in range(50):  # switching to WAL needs a moment alone with the file
            try:
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute(_SCHEMA)
                self._db.commit()
                break
            except sqlite3.OperationalError as error:
                if "locked" not in str(error) or attempt == 49:
                    self._db.close()
                    raise ValueError(f"send ledger {self.path} cannot be opened ({error})") from error
                time.sleep(0.05)
            except sqlite3.DatabaseError as error:
                self._db.close()
                raise ValueError(
                    f"send ledger {self.path} is not a usable SQLite file ({error}) -- move it away or give --ledger"
                ) from error

    def is_sent(self, sop_instance_uid: str, destination: str) -> bool:
        """True if ``destination`` already confirmed ``sop_instance_uid``."""
        row = self._db.execute(
            "SELECT 1 FROM sent WHERE sop_instance_uid = ? AND destination = ?", (sop_instance_uid, destination)
        ).fetchone()
        return row is not None

    def record(self, sop_instance_uid: str, destination: str, status: int, file: str | os.PathLike) -> None:
        """Remember a confirmed instance (committed at once, so a crash right after keeps it)."""
        now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        self._db.execute(
            "INSERT OR REPLACE INTO sent VALUES (?, ?, ?, ?, ?)", (sop_instance_uid, destination, int(status), str(file), now)
        )
        self._db.commit()

    def count(self, destination: str | None = None) -> int:
        """Number of confirmed instances (for one destination, or all)."""
        if destination is None:
            return int(self._db.execute("SELECT COUNT(*) FROM sent").fetchone()[0])
        return int(self._db.execute("SELECT COUNT(*) FROM sent WHERE destination = ?", (destination,)).fetchone()[0])

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> SendLedger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

"""The inference run's CSV logs and its ordered background writer.

* ``frames.csv`` (one row per written frame), ``sources.csv`` (one row per source) and ``errors.csv``
  (one row per failed input): their columns, how earlier runs' rows are kept (:func:`earlier_logs`,
  :class:`RunLogs`) and how a failure becomes a row (:func:`failure_row`). The logs are read and
  rewritten under the output folder's lock (:func:`logs_lock`), so two runs writing into one folder
  at the same time both end up listed.
* :class:`SeriesWriter`: writes each explained source (DICOM, quick-looks, log rows) in a background
  thread, in input order, while the caller computes the next batch; at most ``max_pending``
  sources wait, so memory stays bounded.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from filelock import FileLock

from monai_exaggeration.data.streaming import ERROR_COLUMNS, LoadFailure, failure_row
from monai_exaggeration.errors import CXRInputError
from monai_exaggeration.utils import path_lock, write_csv_atomic

__all__ = [
    "ERROR_COLUMNS",
    "FRAME_COLUMNS",
    "RUN_LOGS",
    "SOURCE_COLUMNS",
    "SeriesWriter",
    "earlier_logs",
    "failure_row",
    "RunLogs",
    "logs_lock",
    "others_then",
]

logger = logging.getLogger("monai_exaggeration.inference")

#: Columns of ``frames.csv`` (one row per written frame).
FRAME_COLUMNS = [
    "source",
    "source_sop_instance_uid",
    "study_instance_uid",
    "step",
    "target_bin",
    "target_centre",
    "score",
    "generator_frame_score",
    "reached",
    "strength",
    "series_instance_uid",
    "sop_instance_uid",
    "output_file",
    "model_version",
    "method",
    "method_detail",
]
#: Columns of ``sources.csv`` (one row per source image that produced a series).
SOURCE_COLUMNS = [
    "source",
    "source_sop_instance_uid",
    "study_instance_uid",
    "finding",
    "source_score",
    "source_bin",
    "num_frames",
    "first_score",
    "last_score",
    "flip_reached",
    "monotone",
    "spearman",
    "series_instance_uid",
    "series_dir",
    "gif",
    "montage",
    "score_plot",
    "seconds",
    "model_version",
    "method",
]
#: The run's CSV logs: key -> (file name, columns).
RUN_LOGS = {
    "frames": ("frames.csv", FRAME_COLUMNS),
    "sources": ("sources.csv", SOURCE_COLUMNS),
    "errors": ("errors.csv", ERROR_COLUMNS),
}


def earlier_logs(output_dir: Path) -> dict[str, pd.DataFrame]:
    """Rows of earlier runs' ``frames.csv``/``sources.csv`` whose series folder still exists (as text)."""
    earlier = {}
    for key in ("frames", "sources"):
        name, columns = RUN_LOGS[key]
        path = output_dir / name
        try:
            table = pd.read_csv(path, dtype=str, keep_default_na=False).reindex(columns=columns, fill_value="")
        except (FileNotFoundError, pd.errors.EmptyDataError):
            table = pd.DataFrame(columns=columns)
        except (pd.errors.ParserError, UnicodeDecodeError) as error:
            logger.warning("%s is unreadable (%s): it is rewritten with this run's rows only", path, error)
            table = pd.DataFrame(columns=columns)
        exists = {uid: (output_dir / "dicom" / uid).is_dir() for uid in set(table["series_instance_uid"])}
        earlier[key] = table[table["series_instance_uid"].map(exists).astype(bool)]
    return earlier


def logs_lock(output_dir: Path) -> FileLock:
    """The lock under which the logs of ``output_dir`` are read and rewritten (:func:`~monai_exaggeration.utils.path_lock`)."""
    return path_lock(Path(output_dir) / "frames.csv")


def others_then(earlier: pd.DataFrame, table: pd.DataFrame) -> pd.DataFrame:
    """The rows of ``earlier`` whose series ``table`` does not hold, then ``table`` (a run's rows replace its series')."""
    if not len(earlier):
        return table
    kept = earlier[~earlier["series_instance_uid"].isin(set(table["series_instance_uid"].astype(str)))]
    return pd.concat([kept, table.astype(object)], ignore_index=True) if len(kept) else table


def _stamp(paths: list[Path]) -> tuple:
    """What identifies the current version of each file (rewritten atomically: a new inode, time and size)."""
    stamps = []
    for path in paths:
        try:
            status = path.stat()
            stamps.append((status.st_ino, status.st_mtime_ns, status.st_size))
        except FileNotFoundError:
            stamps.append(None)
    return tuple(stamps)


class RunLogs:
    """A run's ``frames.csv`` and ``sources.csv``, rewritten whole by :meth:`write` after every source.

    ``keep_others`` False (a shard of a ``torchrun`` run, whose partial logs hold its own rows
    only): this run's rows alone. True: the rows of other series listed there are kept, those of
    earlier runs and those of a run writing into the same folder at the same time. The files are
    rewritten under :func:`logs_lock`, and read again first whenever someone else has written them
    since this run last did.
    """

    def __init__(self, logs: dict[str, Path], keep_others: bool) -> None:
        self.logs, self.keep_others = logs, keep_others
        self._others: dict[str, pd.DataFrame] | None = None
        self._stamp: tuple | None = None

    def write(self, frame_rows: list[dict], source_rows: list[dict]) -> None:
        now = {
            "frames": pd.DataFrame(frame_rows, columns=FRAME_COLUMNS),
            "sources": pd.DataFrame(source_rows, columns=SOURCE_COLUMNS),
        }
        if not self.keep_others:
            for key, table in now.items():
                write_csv_atomic(table, self.logs[key])
            return
        folder, paths = self.logs["frames"].parent, [self.logs[key] for key in now]
        with logs_lock(folder):
            if self._others is None or _stamp(paths) != self._stamp:
                self._others = earlier_logs(folder)
            for key, table in now.items():
                write_csv_atomic(others_then(self._others[key], table), self.logs[key])
            self._stamp = _stamp(paths)


@dataclass
class _Job:
    path: str
    outcome: Any  # a SeriesResult, or the exception / LoadFailure of the source
    started: float


class SeriesWriter:
    """Write explained sources in order in a background thread (see the module docstring).

    ``write(result)`` returns ``(frame_rows, source_row)`` (it may raise: the source becomes an
    ``errors.csv`` row and leaves no files); ``series_uid(result)`` is the series a result would
    write, so that two inputs of one run that would write the same series are reported, not written
    twice. ``on_done(rows_or_none)`` is called after every source (progress). The logs are rewritten
    after every source, so an interrupted run still lists what it wrote; ``earlier`` (what
    :func:`earlier_logs` found at the start, or None for a shard of a ``torchrun`` run) says whether the
    rows of other series are kept (:class:`RunLogs`).
    """

    def __init__(
        self,
        write: Callable[[Any], tuple[list[dict], dict]],
        series_uid: Callable[[Any], str],
        logs: dict[str, Path],
        earlier: dict[str, pd.DataFrame] | None,
        on_done: Callable[[dict | None], None] = lambda row: None,
        max_pending: int = 4,
    ) -> None:
        self._write, self._series_uid, self.logs, self.on_done = write, series_uid, logs, on_done
        self.run_logs = RunLogs(logs, keep_others=earlier is not None)
        self.frame_rows: list[dict] = []
        self.source_rows: list[dict] = []
        self.failures: list[dict] = []
        self.written_by: dict[str, str] = {}
        self._queue: queue.Queue[_Job | None] = queue.Queue(maxsize=max(1, max_pending))
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._work, name="series-writer", daemon=True)
        self._thread.start()

    def submit(self, path: str, outcome: Any, started: float | None = None) -> None:
        """Queue one source's outcome (blocks while ``max_pending`` sources wait)."""
        if self._error is not None:
            raise self._error
        self._queue.put(_Job(str(path), outcome, time.perf_counter() if started is None else started))

    def close(self) -> None:
        """Wait until everything queued is written; re-raise an error of the writer itself."""
        self._queue.put(None)
        self._thread.join()
        if self._error is not None:
            raise self._error
        if not self.source_rows:  # still leave logs with headers (and earlier runs' rows)
            self.run_logs.write(self.frame_rows, self.source_rows)

    def _work(self) -> None:
        while (job := self._queue.get()) is not None:
            try:
                self._one(job)
            except BaseException as error:  # noqa: BLE001 - e.g. the disk is full for the logs themselves
                self._error = error
                while self._queue.get() is not None:  # drain, so submit() never blocks forever
                    pass
                return

    def _one(self, job: _Job) -> None:
        outcome = job.outcome
        if not isinstance(outcome, (BaseException, LoadFailure)):
            try:
                series_uid = str(self._series_uid(outcome))
                if series_uid in self.written_by:
                    raise CXRInputError(
                        job.path,
                        f"same SOP Instance UID and pixels as {self.written_by[series_uid]}, whose series this run "
                        "already wrote",
                        "the input is a duplicate; remove one of the two",
                    )
                frames, source_row = self._write(outcome)
                self.written_by[series_uid] = job.path
            except Exception as error:  # noqa: BLE001 - one bad input must not stop the others
                outcome = error
        if isinstance(outcome, (BaseException, LoadFailure)):
            failure = failure_row(job.path, outcome)
            logger.error("%s: %s -- %s", job.path, failure["error"], failure["hint"])
            self.failures.append(failure)
            write_csv_atomic(pd.DataFrame(self.failures, columns=ERROR_COLUMNS), self.logs["errors"])
            self.on_done(None)
            return
        source_row["seconds"] = round(time.perf_counter() - job.started, 3)
        self.frame_rows.extend(frames)
        self.source_rows.append(source_row)
        self.run_logs.write(self.frame_rows, self.source_rows)
        self.on_done(source_row)

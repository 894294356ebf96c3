"""Export DICOM files to one destination: skip what the ledger says arrived, retry transient failures.

``export_files`` reads each file's SOP Instance UID (header only), skips those the send ledger
already holds for the destination, sends the rest over one association (or DICOMweb session),
records each confirmed instance in the ledger immediately, retries transient failures with
exponential back-off, and returns an :class:`ExportReport` (also written as CSV by the CLI).
A permanent failure (e.g. association rejected), a peer still unreachable after the retries, or
``give_up_after`` instances in a row without any answer stop the export: the remaining instances
are reported failed with the reason, untried (run the export again later: it resumes).
``export_series`` does the same for folders, files or an inference ``frames.csv``. One export per
ledger runs at a time: a second one waits for the first (:meth:`~.ledger.SendLedger.exclusive`) and
then sends only what the ledger still lacks, so no instance is sent twice.

With ``verify=True`` the ledger is not trusted alone: before sending, the destination is asked
which instances of each series it holds (C-FIND at IMAGE level for DIMSE, QIDO-RS for DICOMweb;
:func:`~.senders.make_querier`). Instances the ledger lists but the destination lacks are marked
lost in the ledger and sent again; instances the destination holds but the ledger lacks are added
to it (this rebuilds a lost ledger). After sending, the series that got instances are queried
again, and the report counts the instances the destination listed (``confirmed`` of ``expected``).
A destination that cannot answer the queries stops the export before anything is sent.
"""

from __future__ import annotations

import csv
import logging
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from pydicom.errors import InvalidDicomError
from tqdm import tqdm

from monai_exaggeration.export.destinations import Destination
from monai_exaggeration.export.ledger import SendLedger
from monai_exaggeration.export.senders import Sender, make_querier, make_sender
from monai_exaggeration.export.status import (
    PermanentSendError,
    SendResult,
    TransientSendError,
    UnreachableError,
)
from monai_exaggeration.retry import BACKOFF_S, RETRIES, retry
from monai_exaggeration.utils import atomic_write

__all__ = ["REPORT_COLUMNS", "ExportReport", "ExportRow", "collect_dicom_files", "export_files", "export_series"]

logger = logging.getLogger("monai_exaggeration.export")

REPORT_COLUMNS = ["file", "sop_instance_uid", "destination", "result", "status", "message"]
#: Files an export never sends (quick-looks, logs, the ledger itself).
_SKIPPED_SUFFIXES = {
    ".csv",
    ".png",
    ".gif",
    ".jpg",
    ".jpeg",
    ".json",
    ".txt",
    ".log",
    ".sqlite",
    ".sqlite-wal",
    ".sqlite-shm",
    ".tmp",
    ".md",
}


@dataclass
class ExportRow:
    """One line of ``export_report.csv``."""

    file: str
    sop_instance_uid: str
    destination: str
    result: str  # sent | already_sent | warning | failed
    status: str  # DICOM status as 0xXXXX ("" when no answer)
    message: str = ""


@dataclass
class ExportReport:
    """Every instance's outcome for one destination, with the time the export took."""

    destination: str
    rows: list[ExportRow] = field(default_factory=list)
    seconds: float = 0.0
    #: ``verify=True``: the destination was asked what it holds; ``confirmed`` of ``expected`` instances were listed.
    verified: bool = False
    confirmed: int = 0
    expected: int = 0
    #: instances the ledger had as sent but the destination lacked (sent again)
    lost: int = 0
    #: why the destination's answer is missing or incomplete ("" when it answered every query)
    verify_error: str = ""

    def count(self, result: str) -> int:
        """Rows with ``result`` (sent, already_sent, warning, failed)."""
        return sum(row.result == result for row in self.rows)

    @property
    def exit_code(self) -> int:
        """0 when every instance is at the destination (sent now, before, or with a warning), else 1.

        When verifying, also 1 unless the destination listed every instance.
        """
        if self.count("failed"):
            return 1
        if self.verified and (self.verify_error or self.confirmed < self.expected):
            return 1
        return 0

    @property
    def instances_per_second(self) -> float:
        sent = self.count("sent") + self.count("warning")
        return sent / self.seconds if self.seconds > 0 else 0.0

    def describe(self) -> str:
        """The summary line: sent, stored with warning, already present, failed, instances/s (and what was confirmed)."""
        line = (
            f"export to {self.destination}: {self.count('sent')} sent, {self.count('warning')} stored with warning, "
            f"{self.count('already_sent')} already present, {self.count('failed')} failed "
            f"in {self.seconds:.1f} s ({self.instances_per_second:.1f} instances/s)"
        )
        if self.verified:
            if self.verify_error and not self.confirmed:
                line += f"; confirmed in PACS: unknown ({self.verify_error})"
            else:
                line += f"; confirmed in PACS: {self.confirmed} of {self.expected}"
                if self.lost:
                    line += f" ({self.lost} in the send ledger but missing from the PACS were resent)"
                if self.verify_error:
                    line += f" ({self.verify_error})"
        return line

    def write_csv(self, path: str | os.PathLike) -> Path:
        """Write the report atomically (columns :data:`REPORT_COLUMNS`)."""

        def write(tmp: Path) -> None:
            with open(tmp, "w", newline="") as handle:
                writer = csv.writer(handle)
                writer.writerow(REPORT_COLUMNS)
                for row in self.rows:
                    writer.writerow([getattr(row, name) for name in REPORT_COLUMNS])

        return atomic_write(path, write)


def collect_dicom_files(sources: Sequence[str | os.PathLike]) -> list[Path]:
    """DICOM files to send from folders (recursive), files, or inference ``frames.csv`` logs (``output_file``)."""
    files: list[Path] = []
    for source in sources:
        path = Path(source).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"not found: {path} -- give folders, DICOM files or an inference frames.csv")
        if path.is_dir():
            files.extend(
                p
                for p in sorted(path.rglob("*"))
                if p.is_file() and not p.name.startswith(".") and p.suffix.lower() not in _SKIPPED_SUFFIXES
            )
        elif path.suffix.lower() == ".csv":
            with open(path, newline="") as handle:
                reader = csv.DictReader(handle)
                if "output_file" not in (reader.fieldnames or []):
                    raise ValueError(f"{path} has no output_file column -- give the frames.csv of an inference run")
                files.extend(Path(row["output_file"]) for row in reader if row["output_file"])
        else:
            files.append(path)
    return list(dict.fromkeys(files))


def _header(path: Path) -> pydicom.Dataset | None:
    """The header of a DICOM file, or None when the file is not DICOM (then it is skipped)."""
    try:
        return pydicom.dcmread(
            path,
            stop_before_pixels=True,
            specific_tags=["SOPInstanceUID", "SOPClassUID", "StudyInstanceUID", "SeriesInstanceUID"],
        )
    except (InvalidDicomError, EOFError, OSError):
        return None


def export_files(
    files: Iterable[str | os.PathLike],
    destination: Destination,
    ledger: SendLedger,
    retries: int = RETRIES,
    backoff: float = BACKOFF_S,
    progress: bool = True,
    after_each: Callable[[ExportRow], None] | None = None,
    give_up_after: int = 3,
    verify: bool = False,
    wait: float | None = None,
) -> ExportReport:
    """Send ``files`` to ``destination``; see the module docstring. Never raises for per-instance problems.

    ``retries``: retries of a transient failure per instance (and per query), after ``backoff`` * 2**k
    seconds; ``after_each(row)``: called after every instance; ``give_up_after``: stop after that many
    instances in a row got no answer (0: never); ``verify``: ask the destination what it holds
    instead of trusting the ledger alone.

    One export per ledger at a time (:meth:`SendLedger.exclusive`): while another process exports
    with the same ledger, this one waits (at most ``wait`` seconds, None: until it is done, else
    :class:`~.ledger.LedgerBusyError`), then sends only what the ledger still lacks.
    """
    with ledger.exclusive(wait, log=logger):
        return _export_alone(files, destination, ledger, retries, backoff, progress, after_each, give_up_after, verify)


def _export_alone(
    files: Iterable[str | os.PathLike],
    destination: Destination,
    ledger: SendLedger,
    retries: int,
    backoff: float,
    progress: bool,
    after_each: Callable[[ExportRow], None] | None,
    give_up_after: int,
    verify: bool,
) -> ExportReport:
    """:func:`export_files` while holding the ledger alone: read the headers, decide what to send (asking
    the destination with ``verify``), send it, and confirm."""
    start = time.perf_counter()
    retries = max(0, int(retries))
    report = ExportReport(destination.label, verified=bool(verify))
    candidates = _candidates(files, ledger, report, verify)
    held: dict[tuple[str, str], set[str]] = {}
    if verify:
        candidates, held = _ask_destination(candidates, destination, retries, backoff, report)
        if report.verify_error:
            report.seconds = time.perf_counter() - start
            return report
    pending, notes = _to_send(candidates, held, ledger, report, verify)
    fatal = _send_pending(
        pending, notes, destination, ledger, report, retries, backoff, progress, after_each, give_up_after
    )
    if verify:
        _confirm(report, destination, ledger, candidates, held, retries, backoff, requery=fatal is None)
    report.seconds = time.perf_counter() - start
    return report


def _candidates(
    files: Iterable[str | os.PathLike], ledger: SendLedger, report: ExportReport, verify: bool
) -> list[tuple[Path, pydicom.Dataset, str]]:
    """The readable DICOM files, once per SOP Instance UID (unreadable ones and repeats become report rows)."""
    label = report.destination
    candidates: list[tuple[Path, pydicom.Dataset, str]] = []
    seen: dict[str, Path] = {}
    for path in map(Path, files):
        header = _header(path)
        if header is None or "SOPInstanceUID" not in header or "SOPClassUID" not in header:
            if path.suffix.lower() in (".dcm", ".dicom"):
                report.rows.append(ExportRow(str(path), "", label, "failed", "", "not a readable DICOM file"))
            else:
                logger.info("skipping %s: not a DICOM file", path)
            continue
        uid = str(header.SOPInstanceUID)
        if uid in seen:
            in_ledger = not verify and ledger.is_sent(uid, label)
            reason = "in the send ledger" if in_ledger else f"same SOP Instance UID as {seen[uid]}"
            report.rows.append(ExportRow(str(path), uid, label, "already_sent", "", reason))
            continue
        seen[uid] = path
        candidates.append((path, header, uid))
    return candidates


def _ask_destination(
    candidates: list[tuple[Path, pydicom.Dataset, str]],
    destination: Destination,
    retries: int,
    backoff: float,
    report: ExportReport,
) -> tuple[list[tuple[Path, pydicom.Dataset, str]], dict[tuple[str, str], set[str]]]:
    """With ``verify``: the candidates that can be placed in a series, and what the destination holds of
    their series. When it cannot be asked, ``report.verify_error`` says why and every candidate fails."""
    label = destination.label
    unplaced = [(path, uid) for path, header, uid in candidates if _series_key(header) is None]
    for path, uid in unplaced:
        report.rows.append(
            ExportRow(
                str(path),
                uid,
                label,
                "failed",
                "",
                "cannot be verified: the file has no StudyInstanceUID / SeriesInstanceUID",
            )
        )
    candidates = [entry for entry in candidates if _series_key(entry[1]) is not None]
    report.expected = len(candidates)
    try:
        held = _held_by_destination(
            destination, [_series_key(header) for _p, header, _u in candidates], retries, backoff
        )
    except (PermanentSendError, TransientSendError) as error:
        report.verify_error = f"cannot ask which instances it holds: {error}"
        logger.error(
            "--verify: %s %s -- nothing was sent. Allow C-FIND (DIMSE) or QIDO-RS (DICOMweb) for us at "
            "the PACS, or export without --verify to trust the send ledger",
            label,
            report.verify_error,
        )
        for path, _, uid in candidates:
            report.rows.append(ExportRow(str(path), uid, label, "failed", "", f"not verified: {report.verify_error}"))
        return candidates, {}
    return candidates, held


def _to_send(
    candidates: list[tuple[Path, pydicom.Dataset, str]],
    held: dict[tuple[str, str], set[str]],
    ledger: SendLedger,
    report: ExportReport,
    verify: bool,
) -> tuple[list[tuple[Path, pydicom.Dataset]], dict[str, str]]:
    """What to send: without ``verify`` what the ledger lacks; with it what the destination lacks (the
    ledger is brought up to date with what it holds). Also, per UID, why an instance is sent again."""
    label = report.destination
    pending: list[tuple[Path, pydicom.Dataset]] = []
    notes: dict[str, str] = {}
    confirmed_before, found, lost = [], [], []
    for path, header, uid in candidates:
        in_ledger = ledger.is_sent(uid, label)
        if not verify:
            if in_ledger:
                report.rows.append(ExportRow(str(path), uid, label, "already_sent", "", "in the send ledger"))
            else:
                pending.append((path, header))
        elif uid in held.get(_series_key(header), ()):
            if in_ledger:
                confirmed_before.append(uid)
                message = "in the send ledger; confirmed in the PACS"
            else:
                found.append((uid, path))
                message = "found in the PACS by query (added to the send ledger)"
            report.rows.append(ExportRow(str(path), uid, label, "already_sent", "", message))
        else:
            if in_ledger:
                lost.append(uid)
                notes[uid] = "resent: in the send ledger but missing from the PACS"
            pending.append((path, header))
    if verify:
        ledger.mark_verified(confirmed_before, label)
        ledger.record_found(found, label)
        ledger.mark_lost(lost, label)
        report.lost = len(lost)
        if lost:
            logger.warning("%s lacks %d instance(s) the send ledger had as sent: sending them again", label, len(lost))
    return pending, notes


def _send_pending(
    pending: list[tuple[Path, pydicom.Dataset]],
    notes: dict[str, str],
    destination: Destination,
    ledger: SendLedger,
    report: ExportReport,
    retries: int,
    backoff: float,
    progress: bool,
    after_each: Callable[[ExportRow], None] | None,
    give_up_after: int,
) -> str | None:
    """Send ``pending`` in order over one association (or session), recording each confirmed instance in the
    ledger at once; returns why the export stopped early (None when it did not)."""
    label = destination.label
    sender, fatal = None, None
    no_answer = 0  # instances in a row that got no answer even after the retries
    try:
        if pending:
            contexts = [
                (str(header.SOPClassUID), str(getattr(header.file_meta, "TransferSyntaxUID", "1.2.840.10008.1.2.1")))
                for _path, header in pending
            ]
            try:
                sender = make_sender(destination, contexts)
            except PermanentSendError as error:
                fatal = str(error)
                logger.error("%s", error)
        for path, header in tqdm(pending, desc=f"export to {label}", unit="instance", disable=not progress or None):
            uid = str(header.SOPInstanceUID)
            if fatal is not None:
                row = ExportRow(str(path), uid, label, "failed", "", fatal)
            else:
                result, fatal = _send_one(sender, path, retries, backoff)
                no_answer = no_answer + 1 if isinstance(result, _NoAnswer) else 0
                if fatal is None and give_up_after and no_answer >= give_up_after:
                    fatal = f"not tried: {no_answer} instances in a row got no answer ({result.message})"
                    logger.error("%s -- export stopped", fatal)
                row = _row_of(path, uid, label, result, notes, ledger, fatal)
            report.rows.append(row)
            if after_each is not None:
                after_each(row)
    finally:
        if sender is not None:
            sender.close()
    return fatal


def _send_one(sender: Sender, path: Path, retries: int, backoff: float) -> tuple[SendResult, str | None]:
    """One instance with retries; a permanent failure or an unreachable peer stops the export (the message)."""
    try:
        return _send_with_retries(sender, path, retries, backoff), None
    except PermanentSendError as error:
        fatal = str(error)
    except UnreachableError as error:
        fatal = f"{error} (after {retries} retries; run the export again later: it resumes)"
    logger.error("%s -- export stopped", fatal)
    return SendResult("failed", -1, fatal), fatal


def _row_of(
    path: Path, uid: str, label: str, result: SendResult, notes: dict[str, str], ledger: SendLedger, fatal: str | None
) -> ExportRow:
    """The report row of one sent instance; a stored one is recorded in the ledger."""
    message = result.message
    if uid in notes:
        message = notes[uid] + (f"; {message}" if message else "") if result.stored else message
    row = ExportRow(str(path), uid, label, result.result, result.status_hex, message)
    if result.stored:
        ledger.record(uid, label, result.status, path)
        if result.result == "warning":
            logger.warning("%s (%s): %s %s", path, uid, row.status, row.message)
    elif fatal is None:
        logger.error("%s (%s): failed %s %s", path, uid, row.status or "(no status)", row.message)
    return row


def _series_key(header: pydicom.Dataset) -> tuple[str, str] | None:
    """(StudyInstanceUID, SeriesInstanceUID) of a file, or None when it lacks one."""
    study, series = header.get("StudyInstanceUID"), header.get("SeriesInstanceUID")
    return (str(study), str(series)) if study and series else None


def _held_by_destination(
    destination: Destination, series: Iterable[tuple[str, str]], retries: int, backoff: float
) -> dict[tuple[str, str], set[str]]:
    """For each (study, series): the SOP Instance UIDs the destination holds (one query each, retried when transient).

    Raises :class:`QueryError` (or another :class:`PermanentSendError`) when the destination refuses
    to answer, :class:`TransientSendError` when it still does not answer after the retries.
    """
    held: dict[tuple[str, str], set[str]] = {}
    querier = make_querier(destination)
    try:
        for key in dict.fromkeys(series):
            held[key] = set(
                retry(
                    lambda key=key: querier.find_instances(*key),
                    retries,
                    backoff,
                    TransientSendError,
                    lambda error, delay: logger.warning("%s; retrying the query in %.1f s", error, delay),
                )
            )
    finally:
        querier.close()
    return held


def _confirm(
    report: ExportReport,
    destination: Destination,
    ledger: SendLedger,
    candidates: list[tuple[Path, pydicom.Dataset, str]],
    held: dict[tuple[str, str], set[str]],
    retries: int,
    backoff: float,
    requery: bool,
) -> None:
    """After sending: query the series that got instances again and count what the destination lists."""
    rows = {row.sop_instance_uid: row for row in report.rows if row.result in ("sent", "warning")}
    if requery and rows:
        changed = [_series_key(header) for _path, header, uid in candidates if uid in rows]
        try:
            held = {**held, **_held_by_destination(destination, changed, retries, backoff)}
        except (PermanentSendError, TransientSendError) as error:
            report.verify_error = f"the instances sent now could not be confirmed: {error}"
            logger.error("--verify: %s", report.verify_error)
            rows = {}
    listed = {uid for _path, header, uid in candidates if uid in held.get(_series_key(header), ())}
    report.confirmed = len(listed)
    ledger.mark_verified([uid for uid in rows if uid in listed], report.destination)
    unlisted = [uid for uid in rows if uid not in listed] if requery else []
    for uid in unlisted:
        row = rows[uid]
        row.message = "; ".join(filter(None, [row.message, "stored, but the PACS's query does not list it"]))
    if unlisted:
        logger.error("%s confirmed %d instance(s) but does not list them when asked", report.destination, len(unlisted))


def export_series(
    sources: Sequence[str | os.PathLike] | str | os.PathLike,
    destination: Destination,
    ledger: SendLedger,
    **options,
) -> ExportReport:
    """Send the DICOM files of ``sources`` (folders searched recursively, files, inference ``frames.csv`` logs).

    ``options`` are those of :func:`export_files` (``retries``, ``backoff``, ``progress``, ``after_each``).
    """
    if isinstance(sources, (str, os.PathLike)):
        sources = [sources]
    return export_files(collect_dicom_files(sources), destination, ledger, **options)


class _NoAnswer(SendResult):
    """A failure after the last retry of a transient error: the peer never answered for this instance."""


def _send_with_retries(sender: Sender, path: Path, retries: int, backoff: float) -> SendResult:
    """Send one file; transient failures are retried ``retries`` times after ``backoff``, twice that, ... s.

    Raises :class:`UnreachableError` when the peer still cannot be reached after the last retry.
    """
    try:
        dataset = pydicom.dcmread(path)
    except (InvalidDicomError, EOFError, OSError, ValueError) as error:
        return SendResult("failed", -1, f"cannot read the file: {error}")
    try:
        return retry(
            lambda: sender.send(dataset),
            retries,
            backoff,
            TransientSendError,
            lambda error, delay: logger.warning("%s; retrying in %.1f s", error, delay),
        )
    except UnreachableError:
        raise
    except TransientSendError as error:
        return _NoAnswer("failed", -1, f"{error} (after {retries} retries)")

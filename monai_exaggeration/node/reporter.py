"""The node's second stage, in its own process: captions, report, and the send to the destination.

The explaining thread (:mod:`.worker`) hands each job whose series is written to this process, so
that the pure-Python work here (highdicom, pydicom, the exporter) runs beside the next explanation
instead of competing with it for the interpreter lock. Inside, one thread writes a job's captions
and report while another sends the previous job. For one job, in ``work_dir/jobs/<job id>/``:

1. the presentation state with the captions, the TID 1500 report (with the CTR the first stage
   measured) and the burned-in copies, as set in ``outputs``;
2. everything is sent with the exporter (:func:`~monai_exaggeration.export.export_files`) and the
   node's send ledger (``work_dir/export_ledger.sqlite``); the job is then done, its spool file
   removed (and the job folder, unless ``keep_results``), and one line is logged.

A failure is recorded in the queue (retried with back-off, parked after ``max_attempts``). The
process is forked before the parent loads its models, ignores SIGTERM/SIGINT (the parent stops it
once its last job is handed over) and is killed by the kernel if the parent dies.
"""

from __future__ import annotations

import ctypes
import importlib
import json
import logging
import queue as queue_module
import shutil
import signal
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from monai_exaggeration.node.config import NodeConfig
from monai_exaggeration.node.queue import Job, JobQueue

if TYPE_CHECKING:
    from monai_exaggeration.metrics.ctr import CtrMeasurement

__all__ = ["Reporter", "ctr_values", "frame_ctr", "record_failure", "reporter_main"]

logger = logging.getLogger("monai_exaggeration.node")


def record_failure(queue: JobQueue, config: NodeConfig, job: Job, reason: str, permanent: bool) -> str:
    """Record a failed attempt of ``job`` (retry later, or park) and log it; returns the new state."""
    limits = config.queue
    state = queue.fail(job.id, reason, limits.max_attempts, limits.backoff_s, limits.max_backoff_s, permanent)
    if state == "parked":
        logger.error(
            "job %d parked after %d attempt(s): %s: %s -- fix the cause, then `serve-dicom requeue --config ...`",
            job.id,
            job.attempts,
            job.sop_instance_uid,
            reason,
        )
    else:
        retry = queue.get(job.id).next_try - time.time()
        logger.warning(
            "job %d failed (attempt %d of %d, retry in %.0f s): %s: %s",
            job.id,
            job.attempts,
            limits.max_attempts,
            max(0.0, retry),
            job.sop_instance_uid,
            reason,
        )
    return state


def frame_ctr(segmenter, frames: np.ndarray) -> list[CtrMeasurement | None]:
    """Cardiothoracic ratio of each frame with its two widths as lines on the frame (grey levels K x rows x
    columns; one at a time: frames may be large); None where the heart or the lungs are not found."""
    import torch

    from monai_exaggeration.transforms import to_model_range

    levels = np.float32(np.iinfo(frames.dtype).max)
    values = []
    for frame in frames:
        unit = torch.from_numpy(frame.astype(np.float32) / levels)
        values.append(segmenter.ctr_measurements(to_model_range(unit)[None, None])[0])
    return values


def ctr_values(measured: list[CtrMeasurement | None]) -> list[float]:
    """The ratios of :func:`frame_ctr`'s measurements (NaN where there is none)."""
    return [float("nan") if value is None else value.ratio for value in measured]


def _die_with_parent() -> None:
    """Linux: SIGKILL this process when its parent dies (a killed node must not leave a half-run job behind)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


@dataclass
class _Prepared:
    """A job whose captions and report are written, ready to be sent."""

    job: Job
    out: Path
    rows: pd.DataFrame
    files: list[Path]
    ctr: list[CtrMeasurement | None] | None
    explain_seconds: float
    started: float
    prepare_seconds: float


class Reporter:
    """The second stage: :meth:`prepare` (captions, report) then :meth:`send` (export; the job is done).

    :func:`reporter_main` runs them in two threads, so the next job's report is written while the
    previous job's instances travel to the PACS (the send mostly waits for the PACS's answers).
    """

    def __init__(self, config: NodeConfig, destination, queue: JobQueue, ledger=None) -> None:
        self.config = config
        self.destination = destination
        self.queue = queue
        self.ledger = ledger

    def derived(
        self, out: Path, rows: pd.DataFrame, finding: str, source: str, ctr: list[CtrMeasurement | None] | None
    ) -> list[Path]:
        """The files to send: the series first, then the presentation state, the report, the burned-in copies."""
        from monai_exaggeration.dicom.presentation import write_burned_in_series, write_presentation_state
        from monai_exaggeration.dicom.report import write_report

        outputs = self.config.outputs
        files = [Path(path) for path in rows["output_file"]]
        if outputs.presentation_state:
            files.append(write_presentation_state(rows, out / "dicom", finding))
        if outputs.report:
            files.append(write_report(rows, out / "dicom", finding, source, ctr))
        if outputs.burned_in:
            files.extend(write_burned_in_series(rows, out / "dicom", finding))
        return files

    def prepare(
        self,
        job: Job,
        finding: str,
        ctr: list[CtrMeasurement | None] | None,
        explain_seconds: float,
        started: float,
        frame_rows: list[dict],
    ) -> _Prepared | None:
        """Write the captions and the report of an explained job from its frames' rows (as the worker made them);
        None when that failed (recorded in the queue)."""
        from monai_exaggeration.dicom.presentation import series_rows

        out = self.config.work_dir / "jobs" / f"{job.id:08d}"
        start = time.perf_counter()
        try:
            rows = series_rows(pd.DataFrame(frame_rows))
            files = self.derived(out, rows, finding, job.spool_file, ctr)
        except Exception as error:  # noqa: BLE001 - one bad job must not stop the node; retried later
            logger.debug("job %d", job.id, exc_info=True)
            record_failure(self.queue, self.config, job, f"{type(error).__name__}: {error}", permanent=False)
            return None
        return _Prepared(job, out, rows, files, ctr, explain_seconds, started, time.perf_counter() - start)

    def run(
        self,
        job: Job,
        finding: str,
        ctr: list[CtrMeasurement | None] | None,
        explain_seconds: float,
        started: float,
        frame_rows: list[dict],
    ) -> str:
        """:meth:`prepare` and :meth:`send` one job in this thread; returns its new state (done, failed or parked)."""
        prepared = self.prepare(job, finding, ctr, explain_seconds, started, frame_rows)
        return self.send(prepared) if prepared is not None else self.queue.get(job.id).state

    def send(self, prepared: _Prepared) -> str:
        """Send a prepared job; mark it done (and clean up) or record the failure. Returns the new state."""
        from monai_exaggeration.export import export_files

        job, out, outputs = prepared.job, prepared.out, self.config.outputs
        start = time.perf_counter()
        try:
            report = export_files(
                prepared.files,
                self.destination,
                self.ledger,
                retries=outputs.export_retries,
                backoff=outputs.export_backoff_s,
                progress=False,
            )
            report.write_csv(out / "export_report.csv")
        except Exception as error:  # noqa: BLE001 - retried later
            logger.debug("job %d", job.id, exc_info=True)
            return record_failure(self.queue, self.config, job, f"{type(error).__name__}: {error}", permanent=False)
        if report.exit_code:
            failed = [row for row in report.rows if row.result == "failed"]
            status = f"{failed[0].status} " if failed[0].status else ""
            return record_failure(
                self.queue,
                self.config,
                job,
                f"{len(failed)} of {len(report.rows)} instances did not "
                f"reach {self.destination.label}: {status}{failed[0].message}",
                permanent=False,
            )
        rows = prepared.rows
        ctr = None if prepared.ctr is None else ctr_values(prepared.ctr)
        finite_ctr = [value for value in ctr or [] if np.isfinite(value)]
        result = {
            "series_instance_uid": str(rows["series_instance_uid"].iloc[0]),
            "study_instance_uid": str(rows["study_instance_uid"].iloc[0]),
            "frames": len(rows),
            "scores": [float(score) for score in rows["score"]],
            "ctr": [float(value) if np.isfinite(value) else None for value in ctr] if ctr is not None else [],
            "instances": len(report.rows),
            "sent": report.count("sent") + report.count("warning"),
            "files": [str(path) for path in prepared.files] if outputs.keep_results else [],  # removed otherwise
            "explain_seconds": round(prepared.explain_seconds, 3),
            "report_seconds": round(prepared.prepare_seconds, 3),
            "send_seconds": round(time.perf_counter() - start, 3),
            "seconds": round(time.time() - prepared.started, 3),
        }
        self.queue.finish(job.id, json.dumps(result))
        Path(job.spool_file).unlink(missing_ok=True)
        if not outputs.keep_results:
            shutil.rmtree(out, ignore_errors=True)
        logger.info(
            "job %d done: %s (%s) -> series %s: %d frames, scores %.2f..%.2f%s; %d instances to %s (%d sent now) "
            "in %.1f s (explain %.1f s, report %.1f s, send %.1f s)",
            job.id,
            job.sop_instance_uid,
            job.calling_ae or "?",
            result["series_instance_uid"],
            result["frames"],
            result["scores"][0],
            result["scores"][-1],
            f", CTR {min(finite_ctr):.2f}..{max(finite_ctr):.2f}" if finite_ctr else "",
            result["instances"],
            self.destination.label,
            result["sent"],
            result["seconds"],
            result["explain_seconds"],
            result["report_seconds"],
            result["send_seconds"],
        )
        return "done"


def _send_loop(reporter: Reporter, prepared: queue_module.Queue) -> None:
    """The sending thread: its own send-ledger connection (SQLite connections stay in their thread)."""
    from monai_exaggeration.export import SendLedger

    try:
        with SendLedger(reporter.config.work_dir / "export_ledger.sqlite") as ledger:
            reporter.ledger = ledger
            while (item := prepared.get()) is not None:
                reporter.send(item)
    except BaseException as error:  # noqa: BLE001 - the process then ends and the node stops (exit status 1)
        logger.exception("the sending thread stopped: %s", error)


def reporter_main(config: NodeConfig, destination, jobs, status) -> None:
    """Entry point of the reporter process: say ``("ready",)`` (or ``("error", message)``) on ``status``,
    then run the jobs ``(job id, finding, CTR values, explain seconds, start time)`` arriving on ``jobs`` until None."""
    _die_with_parent()
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the parent stops us when it has handed over its last job
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.getLogger("highdicom").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=r'The string ".*" is unlikely to represent the intended person name')
    try:
        from monai_exaggeration.export import SendLedger

        for module in ("monai_exaggeration.dicom.presentation", "monai_exaggeration.dicom.report"):
            importlib.import_module(module)  # now, not during the first job

        queue = JobQueue(config.work_dir / "queue.sqlite")
        SendLedger(config.work_dir / "export_ledger.sqlite").close()  # a damaged ledger stops the node at start
    except Exception as error:  # noqa: BLE001 - reported to the parent, which stops with the message
        status.put(("error", " ".join(str(error).split())))
        return
    status.put(("ready",))
    reporter = Reporter(config, destination, queue)
    prepared: queue_module.Queue = queue_module.Queue(maxsize=1)
    sender = threading.Thread(target=_send_loop, args=(reporter, prepared), name="exaggeration-send")
    sender.start()
    try:
        while sender.is_alive():
            try:
                item = jobs.get(timeout=1.0)
            except queue_module.Empty:
                continue
            if item is None:
                break
            job_id, finding, ctr, explain_seconds, started, frame_rows = item
            ready = reporter.prepare(queue.get(job_id), finding, ctr, explain_seconds, started, frame_rows)
            while ready is not None and sender.is_alive():
                try:
                    prepared.put(ready, timeout=1.0)
                    break
                except queue_module.Full:
                    continue
    finally:
        if sender.is_alive():
            prepared.put(None)
        sender.join()
        queue.close()

"""The node's worker: claims queued jobs one at a time, explains the spooled source, hands it on to be sent.

Two stages run side by side:

1. **explain** (a thread of the node's process, which holds the models): claim the next due job,
   run the bundle's inference on the spooled file (:class:`~monai_exaggeration.inference.ExaggerationInference`:
   ``explain`` then ``write``), writing the SC series under ``work_dir/jobs/<job id>/dicom/`` and
   the job's ``frames.csv``/``sources.csv``;
   and, when ``outputs.ctr``, the cardiothoracic ratio of every frame (the bundle's segmentation);
2. **report and send** (:mod:`.reporter`, a separate process): captions, TID 1500 report, export
   to the destination, and the job is done.

At most one explained job waits between the stages, so the next source is explained while the
previous one's results travel to the PACS. Deterministic UIDs make every step repeatable: a job
interrupted anywhere is run again from the start and the PACS receives the same instances (the
send ledger skips those it already confirmed). An input the inference cannot use is parked at
once; any other failure (the PACS unreachable, a rejected association) is retried with back-off and
parked after ``max_attempts``. Each job ends with one log line.
"""

from __future__ import annotations

import logging
import multiprocessing
import queue as queue_module
import threading
import time
from pathlib import Path

import pandas as pd

from monai_exaggeration.errors import find_cxr_input_error
from monai_exaggeration.inference import FRAME_COLUMNS, SOURCE_COLUMNS
from monai_exaggeration.node.config import NodeConfig
from monai_exaggeration.node.queue import Job, JobQueue
from monai_exaggeration.node.reporter import ctr_values, frame_ctr, record_failure, reporter_main
from monai_exaggeration.utils import write_csv_atomic

__all__ = ["JobFailure", "Worker"]

logger = logging.getLogger("monai_exaggeration.node")


class JobFailure(Exception):
    """A job could not be completed; ``permanent`` ones are parked without retries."""

    def __init__(self, reason: str, permanent: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.permanent = permanent


class Worker:
    """The two stages: :meth:`start_reporter` (fork it before loading models), then :meth:`start` with the runner."""

    def __init__(self, config: NodeConfig, queue: JobQueue | None = None, destination=None) -> None:
        self.config = config
        self.queue = queue
        self.destination = destination
        self.runner = None
        self.segmenter = None
        self.jobs_dir = config.work_dir / "jobs"
        self._stop_event = threading.Event()
        self._thread = threading.Thread(target=self._explain_loop, name="exaggeration-explain", daemon=True)
        self._context = multiprocessing.get_context("fork")
        self._jobs = self._context.Queue(maxsize=1)
        self._reporter = None
        self.current: Job | None = None
        self.error: BaseException | None = None

    def start_reporter(self) -> None:
        """Fork the report-and-send process (:meth:`wait_reporter` waits until it is ready).

        Called before this process loads its models or starts threads: forking a process with
        running threads or an OpenMP pool is unsafe.
        """
        status = self._context.Queue()
        self._reporter = self._context.Process(
            target=reporter_main, name="exaggeration-reporter", args=(self.config, self.destination, self._jobs, status)
        )
        self._reporter.start()
        self._status = status

    def wait_reporter(self, timeout: float = 600.0) -> None:
        """Wait for the reporter's ``ready``; raise ``RuntimeError`` with its reason when it could not start."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                answer = self._status.get(timeout=0.5)
                break
            except queue_module.Empty:
                if not self._reporter.is_alive() or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"the report-and-send process did not start (exit code {self._reporter.exitcode})"
                    ) from None
        if answer[0] != "ready":
            raise RuntimeError(f"the report-and-send process could not start: {answer[1]}")

    def start(self, runner, segmenter=None) -> Worker:
        """Start explaining with ``runner`` (prepared); ``segmenter``: the CTR instrument, or None."""
        self.runner = runner
        self.segmenter = segmenter
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop_event.set()

    def join(self, timeout: float | None = None) -> None:
        """Wait for the explaining thread, then for the reporter to finish the jobs it was given."""
        if self._thread.ident is not None:
            self._thread.join(timeout)
        elif self._reporter is not None:
            self._hand_over(None)
        if self._reporter is not None:
            self._reporter.join(timeout)
            if self._reporter.is_alive():
                self._reporter.kill()

    @property
    def exitcode(self) -> int | None:
        """The reporter process's exit code (None while it runs)."""
        return self._reporter.exitcode if self._reporter is not None else None

    def is_alive(self) -> bool:
        return self._thread.is_alive() and self._reporter is not None and self._reporter.is_alive()

    # ----------------------------------------------------------------------------------- stage 1

    def _explain_loop(self) -> None:
        try:
            while not self._stop_event.is_set():
                job = self.queue.claim()
                if job is None:
                    self._stop_event.wait(self.config.queue.poll_s)
                    continue
                self.current = job
                started = time.time()
                try:
                    explain_seconds, ctr, frame_rows = self.explain(job)
                except JobFailure as failure:
                    record_failure(self.queue, self.config, job, failure.reason, failure.permanent)
                    continue
                except Exception as error:  # noqa: BLE001 - one bad job must not stop the node
                    logger.debug("job %d", job.id, exc_info=True)
                    record_failure(self.queue, self.config, job, f"{type(error).__name__}: {error}", permanent=False)
                    continue
                finally:
                    self.current = None
                self._hand_over((job.id, self.runner.finding, ctr, explain_seconds, started, frame_rows))
        except BaseException as error:  # noqa: BLE001 - reported by the service, which stops the node
            logger.exception("the explaining thread stopped: %s", error)
            self.error = error
        finally:
            self._hand_over(None)  # the reporter finishes what it holds, then stops

    def _hand_over(self, item: tuple | None) -> None:
        """Give ``item`` to the reporter (waits while one job is already waiting; gives up if the reporter died:
        the job then stays running and is resumed at the next start)."""
        while self._reporter is not None and self._reporter.is_alive():
            try:
                self._jobs.put(item, timeout=1.0)
                return
            except queue_module.Full:
                continue

    def explain(self, job: Job) -> tuple[float, list | None, list[dict]]:
        """Explain the spooled source of ``job``, write its series and CSV logs and measure the CTR of its frames
        (``outputs.ctr``); returns the seconds taken, the CTR measurements with their widths (None when not
        measured) and the frames' log rows, which the reporter builds the captions and the report from (in memory, not read back)."""
        source = Path(job.spool_file)
        if not source.is_file():
            raise JobFailure(f"the spooled file {source} is missing", permanent=True)
        out = self.jobs_dir / f"{job.id:08d}"
        start = time.perf_counter()
        try:
            series = self.runner.explain(source)
        except Exception as error:  # noqa: BLE001 - input problems are permanent, the rest is retried
            input_error = find_cxr_input_error(error)
            if input_error is not None:
                raise JobFailure(f"{input_error.problem} -- {input_error.hint}".strip(" -"), permanent=True) from error
            raise
        frame_rows, source_row, _ = self.runner.write(series, out)
        source_row["seconds"] = round(time.perf_counter() - start, 3)
        write_csv_atomic(pd.DataFrame(frame_rows, columns=FRAME_COLUMNS), out / "frames.csv")
        write_csv_atomic(pd.DataFrame([source_row], columns=SOURCE_COLUMNS), out / "sources.csv")
        ctr = None
        if self.segmenter is not None:
            ctr = frame_ctr(self.segmenter, series.frames)
            frames_ctr = pd.DataFrame(frame_rows, columns=FRAME_COLUMNS).assign(ctr=ctr_values(ctr))
            write_csv_atomic(frames_ctr, out / "frames_ctr.csv")
        return time.perf_counter() - start, ctr, frame_rows

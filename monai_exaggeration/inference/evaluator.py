"""The inference's evaluator: the batch loop of :class:`~.engine.SeriesEngine` with the written outputs as its sink.

Each iteration takes a batch from :func:`~.dataset.source_loader`, makes the series of every readable
source in one go (:class:`~.inferer.SeriesInferer`), and hands each outcome, in input order, to a
background thread (:class:`~.logs.SeriesWriter`) that runs the ``writers`` (DICOM series, quick-looks:
:mod:`.writers`) and rewrites the CSV logs while the next batch is computed. ``engine.state.output``
of an iteration is the list of :class:`~.engine.Explained`, for any ``val_handlers``.

Outputs under ``output_dir``: ``dicom/<SeriesInstanceUID>/step_XXX.dcm``, ``quicklook/<name>/``,
``frames.csv`` (one row per frame), ``sources.csv`` (one row per source) and ``errors.csv`` (one row
per failed input). A failed input leaves none of its files. Re-runs into the same folder: the logs
list every series in it (earlier rows whose series folder still exists, then this run's, which
replace earlier rows of the same series); ``errors.csv`` describes this run only; temporaries of a
killed run are removed first; two inputs that would write the same series are reported, never
written twice. Under ``torchrun`` see :mod:`.sharding`.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from ignite.engine import Events

from monai_exaggeration.dicom import series_instance_uid
from monai_exaggeration.handlers import Progress
from monai_exaggeration.inference import sharding
from monai_exaggeration.inference.dataset import SourceDataset
from monai_exaggeration.inference.engine import Explained, SeriesEngine
from monai_exaggeration.inference.inferer import SeriesInferer
from monai_exaggeration.inference.logs import ERROR_COLUMNS, SeriesWriter, earlier_logs
from monai_exaggeration.inference.results import InferenceSummary
from monai_exaggeration.inference.writers import SeriesOutput, log_rows, write_outputs
from monai_exaggeration.utils import remove_stale_temporaries, write_csv_atomic

__all__ = ["InferenceEvaluator"]

logger = logging.getLogger("monai_exaggeration.inference")


class InferenceEvaluator(SeriesEngine):
    """Explain every source of ``dataset`` with ``inferer`` and write the outputs (module docstring).

    Args:
        inferer: the :class:`~.inferer.SeriesInferer` (or a zero-argument factory of one); its models
            are loaded here, and its ``batch_size``/``num_workers`` set the data loader's.
        dataset: a :class:`~.dataset.SourceDataset` (or a zero-argument factory: built after the models);
            it reads with the inferer's preprocessing, bound to the model size.
        writers: the writers every series goes through, in order (:mod:`.writers`; the first is the DICOM writer).
        output_dir: the run's folder (made absolute: the logs and the summary name absolute paths).
        finding: the finding the classifier scores, named in the series descriptions and logs (None: the
            explainer file's).
        val_handlers: extra ignite/MONAI handlers attached to this engine.
        device: the device of the engine state (the inferer's own device is used for the models).
    """

    def __init__(
        self,
        inferer: SeriesInferer | Callable[[], SeriesInferer],
        dataset: SourceDataset | Callable[[], SourceDataset],
        writers: Sequence[SeriesOutput],
        output_dir: str | os.PathLike,
        finding: str | None = None,
        val_handlers: Sequence | None = None,
        device: Any = None,
    ) -> None:
        inferer = inferer if isinstance(inferer, SeriesInferer) else inferer()
        dataset = dataset if isinstance(dataset, SourceDataset) else dataset()
        super().__init__(inferer, dataset, sinks=[self._submit], val_handlers=val_handlers, device=device)
        self.writers, self.finding = list(writers), finding or self.inferer.finding
        self.output_dir = Path(output_dir).expanduser().resolve()
        self.summary = InferenceSummary(output_dir=self.output_dir, num_inputs=len(self.dataset))
        self.writer: SeriesWriter | None = None
        self.add_event_handler(Events.STARTED, self._open)

    def _submit(self, explained: Explained) -> None:
        self.writer.submit(explained.path, explained.outcome, explained.started)

    def _open(self, _: Any = None) -> None:
        """Start the background writer of this run's series and logs."""
        rank, world = sharding.rank_and_world()
        out = self.output_dir
        for stale in remove_stale_temporaries(out, before=self._started_at):
            logger.info("removed %s, left by an interrupted run", stale)
        if rank == 0:
            (out / "errors.csv").unlink(missing_ok=True)  # errors.csv describes this run only
        self.progress = Progress(len(self.dataset), "exaggeration series", unit="image", log=logger)
        self.writer = SeriesWriter(
            write=self._write,
            series_uid=lambda result: series_instance_uid(result.source, result.meta, self.inferer.model_version),
            logs=sharding.log_paths(out, rank, world),
            earlier=earlier_logs(out) if world == 1 else None,
            on_done=self._done,
            max_pending=2 * self.batch_size,
        )
        inferer = self.inferer
        logger.info(
            "%sexplaining %d input(s) with %s on %s: bins %s, %s resolution, %d-bit, %d source(s) per batch -> %s",
            f"rank {rank} of {world}: " if world > 1 else "",
            len(self.dataset),
            inferer.model_version,
            inferer.device,
            inferer.bins,
            inferer.resolution,
            inferer.bits,
            self.batch_size,
            out,
        )

    def _write(self, result: Any) -> tuple[list[dict], dict]:
        record = write_outputs(result, self.output_dir, self.writers, self.inferer, self.finding)
        return log_rows(record, self.inferer.model_version, self.inferer.num_bins)

    def _done(self, source_row: dict | None) -> None:
        if source_row is not None:
            self.summary.add(source_row)
        self.progress.update(1)

    def run(self) -> InferenceSummary:  # type: ignore[override]
        """Explain and write every source; return the run's summary (the whole run's on rank 0 under torchrun)."""
        start, self._started_at = time.perf_counter(), time.time()
        rank, world = sharding.rank_and_world()
        try:
            if len(self.dataset):
                super().run()
            else:
                self._open()
        finally:
            if self.writer is not None:
                self.writer.close()
                self.progress.close()
        self.summary.failures = self.writer.failures
        if world > 1 and not self.summary.failures:  # every rank leaves a partial error log for the merge
            write_csv_atomic(
                pd.DataFrame(columns=ERROR_COLUMNS), sharding.log_paths(self.output_dir, rank, world)["errors"]
            )
        self.summary.seconds = time.perf_counter() - start
        self.summary.stage_seconds = self.inferer.timer.totals()
        logger.info("time per stage (s): %s", {k: round(v, 2) for k, v in self.summary.stage_seconds.items()})
        if world > 1:
            return sharding.merge_shards(self.summary, self.dataset.all_records, self.output_dir, start)
        return self.summary

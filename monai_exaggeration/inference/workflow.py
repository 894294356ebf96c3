"""The inference workflow: chest X-rays in, DICOM Secondary Capture series + CSV logs + quick-looks out.

The parts follow MONAI's inference pattern, and ``inference.json`` wires them the same way:
preprocessing and dataset (:mod:`.dataset`) -> the inferer that makes a series
(:class:`~.inferer.SeriesInferer`) -> the writers (:mod:`.writers`: DICOM series, quick-looks; the
CSV logs; optional PACS export) -> the evaluator that runs it all (:class:`~.evaluator.InferenceEvaluator`),
sharded under ``torchrun`` (:mod:`.sharding`). :func:`run_and_exit` is the bundle's entry point.

:class:`ExaggerationInference` puts the same parts together for Python use (the evaluation, the
DICOM node, scripts): one object that explains a file, writes a series, or runs a whole input.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from monai_exaggeration.dicom.secondary_capture import DEFAULT_SERIES_NUMBER
from monai_exaggeration.inference import sharding
from monai_exaggeration.inference.dataset import SourceDataset
from monai_exaggeration.inference.evaluator import InferenceEvaluator
from monai_exaggeration.inference.inferer import SeriesInferer
from monai_exaggeration.inference.results import InferenceSummary, SeriesResult
from monai_exaggeration.inference.writers import DicomSeriesWriter, PacsExport, QuickLookWriter, log_rows, write_outputs

__all__ = ["ExaggerationInference", "run_and_exit"]

logger = logging.getLogger("monai_exaggeration.inference")


class ExaggerationInference:
    """Explain chest X-rays: a :class:`~.inferer.SeriesInferer` plus the writers of its outputs.

    ``inferer`` is a :class:`SeriesInferer`, or a factory of one (called with ``settings``, so that
    one config can build it for another ``method``); without it, ``generator``, ``classifier`` and
    ``settings`` (every :class:`SeriesInferer` argument: ``explainer_weights``, ``num_bins``,
    ``resolution``, ``bits``, ``method``, ...) build it. ``writers`` replaces the default writers
    (:class:`~.writers.DicomSeriesWriter` with ``series_number`` and ``burned_in_annotation_free``,
    then :class:`~.writers.QuickLookWriter` when ``quicklook``, ``gif_frame_ms`` per GIF frame).
    ``finding`` names what the classifier scores in the descriptions and logs (None: the finding the
    explainer file records, :mod:`monai_exaggeration.findings`).
    """

    def __init__(
        self,
        generator: Any = None,
        classifier: Any = None,
        *,
        inferer: SeriesInferer | Callable[..., SeriesInferer] | None = None,
        writers: Sequence[Any] | None = None,
        finding: str | None = None,
        quicklook: bool = True,
        gif_frame_ms: int = 400,
        series_number: int = DEFAULT_SERIES_NUMBER,
        burned_in_annotation_free: bool = False,
        **settings: Any,
    ) -> None:
        if isinstance(inferer, SeriesInferer):
            self.inferer = inferer
        elif inferer is not None:
            self.inferer = inferer(**settings)
        else:
            if classifier is None:
                raise ValueError("the inference needs a classifier (the black box whose decisions it explains)")
            self.inferer = SeriesInferer.from_settings(generator, classifier, **settings)
        if writers is None:
            writers = [
                DicomSeriesWriter(series_number, burned_in_annotation_free),
                QuickLookWriter(quicklook, gif_frame_ms),
            ]
        self.writers = list(writers)
        self._finding = finding

    def __getattr__(self, name: str) -> Any:
        """The inferer's settings and models (``num_bins``, ``bins``, ``classifier``, ``device``, ...)."""
        if name == "inferer":
            raise AttributeError(name)
        return getattr(self.inferer, name)

    @property
    def finding(self) -> str:
        """The finding named in the descriptions and logs: the setting, else the explainer file's."""
        return self._finding or self.inferer.prepare().finding

    @property
    def quicklook(self) -> bool:
        """Whether the quick-looks are written."""
        return any(isinstance(w, QuickLookWriter) and w.enabled for w in self.writers)

    def prepare(self) -> ExaggerationInference:
        """Load the models (idempotent); bad weights or settings raise ``FileNotFoundError``/``ValueError``."""
        self.inferer.prepare()
        return self

    def explain(self, path: str | os.PathLike) -> SeriesResult:
        """The series of one source file (nothing written). Input problems raise ``CXRInputError``."""
        return self.inferer.explain(path)

    def explain_loaded(self, items: Sequence[tuple[str, Any, Any]]) -> list[SeriesResult | Exception]:
        """The series of several loaded sources ``(path, source, model input)`` (see :meth:`SeriesInferer.explain_loaded`)."""
        return self.inferer.explain_loaded(items)

    def write(self, result: SeriesResult, output_dir: str | os.PathLike) -> tuple[list[dict], dict, list[Path]]:
        """Write one series; return its ``frames.csv`` rows, its ``sources.csv`` row and the files written.

        On any error every file written here is removed again before the error propagates.
        """
        self.prepare()
        record = write_outputs(result, Path(output_dir), self.writers, self.inferer, self.finding)
        frame_rows, source_row = log_rows(record, self.inferer.model_version, self.inferer.num_bins)
        return frame_rows, source_row, record.files

    def evaluator(
        self, input: Any, output_dir: str | os.PathLike, val_handlers: Sequence | None = None
    ) -> InferenceEvaluator:
        """The MONAI evaluator that explains every image of ``input`` into ``output_dir``."""
        self.prepare()
        dataset = SourceDataset(input, self.inferer.reading)
        return InferenceEvaluator(self.inferer, dataset, self.writers, output_dir, self.finding, val_handlers)

    def run(self, input: str | os.PathLike | None, output_dir: str | os.PathLike) -> InferenceSummary:
        """Explain every image of ``input`` (file, folder or CSV manifest; default: RG1_UNCR.dcm).

        Raises ``FileNotFoundError`` when the input does not exist or holds no candidate files;
        per-file problems are written to ``errors.csv`` instead. Under ``torchrun`` the inputs are
        sharded and rank 0 returns the whole run's summary (:mod:`.sharding`).
        """
        created_group = sharding.join_process_group()
        try:
            return self.evaluator(input, output_dir).run()
        finally:
            if created_group:
                sharding.leave_process_group()


def run_and_exit(
    evaluator: InferenceEvaluator | ExaggerationInference | Callable[[], Any],
    input: Any = None,
    output_dir: str | os.PathLike | None = None,
    export_destination: Any = None,
) -> InferenceSummary:
    """Bundle entry point: run, optionally export, print the summary, and exit non-zero on problems.

    ``evaluator`` is a :class:`InferenceEvaluator` (or a zero-argument factory of one: ``"_mode_":
    "callable"`` in the config, so that bad settings are reported here as a message rather than as
    a config-instantiation traceback), or an :class:`ExaggerationInference` (or factory) run on
    ``input`` into ``output_dir``. ``export_destination`` (a
    :class:`~monai_exaggeration.export.Destination`, or a factory returning one or None) sends every
    written series to that PACS afterwards (ledger and report in the output folder).
    Exit status 2 when the input, the weights or the settings are unusable (nothing is written),
    1 when some inputs failed or did not reach the PACS (the others are written), else the summary
    is returned. Under ``torchrun`` rank 0 prints the summary of the whole run and does the export;
    each rank exits with the status of what it did.
    """
    from monai_exaggeration.export import DestinationError

    created_group = sharding.join_process_group()  # before the models are loaded: it selects this rank's GPU
    try:
        try:
            built = evaluator if isinstance(evaluator, (InferenceEvaluator, ExaggerationInference)) else evaluator()
            destination = export_destination() if callable(export_destination) else export_destination
            if isinstance(built, ExaggerationInference):
                built = built.evaluator(input, output_dir)
            summary = built.run()
        except (FileNotFoundError, ValueError, DestinationError) as error:
            logger.error("%s", error)
            raise SystemExit(2) from None
        rank, world = sharding.rank_and_world()
        if rank == 0:
            print(summary.describe(), flush=True)
        else:
            logger.info(
                "rank %d of %d: %d series written, %d failed; rank 0 prints the run's summary",
                rank,
                world,
                summary.num_series,
                len(summary.failures),
            )
        status = summary.exit_code
        if rank == 0 and destination is not None and summary.num_files:
            status = max(status, PacsExport(destination)(summary))
        if status:
            raise SystemExit(status)
        return summary
    finally:
        if created_group:
            sharding.leave_process_group()

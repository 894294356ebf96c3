"""Inference: exaggeration series of chest X-rays as DICOM Secondary Capture, CSV logs and quick-looks.

MONAI's inference pattern (see :mod:`.workflow`): :mod:`.dataset` (preprocessing, dataset, loader) ->
:mod:`.inferer` (:class:`SeriesInferer`) -> :mod:`.writers` (DICOM, quick-looks, logs, PACS export) ->
:mod:`.engine` (:class:`SeriesEngine`, the one batch loop) -> :mod:`.evaluator` (:class:`InferenceEvaluator`), sharded under torchrun by :mod:`.sharding`.
"""

from monai_exaggeration.inference.dataset import SourceDataset, SourcePreprocessing, source_loader
from monai_exaggeration.inference.engine import Explained, SeriesEngine, SeriesSink
from monai_exaggeration.inference.evaluator import InferenceEvaluator
from monai_exaggeration.inference.frames import RESOLUTIONS, full_resolution_frames, select_bins, to_source_grid
from monai_exaggeration.inference.inferer import SeriesInferer, file_sha256
from monai_exaggeration.inference.logs import ERROR_COLUMNS, FRAME_COLUMNS, SOURCE_COLUMNS
from monai_exaggeration.inference.results import STAGES, InferenceSummary, SeriesResult
from monai_exaggeration.inference.workflow import ExaggerationInference, run_and_exit
from monai_exaggeration.inference.writers import DicomSeriesWriter, PacsExport, QuickLookWriter

__all__ = [
    "ERROR_COLUMNS",
    "FRAME_COLUMNS",
    "RESOLUTIONS",
    "SOURCE_COLUMNS",
    "STAGES",
    "DicomSeriesWriter",
    "ExaggerationInference",
    "Explained",
    "InferenceSummary",
    "PacsExport",
    "QuickLookWriter",
    "InferenceEvaluator",
    "SeriesEngine",
    "SeriesInferer",
    "SeriesResult",
    "SeriesSink",
    "SourceDataset",
    "SourcePreprocessing",
    "file_sha256",
    "full_resolution_frames",
    "run_and_exit",
    "select_bins",
    "source_loader",
    "to_source_grid",
]

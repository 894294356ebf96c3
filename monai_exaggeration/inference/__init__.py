"""Inference: exaggeration series of chest X-rays as DICOM Secondary Capture, CSV logs and quick-looks."""

from monai_exaggeration.inference.frames import RESOLUTIONS, full_resolution_frames, select_bins, to_source_grid
from monai_exaggeration.inference.workflow import (
    ERROR_COLUMNS,
    FRAME_COLUMNS,
    SOURCE_COLUMNS,
    STAGES,
    ExaggerationInference,
    InferenceSummary,
    SeriesResult,
    file_sha256,
    run_and_exit,
)

__all__ = [
    "ERROR_COLUMNS",
    "FRAME_COLUMNS",
    "RESOLUTIONS",
    "SOURCE_COLUMNS",
    "STAGES",
    "ExaggerationInference",
    "InferenceSummary",
    "SeriesResult",
    "file_sha256",
    "full_resolution_frames",
    "run_and_exit",
    "select_bins",
    "to_source_grid",
]

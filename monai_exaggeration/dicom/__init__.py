"""DICOM output: progressive-exaggeration series as Secondary Capture images (see DESIGN.md)."""

from monai_exaggeration.dicom.secondary_capture import (
    FrameInfo,
    SeriesInfo,
    build_instance,
    dciodvfy_errors,
    dciodvfy_report,
    derived_uid,
    quantise_frame,
    series_file_name,
    write_series,
)

__all__ = [
    "FrameInfo",
    "SeriesInfo",
    "build_instance",
    "dciodvfy_errors",
    "dciodvfy_report",
    "derived_uid",
    "quantise_frame",
    "series_file_name",
    "write_series",
]

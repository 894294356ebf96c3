"""Evaluation measures of exaggeration series."""

from monai_exaggeration.metrics.validity import SeriesValidity, series_validity

__all__ = ["SeriesValidity", "series_validity"]

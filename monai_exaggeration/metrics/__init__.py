"""Evaluation measures of exaggeration series."""

from monai_exaggeration.metrics.ctr import (
    CtrMeasurement,
    WidthLine,
    cardiothoracic_ratio,
    ctr_faithfulness,
    ctr_measurement,
    horizontal_extent,
    largest_component,
)
from monai_exaggeration.metrics.localisation import change_inside_outside, mass_inside, saliency_maps
from monai_exaggeration.metrics.realism import (
    encoder_features,
    frechet_distance,
    identity_rate,
    kernel_inception_distance,
    penultimate_features,
    view_retrieval_accuracy,
    write_view_retrieval,
)
from monai_exaggeration.metrics.validity import SeriesValidity, series_validity

__all__ = [
    "CtrMeasurement",
    "SeriesValidity",
    "WidthLine",
    "ctr_measurement",
    "cardiothoracic_ratio",
    "encoder_features",
    "view_retrieval_accuracy",
    "write_view_retrieval",
    "change_inside_outside",
    "ctr_faithfulness",
    "frechet_distance",
    "identity_rate",
    "kernel_inception_distance",
    "penultimate_features",
    "saliency_maps",
    "horizontal_extent",
    "largest_component",
    "mass_inside",
    "series_validity",
]

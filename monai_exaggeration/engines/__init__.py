"""Engines: the explainer's trainer, its validation evaluator, series generation, caches."""

from monai_exaggeration.engines.checkpoint import (
    SHIPPED_WEIGHTS,
    TrainingLock,
    TrainingLockedError,
    attach_resume,
    check_weight_names,
    latest_checkpoint,
)
from monai_exaggeration.engines.evaluator import (
    SeriesEvaluator,
    SeriesMontageLogger,
    SeriesValidityMetric,
    SeriesValidityReport,
    series_montage,
)
from monai_exaggeration.engines.posteriors import (
    classifier_fingerprint,
    compute_posteriors,
    with_source_posteriors,
)
from monai_exaggeration.engines.sampling import TARGET_SAMPLING, sample_target_bins
from monai_exaggeration.engines.series import (
    NORM_MODES,
    compose_series,
    generate_series,
    series_batch_statistics,
    transfer_frame,
)
from monai_exaggeration.engines.trainer import ExaggerationIterationEvents, ExaggerationTrainer, TrainingState

__all__ = [
    "ExaggerationIterationEvents",
    "ExaggerationTrainer",
    "NORM_MODES",
    "SHIPPED_WEIGHTS",
    "SeriesEvaluator",
    "SeriesMontageLogger",
    "SeriesValidityMetric",
    "SeriesValidityReport",
    "TARGET_SAMPLING",
    "TrainingLock",
    "TrainingLockedError",
    "TrainingState",
    "attach_resume",
    "check_weight_names",
    "latest_checkpoint",
    "classifier_fingerprint",
    "compute_posteriors",
    "compose_series",
    "generate_series",
    "sample_target_bins",
    "series_batch_statistics",
    "series_montage",
    "transfer_frame",
    "with_source_posteriors",
]

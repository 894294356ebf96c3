"""Engines: the explainer's trainer, its validation evaluator, checkpoints and the source-posterior cache.

Series operations (generation, composition) live in :mod:`monai_exaggeration.methods.series`.
"""

from monai_exaggeration.engines.checkpoint import (
    SHIPPED_WEIGHTS,
    TrainingLock,
    TrainingLockedError,
    attach_resume,
    check_weight_names,
    latest_checkpoint,
)
from monai_exaggeration.engines.evaluator import SeriesEvaluator, SeriesValidityMetric
from monai_exaggeration.engines.posteriors import compute_posteriors, with_source_posteriors
from monai_exaggeration.engines.sampling import TARGET_SAMPLING, sample_target_bins
from monai_exaggeration.engines.trainer import ExaggerationIterationEvents, ExaggerationTrainer, TrainingState

__all__ = [
    "ExaggerationIterationEvents",
    "ExaggerationTrainer",
    "SHIPPED_WEIGHTS",
    "SeriesEvaluator",
    "SeriesValidityMetric",
    "TARGET_SAMPLING",
    "TrainingLock",
    "TrainingLockedError",
    "TrainingState",
    "attach_resume",
    "check_weight_names",
    "latest_checkpoint",
    "compute_posteriors",
    "sample_target_bins",
    "with_source_posteriors",
]

"""Ignite handlers, by purpose: progress of long loops and of a training run (``progress``), the training
loss log's schedule (``loss_log``), the training log in iterations of the run (``training_log``), the validation series' montage (``montage``), a classifier evaluation's score table, metrics and ROC plot
(``score_table``) and a segmentation evaluation's CTR report (``ctr_report``).

Handlers that read an engine's output take an ``output_transform`` (MONAI's convention); those that
write files write them on the main process only (rank 0 under ``torchrun``).
"""

from monai_exaggeration.handlers.ctr_report import CTRReport
from monai_exaggeration.handlers.loss_log import log_filter, log_interval_for
from monai_exaggeration.handlers.montage import SeriesMontageLogger, series_montage
from monai_exaggeration.handlers.progress import Progress, TrainingProgress
from monai_exaggeration.handlers.score_table import ScoreTableWriter, binary_metrics
from monai_exaggeration.handlers.training_log import TrainingLog

__all__ = [
    "CTRReport",
    "Progress",
    "ScoreTableWriter",
    "SeriesMontageLogger",
    "TrainingLog",
    "TrainingProgress",
    "binary_metrics",
    "log_filter",
    "log_interval_for",
    "series_montage",
]

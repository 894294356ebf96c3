"""Validity of exaggeration series: does f(x_b) follow the bin centres?

A *series* is the classifier scores of the N frames generated for one query image with target
bins 0..N-1 (shape (S, N) for S queries). The measures are the papers' "compatibility" plot
(per-bin mean score vs. bin centre) and its summaries: per-bin MAE, flip rate and the median
Spearman rank correlation between bin index and score within each series.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from monai_exaggeration.binning import DECISION_THRESHOLD, centre_values

__all__ = ["SeriesValidity", "series_validity"]


@dataclass(frozen=True)
class SeriesValidity:
    """Summary of S series over N bins."""

    per_bin_mean: list[float]  # mean f(x_b) per bin b
    per_bin_mae: list[float]  # mean |f(x_b) - centre_b| per bin
    mae: float  # mean of per_bin_mae
    flip_rate: float  # share of series whose frames reach the class opposite to the source's
    median_spearman: float  # median over series of Spearman(bin, f(x_b)); a constant series counts 0
    monotone_rate: float  # share of series whose scores never decrease along the bins
    num_series: int

    @property
    def validity(self) -> float:
        """1 - MAE: higher is better (used to pick the best checkpoint)."""
        return 1.0 - self.mae

    def as_dict(self) -> dict:
        return asdict(self)


def series_validity(
    scores: np.ndarray,
    source_scores: np.ndarray,
    threshold: float = DECISION_THRESHOLD,
    bins: Sequence[int] | None = None,
    num_bins: int | None = None,
) -> SeriesValidity:
    """Validity measures of ``scores`` (S, K) given the source images' own scores ``source_scores`` (S,).

    Column k of ``scores`` targets bin ``bins[k]`` of ``num_bins`` (default: K frames of all K bins),
    whose centre comes from :func:`~monai_exaggeration.binning.centre_values`; a series of selected
    bins (``num_frames``, ``first_bin``/``last_bin``) is scored against its own bins' centres.
    """
    scores = np.asarray(scores, dtype=np.float64)
    source_scores = np.asarray(source_scores, dtype=np.float64).reshape(-1)
    if scores.ndim != 2 or scores.shape[0] != source_scores.shape[0] or scores.shape[1] < 2:
        raise ValueError(
            f"scores must be (S, N>=2) with S = len(source_scores); got {scores.shape}, {source_scores.shape}"
        )
    num_series, num_frames = scores.shape
    bins = list(range(num_frames)) if bins is None else [int(b) for b in bins]
    if len(bins) != num_frames:
        raise ValueError(f"{num_frames} frames per series but {len(bins)} bins")
    centres = centre_values(num_frames if num_bins is None else int(num_bins), bins)
    per_bin_mae = np.abs(scores - centres).mean(axis=0)
    source_positive = source_scores >= threshold
    reached_positive = (scores >= threshold).any(axis=1)
    reached_negative = (scores < threshold).any(axis=1)
    flipped = np.where(source_positive, reached_negative, reached_positive)
    from scipy.stats import spearmanr  # here, not at import: scipy.stats takes a second to import

    bins = np.asarray(bins)
    correlations = []
    for row in scores:
        rho = spearmanr(bins, row).statistic if np.ptp(row) > 0 else 0.0
        correlations.append(0.0 if np.isnan(rho) else float(rho))
    monotone = (np.diff(scores, axis=1) >= 0).all(axis=1)
    return SeriesValidity(
        per_bin_mean=scores.mean(axis=0).tolist(),
        per_bin_mae=per_bin_mae.tolist(),
        mae=float(per_bin_mae.mean()),
        flip_rate=float(flipped.mean()),
        median_spearman=float(np.median(correlations)),
        monotone_rate=float(monotone.mean()),
        num_series=num_series,
    )

"""Cardiothoracic ratio (CTR) from heart and lung masks.

CTR = maximal horizontal width of the heart / maximal horizontal width of the thorax, with the
thorax spanning from the outer edge of one lung to the outer edge of the other (the usual
radiological measurement on a PA film; CTR > 0.5 suggests cardiomegaly). Widths are counted in
pixel columns (``max - min + 1``). To be robust to small spurious components of a predicted
mask, only the largest connected component of the heart and of each lung is used, and components
smaller than ``min_fraction`` of the image are ignored altogether.

On the ground-truth masks of the shared wingspan-ctr set this reproduces the dataset's own
``ctr_ground_truth.csv`` to a mean absolute difference of 0.0012 (tested).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

__all__ = [
    "CtrMeasurement",
    "WidthLine",
    "cardiothoracic_ratio",
    "ctr_faithfulness",
    "ctr_measurement",
    "largest_component",
    "horizontal_extent",
]


@dataclass(frozen=True)
class WidthLine:
    """A measured width drawn as a horizontal line, in image coordinates where pixel (r, c) covers
    [c, c + 1) x [r, r + 1) (the DICOM SCOORD convention): from ``left`` (the leftmost column's left edge)
    to ``right`` (the rightmost column's right edge) at height ``row`` (the centre of the row where the
    structure itself is widest)."""

    row: float
    left: float
    right: float

    @property
    def width(self) -> float:
        return self.right - self.left

    def scaled(self, row_factor: float, column_factor: float) -> WidthLine:
        return WidthLine(self.row * row_factor, self.left * column_factor, self.right * column_factor)


@dataclass(frozen=True)
class CtrMeasurement:
    """A cardiothoracic ratio with the two widths it is the ratio of (``heart`` / ``thorax``)."""

    heart: WidthLine
    thorax: WidthLine

    @property
    def ratio(self) -> float:
        return self.heart.width / self.thorax.width

    def scaled(self, from_shape: tuple[int, int], to_shape: tuple[int, int]) -> CtrMeasurement:
        """The same measurement on an image of ``to_shape`` that was resized (stretched) to ``from_shape``."""
        rows, columns = to_shape[0] / from_shape[0], to_shape[1] / from_shape[1]
        return CtrMeasurement(self.heart.scaled(rows, columns), self.thorax.scaled(rows, columns))


def largest_component(mask: np.ndarray, min_fraction: float = 0.0) -> np.ndarray:
    """The largest 8-connected component of a boolean mask (empty if none reaches ``min_fraction`` of the image)."""
    from skimage.measure import label  # imported on use: importing the metrics stays cheap for classify

    mask = np.asarray(mask, dtype=bool)
    labels = label(mask, connectivity=2)
    if labels.max() == 0:
        return mask
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    biggest = int(sizes.argmax())
    if sizes[biggest] < min_fraction * mask.size:
        return np.zeros_like(mask)
    return labels == biggest


def horizontal_extent(mask: np.ndarray) -> int:
    """Number of columns from the leftmost to the rightmost pixel of ``mask`` (0 if empty)."""
    columns = np.flatnonzero(np.asarray(mask, dtype=bool).any(axis=0))
    return int(columns[-1] - columns[0] + 1) if columns.size else 0


def _as_bool(mask: np.ndarray | torch.Tensor, threshold: float) -> np.ndarray:
    array = mask.detach().cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
    array = np.squeeze(array)
    if array.ndim != 2:
        raise ValueError(f"a mask must be 2-D (rows, columns), got shape {array.shape}")
    return array > threshold if array.dtype != bool else array


def _width_line(mask: np.ndarray) -> WidthLine | None:
    """The horizontal extent of ``mask`` as a :class:`WidthLine` (None if empty)."""
    columns = np.flatnonzero(mask.any(axis=0))
    if not columns.size:
        return None
    rows = np.flatnonzero(mask.any(axis=1))
    spans = [np.flatnonzero(mask[row]) for row in rows]
    widest = rows[int(np.argmax([span[-1] - span[0] for span in spans]))]
    return WidthLine(float(widest) + 0.5, float(columns[0]), float(columns[-1] + 1))


def ctr_measurement(
    heart: np.ndarray | torch.Tensor,
    left_lung: np.ndarray | torch.Tensor,
    right_lung: np.ndarray | torch.Tensor,
    threshold: float = 0.5,
    min_fraction: float = 0.001,
) -> CtrMeasurement | None:
    """CTR of one image from its masks (probabilities or booleans, (rows, columns)) with the two widths
    as lines on the masks' grid; None if a structure is missing."""
    heart_mask = largest_component(_as_bool(heart, threshold), min_fraction)
    lungs = largest_component(_as_bool(left_lung, threshold), min_fraction) | largest_component(
        _as_bool(right_lung, threshold), min_fraction
    )
    heart_line, thorax_line = _width_line(heart_mask), _width_line(lungs)
    if heart_line is None or thorax_line is None:
        return None
    return CtrMeasurement(heart_line, thorax_line)


def cardiothoracic_ratio(
    heart: np.ndarray | torch.Tensor,
    left_lung: np.ndarray | torch.Tensor,
    right_lung: np.ndarray | torch.Tensor,
    threshold: float = 0.5,
    min_fraction: float = 0.001,
) -> float:
    """CTR of one image from its masks (probabilities or booleans, (rows, columns)); NaN if a structure is missing."""
    measured = ctr_measurement(heart, left_lung, right_lung, threshold, min_fraction)
    return float("nan") if measured is None else measured.ratio


def ctr_faithfulness(ctr: np.ndarray, scores: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """Does the heart follow the classifier along the series? ``ctr`` and ``scores`` are (S, N).

    Returns the median (over series) Spearman correlation of CTR with the step, the mean and median
    ΔCTR between the last and the first frame, the share of series whose ΔCTR is positive, and the
    share of series whose CTR crosses ``threshold`` (0.5, the radiological cut-off) in the same
    direction as the classifier's score crosses it, among the series where the score crosses it.
    Series with a missing CTR (NaN) are left out and counted in ``n_missing``.
    """
    from scipy.stats import spearmanr

    ctr = np.asarray(ctr, dtype=np.float64)
    scores = np.asarray(scores, dtype=np.float64)
    if ctr.shape != scores.shape or ctr.ndim != 2 or ctr.shape[1] < 2:
        raise ValueError(f"ctr and scores must both be (S, N >= 2), got {ctr.shape} and {scores.shape}")
    complete = ~np.isnan(ctr).any(axis=1)
    ctr, scores = ctr[complete], scores[complete]
    steps = np.arange(ctr.shape[1])
    rhos = [float(spearmanr(steps, row).statistic) if np.ptp(row) > 0 else 0.0 for row in ctr]
    delta = ctr[:, -1] - ctr[:, 0]

    def crossing(series: np.ndarray) -> np.ndarray:  # +1 crosses upwards, -1 downwards, 0 never
        above = series >= threshold
        return np.where(~above[:, 0] & above[:, -1], 1, np.where(above[:, 0] & ~above[:, -1], -1, 0))

    score_cross, ctr_cross = crossing(scores), crossing(ctr)
    crossed = score_cross != 0
    return {
        "n_series": int(len(ctr)),
        "n_missing": int((~complete).sum()),
        "median_spearman_ctr_step": float(np.median(rhos)) if rhos else float("nan"),
        "mean_delta_ctr": float(delta.mean()) if len(delta) else float("nan"),
        "median_delta_ctr": float(np.median(delta)) if len(delta) else float("nan"),
        "share_ctr_increases": float((delta > 0).mean()) if len(delta) else float("nan"),
        "n_score_crosses": int(crossed.sum()),
        "share_ctr_crosses_with_score": float((ctr_cross[crossed] == score_cross[crossed]).mean())
        if crossed.any()
        else float("nan"),
    }

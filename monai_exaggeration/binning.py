"""Discretisation of the classifier posterior into the N condition bins of the explainer.

Bin ``b`` covers ``[b/N, (b+1)/N)``; ``p = 1`` belongs to the last bin ``N - 1``. The training target
of bin ``b`` is its *centre* ``(b + 0.5)/N`` (the ICLR 2020 code used the lower edge ``b/N``; the
centre is unbiased inside the bin and never asks the generator for an exact 0).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

__all__ = [
    "DECISION_THRESHOLD",
    "DEFAULT_NUM_BINS",
    "bin_centre",
    "bin_centres",
    "centre_values",
    "check_num_bins",
    "posterior_to_bin",
]


#: The papers' number of bins (N = 10): the default wherever an explainer file does not say.
DEFAULT_NUM_BINS = 10
#: The classifier's decision threshold: a score at or above it says "finding present" (flips, predictions).
DECISION_THRESHOLD = 0.5


def check_num_bins(num_bins: int) -> int:
    """Return ``num_bins`` if it is an integer >= 2 (a series needs two ends), else raise ``ValueError``."""
    if isinstance(num_bins, bool) or not isinstance(num_bins, int) or num_bins < 2:
        raise ValueError(f"num_bins must be an integer >= 2, got {num_bins!r}")
    return num_bins


def bin_centres(num_bins: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Centres ``(b + 0.5)/N`` of all bins, shape (N,), float32."""
    check_num_bins(num_bins)
    return (torch.arange(num_bins, dtype=torch.float32, device=device) + 0.5) / num_bins


def centre_values(num_bins: int, bins: Sequence[int] | None = None) -> np.ndarray:
    """Centres ``(b + 0.5)/N`` of ``bins`` (default all ``0..N-1``) as float64 (exact decimal values such
    as 0.15, for logs, DICOM text and measures); the one place outside torch that computes them.
    ``num_bins`` may be 1 here (a single written frame describes its one bin)."""
    if isinstance(num_bins, bool) or not isinstance(num_bins, (int, np.integer)) or num_bins < 1:
        raise ValueError(f"num_bins must be a positive integer, got {num_bins!r}")
    indices = np.arange(num_bins) if bins is None else np.asarray(list(bins), dtype=np.int64)
    if indices.size and (indices.min() < 0 or indices.max() >= num_bins):
        raise ValueError(f"bins must lie in 0..{num_bins - 1}, got {indices.tolist()}")
    return (indices + 0.5) / num_bins


def bin_centre(bins: torch.Tensor, num_bins: int) -> torch.Tensor:
    """Centre ``(b + 0.5)/N`` of each bin index in ``bins`` (any shape), float32."""
    check_num_bins(num_bins)
    bins = torch.as_tensor(bins)
    if bins.is_floating_point() or bins.is_complex():
        raise TypeError(f"bins must be integer indices, got dtype {bins.dtype}")
    return (bins.to(torch.float32) + 0.5) / num_bins


def posterior_to_bin(p: torch.Tensor, num_bins: int) -> torch.Tensor:
    """Bin index ``floor(p * N)`` of posteriors ``p`` (any shape), clamped to ``[0, N - 1]``; int64.

    Values outside [0, 1] are clamped (p = 1 goes to N - 1); NaN raises ``ValueError``. The product is
    taken in the dtype of ``p``, so a float32 0.7 lands in bin 7 as one would expect.
    """
    check_num_bins(num_bins)
    p = torch.as_tensor(p)
    if not p.is_floating_point():
        p = p.to(torch.float32)
    if torch.isnan(p).any():
        raise ValueError("posterior contains NaN")
    return torch.floor(p * num_bins).clamp(0, num_bins - 1).to(torch.long)

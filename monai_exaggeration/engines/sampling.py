"""Target-bin sampling for training the explainer."""

from __future__ import annotations

from typing import Literal, get_args

import torch

from monai_exaggeration.binning import bin_centres

__all__ = ["TargetSampling", "TARGET_SAMPLING", "sample_target_bins"]

#: ``uniform``: b_t ~ U{0..N-1}. ``calibrated``: b_t drawn given the image's label so that, among the
#: images asked for bin i, negatives have weight (1 - c_i) and positives c_i (c_i the bin centre):
#: with balanced data the positive rate of the images seen with target i is about c_i.
TargetSampling = Literal["uniform", "calibrated"]
TARGET_SAMPLING: tuple[str, ...] = get_args(TargetSampling)


def sample_target_bins(
    batch_size: int,
    num_bins: int,
    mode: str = "uniform",
    labels: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Target bins (batch_size,) int64, drawn as ``mode`` says (``labels`` (B,) of 0/1 for ``calibrated``)."""
    if mode == "uniform":
        return torch.randint(0, num_bins, (batch_size,), generator=generator).to(device)
    if mode != "calibrated":
        raise ValueError(f"target sampling must be one of {TARGET_SAMPLING}, got {mode!r}")
    if labels is None:
        raise ValueError("calibrated target sampling needs the images' labels (batch key 'label')")
    positive = labels.reshape(-1).float().cpu().clamp(0, 1)
    centres = bin_centres(num_bins)
    weights = positive[:, None] * centres[None] + (1 - positive[:, None]) * (1 - centres[None])
    return torch.multinomial(weights, 1, generator=generator).reshape(-1).to(device)

"""SimCLR training of the CXR encoder with MONAI's ``ContrastiveLoss`` inside a ``SupervisedTrainer``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from monai.losses import ContrastiveLoss
from torch import nn

__all__ = ["PairedViewContrastiveLoss", "paired_views_batch"]


def paired_views_batch(
    batch: Mapping[str, Any], device: str | torch.device | None = None, non_blocking: bool = False, **_: Any
) -> tuple[torch.Tensor, None]:
    """``prepare_batch`` for ``SupervisedTrainer``: both views of each image stacked (2B, 1, H, W), no target."""
    views = torch.cat([torch.as_tensor(batch["image"]), torch.as_tensor(batch["image_2"])])
    return views.to(device=device, non_blocking=non_blocking), None


class PairedViewContrastiveLoss(nn.Module):
    """NT-Xent of predictions stacked as (view 1 of B images, view 2 of the same B images); the target is unused."""

    def __init__(self, temperature: float = 0.1) -> None:
        super().__init__()
        self.loss = ContrastiveLoss(temperature=temperature)

    def forward(self, predictions: torch.Tensor, target: Any = None) -> torch.Tensor:
        if len(predictions) % 2:
            raise ValueError(f"expected two stacked views (an even batch), got {len(predictions)} rows")
        first, second = predictions.chunk(2)
        return self.loss(first, second)

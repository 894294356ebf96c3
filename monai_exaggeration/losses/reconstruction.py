"""The autoencoder's reconstruction loss: L1 plus MONAI's SSIM loss, both on the model range [-1, 1]."""

from __future__ import annotations

import torch
from monai.losses import SSIMLoss
from torch import nn

__all__ = ["ReconstructionLoss"]


class ReconstructionLoss(nn.Module):
    """``l1_weight * |x_hat - x|_1 + ssim_weight * (1 - SSIM(x_hat, x))`` for (B, 1, H, W) images in [-1, 1].

    L1 alone gives blurry reconstructions; the SSIM term keeps local structure (edges of the heart,
    ribs), which is what Latent Shift's decoder has to draw.
    """

    def __init__(self, l1_weight: float = 1.0, ssim_weight: float = 0.5) -> None:
        super().__init__()
        if l1_weight < 0 or ssim_weight < 0 or l1_weight + ssim_weight == 0:
            raise ValueError(f"the weights must be non-negative and not both 0, got {l1_weight} and {ssim_weight}")
        self.l1_weight = float(l1_weight)
        self.ssim_weight = float(ssim_weight)
        self.ssim = SSIMLoss(spatial_dims=2, data_range=2.0)

    def forward(self, reconstruction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        loss = self.l1_weight * (reconstruction - target).abs().mean()
        if self.ssim_weight:
            loss = loss + self.ssim_weight * self.ssim(reconstruction, target)
        return loss

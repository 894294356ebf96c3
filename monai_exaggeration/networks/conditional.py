"""Conditional batch normalisation: the only way the target bin enters the explainer's generator."""

from __future__ import annotations

import torch
from torch import nn

from monai_exaggeration.binning import check_num_bins

__all__ = ["ConditionalBatchNorm2d", "as_bin_tensor"]


def as_bin_tensor(bins: torch.Tensor | int, batch_size: int, num_bins: int, device: torch.device) -> torch.Tensor:
    """Bins as an int64 tensor of shape (B,) on ``device``; an int or a 0-d tensor is repeated over the batch.

    Out-of-range indices raise ``ValueError`` when the bins live on the CPU (checking accelerator
    tensors would force a synchronisation; there the embedding lookup fails instead).
    """
    bins = torch.as_tensor(bins, device=device)
    if bins.is_floating_point() or bins.is_complex() or bins.dtype == torch.bool:
        raise TypeError(f"bins must be integer indices, got dtype {bins.dtype}")
    if bins.ndim == 0:
        bins = bins.expand(batch_size)
    if bins.shape != (batch_size,):
        raise ValueError(f"bins must have shape ({batch_size},), got {tuple(bins.shape)}")
    bins = bins.to(torch.long)
    if bins.device.type == "cpu" and bins.numel() and (int(bins.min()) < 0 or int(bins.max()) >= num_bins):
        raise ValueError(f"bins must lie in [0, {num_bins - 1}], got {bins.tolist()}")
    return bins


class ConditionalBatchNorm2d(nn.Module):
    """``BatchNorm2d(affine=False)`` followed by a per-bin affine map ``gamma[b] * x + beta[b]``.

    The tables are ``nn.Embedding(num_bins, num_features)`` initialised to gamma = 1, beta = 0, so at
    initialisation every bin behaves like a plain batch norm; each bin owns (and only receives
    gradients for) its own row.

    Args:
        num_features: channels C of the (B, C, H, W) input.
        num_bins: number of condition bins N.
        eps, momentum: passed to ``nn.BatchNorm2d``.
        init_std: standard deviation of Gaussian noise added to the initial tables (0: exactly 1 and 0).
            A generator whose frame is a *difference* of two bins' outputs needs the bins to differ from
            the first step, or the gradients of the two bins cancel and training never starts.
    """

    def __init__(
        self, num_features: int, num_bins: int, eps: float = 1e-5, momentum: float = 0.1, init_std: float = 0.0
    ) -> None:
        super().__init__()
        if init_std < 0:
            raise ValueError(f"init_std must be >= 0, got {init_std}")
        self.num_features = num_features
        self.num_bins = check_num_bins(num_bins)
        self.init_std = float(init_std)
        self.norm = nn.BatchNorm2d(num_features, eps=eps, momentum=momentum, affine=False)
        self.gamma = nn.Embedding(num_bins, num_features)
        self.beta = nn.Embedding(num_bins, num_features)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Gamma = 1, beta = 0 for every bin (plus ``init_std`` noise); running statistics reset."""
        self.norm.reset_running_stats()
        nn.init.ones_(self.gamma.weight)
        nn.init.zeros_(self.beta.weight)
        if self.init_std > 0:
            with torch.no_grad():
                self.gamma.weight.add_(torch.randn_like(self.gamma.weight) * self.init_std)
                self.beta.weight.add_(torch.randn_like(self.beta.weight) * self.init_std)

    def forward(self, x: torch.Tensor, bins: torch.Tensor | int) -> torch.Tensor:
        """Normalise ``x`` (B, C, H, W) and apply the affine map of each sample's bin (``bins``: (B,) int)."""
        bins = as_bin_tensor(bins, x.shape[0], self.num_bins, x.device)
        gamma = self.gamma(bins)[:, :, None, None]
        beta = self.beta(bins)[:, :, None, None]
        return self.norm(x) * gamma + beta

    def extra_repr(self) -> str:
        return f"num_features={self.num_features}, num_bins={self.num_bins}"

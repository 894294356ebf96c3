"""Realism and identity of counterfactuals in a feature space: FID, KID and nearest-neighbour identity.

Features come from an offline CXR network; by default the *penultimate* layer of the black-box
classifier (the input of its last ``nn.Linear``), which works for any classifier without
downloads. Always read a figure next to a real-versus-real baseline computed the same way.

* FID: MONAI's :class:`monai.metrics.FIDMetric` (Fréchet distance of Gaussian fits).
* KID: the unbiased MMD² with the cubic polynomial kernel ``(x·y / d + 1)³`` (Bińkowski et al.,
  ICLR 2018), averaged over random subsets; unlike FID it is unbiased for small sets.
* Identity: the share of counterfactuals whose nearest real image (Euclidean, in feature space)
  is their own source (the papers report about 86–90 % on CXR).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

__all__ = ["penultimate_features", "frechet_distance", "kernel_inception_distance", "identity_rate"]


def _last_linear(model: nn.Module) -> nn.Linear:
    linears = [module for module in model.modules() if isinstance(module, nn.Linear)]
    if not linears:
        raise ValueError("the feature network has no nn.Linear layer: give features another way")
    return linears[-1]


@torch.no_grad()
def penultimate_features(model: nn.Module, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """Inputs of ``model``'s last ``nn.Linear`` for ``images`` (N, C, H, W): (N, D) float32 on the CPU."""
    captured: list[torch.Tensor] = []
    handle = _last_linear(model).register_forward_pre_hook(lambda _, args: captured.append(args[0].detach().flatten(1)))
    device = next(model.parameters(), torch.empty(0)).device
    try:
        model.eval()
        for start in range(0, len(images), batch_size):
            model(images[start : start + batch_size].to(device))
    finally:
        handle.remove()
    return torch.cat(captured).float().cpu()


def frechet_distance(features_a: torch.Tensor, features_b: torch.Tensor) -> float:
    """FID between two feature sets (N, D) and (M, D) with MONAI's FIDMetric."""
    from monai.metrics import FIDMetric

    return float(FIDMetric()(features_a.double(), features_b.double()))


def kernel_inception_distance(
    features_a: torch.Tensor, features_b: torch.Tensor, subsets: int = 50, subset_size: int = 100, seed: int = 0
) -> tuple[float, float]:
    """KID (mean, standard deviation over ``subsets`` random subsets of ``subset_size``)."""
    a = np.asarray(features_a, dtype=np.float64)
    b = np.asarray(features_b, dtype=np.float64)
    size = min(subset_size, len(a), len(b))
    if size < 2:
        raise ValueError("KID needs at least 2 samples in each set")
    dim = a.shape[1]
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(subsets):
        x = a[rng.choice(len(a), size, replace=False)]
        y = b[rng.choice(len(b), size, replace=False)]
        k_xx = (x @ x.T / dim + 1) ** 3
        k_yy = (y @ y.T / dim + 1) ** 3
        k_xy = (x @ y.T / dim + 1) ** 3
        off = ~np.eye(size, dtype=bool)
        values.append(k_xx[off].mean() + k_yy[off].mean() - 2 * k_xy.mean())
    return float(np.mean(values)), float(np.std(values))


def identity_rate(counterfactual_features: torch.Tensor, source_features: torch.Tensor) -> float:
    """Share of counterfactuals ``i`` whose nearest source (Euclidean) is source ``i``; both (N, D), row-aligned."""
    if counterfactual_features.shape != source_features.shape:
        raise ValueError("counterfactual and source features must be row-aligned (N, D) arrays of the same shape")
    distances = torch.cdist(counterfactual_features.double(), source_features.double())
    nearest = distances.argmin(dim=1)
    return float((nearest == torch.arange(len(nearest))).double().mean())

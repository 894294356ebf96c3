"""Realism and identity of counterfactuals in a feature space: FID, KID and nearest-neighbour identity.

Features come from an offline CXR network; by default the *penultimate* layer of the black-box
classifier (the input of its last ``nn.Linear``), which works for any classifier without
downloads. Always read a figure next to a real-versus-real baseline computed the same way.

* FID: MONAI's :class:`monai.metrics.FIDMetric` (Fréchet distance of Gaussian fits).
* KID: the unbiased MMD² with the cubic polynomial kernel ``(x·y / d + 1)³`` (Bińkowski et al.,
  ICLR 2018), averaged over random subsets; unlike FID it is unbiased for small sets.
* Identity: the share of counterfactuals whose nearest real image (Euclidean, in feature space)
  is their own source (the papers report about 86–90 % on CXR).
* :func:`view_retrieval_accuracy`: the same nearest-neighbour test for two random views of each
  real image, the check that a feature space can recognise a patient at all.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

__all__ = [
    "encoder_features",
    "frechet_distance",
    "identity_rate",
    "kernel_inception_distance",
    "penultimate_features",
    "view_retrieval_accuracy",
    "write_view_retrieval",
]


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


@torch.no_grad()
def encoder_features(encoder: nn.Module, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """``encoder.features`` (e.g. :class:`~monai_exaggeration.networks.CXREncoder`) of ``images``: (N, D) on the CPU."""
    if not hasattr(encoder, "features"):
        raise ValueError(f"{type(encoder).__name__} has no features() method: use penultimate_features instead")
    device = next(encoder.parameters(), torch.empty(0)).device
    encoder.eval()
    chunks = [encoder.features(images[i : i + batch_size].to(device)) for i in range(0, len(images), batch_size)]
    return torch.cat(chunks).float().cpu()


def view_retrieval_accuracy(
    features: Callable[[torch.Tensor], torch.Tensor],
    records: Sequence[dict],
    image_size: int = 64,
    aspect: str = "pad",
    seed: int = 0,
) -> float:
    """Share of images whose first random view's nearest second view (in ``features``) is its own."""
    from monai.data import Dataset
    from monai.utils import set_determinism

    from monai_exaggeration.transforms.contrastive import SECOND_VIEW, two_view_preprocessing

    if len(records) < 2:
        raise ValueError("view retrieval needs at least 2 images")
    set_determinism(seed=seed)
    try:
        dataset = Dataset(list(records), two_view_preprocessing(image_size, aspect))
        items = [dataset[i] for i in range(len(dataset))]
    finally:
        set_determinism(seed=None)
    first = torch.stack([torch.as_tensor(item["image"]) for item in items])
    second = torch.stack([torch.as_tensor(item[SECOND_VIEW]) for item in items])
    return identity_rate(features(first), features(second))


def write_view_retrieval(
    encoder: nn.Module, records: Sequence[dict], image_size: int, aspect: str, path: str | os.PathLike
) -> float:
    """Measure :func:`view_retrieval_accuracy` of a trained encoder, print it and write it as JSON."""
    accuracy = view_retrieval_accuracy(lambda x: encoder_features(encoder, x), records, image_size, aspect)
    result = {"view_retrieval_top1": accuracy, "num_images": len(records), "image_size": image_size}
    Path(path).write_text(json.dumps(result, indent=2))
    print(f"view retrieval top-1 on {len(records)} images: {accuracy:.3f} ({path})")
    return accuracy

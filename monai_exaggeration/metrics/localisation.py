"""Where does an explanation act? Change inside versus outside the heart, and saliency maps for comparison.

* :func:`change_inside_outside`: mean absolute change of a counterfactual inside and outside a
  region (the heart for cardiomegaly), their ratio, and SSIM / L1 outside the region (preservation:
  what should not change should not change).
* :func:`saliency_maps`: MONAI ``GradCAM`` or ``OcclusionSensitivity`` maps of the classifier, the
  explanations progressive exaggeration is usually compared with.
* :func:`mass_inside`: the share of a (non-negative) map's mass that lies inside a mask, the common
  yardstick for all of them.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["change_inside_outside", "mass_inside", "saliency_maps"]


def _check(*arrays: np.ndarray) -> None:
    shapes = {np.asarray(a).shape for a in arrays}
    if len(shapes) != 1 or len(next(iter(shapes))) != 2:
        raise ValueError(f"expected 2-D arrays of one shape, got {[np.asarray(a).shape for a in arrays]}")


def mass_inside(weights: np.ndarray, mask: np.ndarray) -> float:
    """sum(weights · mask) / sum(weights) for a non-negative map (negative values count as 0); NaN if empty."""
    _check(weights, mask)
    weights = np.clip(np.asarray(weights, dtype=np.float64), 0.0, None)
    total = weights.sum()
    return float((weights * np.asarray(mask, dtype=bool)).sum() / total) if total > 0 else float("nan")


def change_inside_outside(source: np.ndarray, frame: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    """Change of ``frame`` against ``source`` (both [0, 1], same shape) inside and outside ``mask``."""
    _check(source, frame, mask)
    source = np.asarray(source, dtype=np.float64)
    frame = np.asarray(frame, dtype=np.float64)
    inside = np.asarray(mask, dtype=bool)
    if inside.all() or not inside.any():
        raise ValueError("the mask must cover part of the image, not none or all of it")
    from skimage.metrics import structural_similarity  # imported on use (import cost)

    change = np.abs(frame - source)
    _, ssim_map = structural_similarity(source, frame, data_range=1.0, full=True)
    mean_in, mean_out = float(change[inside].mean()), float(change[~inside].mean())
    return {
        "change_inside": mean_in,
        "change_outside": mean_out,
        "inside_outside_ratio": mean_in / mean_out if mean_out > 0 else float("inf"),
        "change_mass_inside": mass_inside(change, inside),
        "l1_outside": mean_out,
        "ssim_outside": float(ssim_map[~inside].mean()),
    }


class _ScoreColumn(nn.Module):
    """The classifier's score as a (B, 1) "class score", the shape MONAI's CAM classes expect."""

    def __init__(self, classifier: nn.Module) -> None:
        super().__init__()
        self.classifier = classifier

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.classifier(images).reshape(len(images), -1)


class _TwoClassLogits(_ScoreColumn):
    """(B, 2) logits [absent, present] of a binary score, so that GradCAM explains the *predicted* class.

    GradCAM keeps only positive evidence (a ReLU over the weighted activations); for an image the
    classifier calls negative the evidence *for* the finding is often empty and the map undefined.
    Explaining the predicted class, as GradCAM is normally used, gives every image a map.
    """

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        score = super().forward(images)[:, :1].clamp(1e-6, 1 - 1e-6)
        logit = torch.log(score) - torch.log1p(-score)
        return torch.cat([-logit, logit], dim=1)


def saliency_maps(
    classifier: nn.Module,
    images: torch.Tensor,
    method: str = "gradcam",
    target_layer: str = "model.class_layers.relu",
    mask_size: int = 8,
) -> torch.Tensor:
    """Saliency maps (B, H, W) of ``classifier`` for ``images`` (B, 1, H, W): ``gradcam`` or ``occlusion``.

    ``target_layer`` names the GradCAM layer (default: the final ReLU of the features of the shipped MONAI
    DenseNet inside :class:`~monai_exaggeration.networks.BlackBoxClassifier`); GradCAM explains the
    predicted class (finding present when the score is >= 0.5, else absent). Occlusion maps are
    the drop of the score when a ``mask_size`` patch is hidden (positive = the patch supported the
    finding). A map without any positive weight is all zeros.
    """
    from monai.visualize import GradCAM, OcclusionSensitivity

    if method == "gradcam":
        cam = GradCAM(nn_module=_TwoClassLogits(classifier), target_layers=f"classifier.{target_layer}")
        with torch.enable_grad():
            maps = cam(images.clone().requires_grad_(True))  # class_idx None: the predicted class
        maps = torch.nan_to_num(maps, nan=0.0)  # MONAI normalises each map; an all-zero map becomes NaN
        return F.interpolate(maps, size=images.shape[2:], mode="bilinear", align_corners=False)[:, 0].detach()
    if method == "occlusion":
        occlusion = OcclusionSensitivity(
            nn_module=_ScoreColumn(classifier),
            mask_size=mask_size,
            n_batch=64,
            overlap=0.5,
            verbose=False,
            activate=False,
        )  # the score is already a probability: no further activation
        drops = []
        with torch.no_grad():
            for image in images:  # MONAI's occlusion sensitivity takes one image at a time
                base = classifier(image[None]).reshape(())
                with warnings.catch_warnings():  # MONAI 1.6 indexes with lists (deprecated in torch, same result)
                    warnings.filterwarnings("ignore", message="Using a non-tuple sequence", category=UserWarning)
                    occluded, _ = occlusion(image[None])  # (1, classes, H, W): the score with the patch hidden
                drops.append(base - occluded[0, 0])
        return torch.stack(drops).detach()
    raise ValueError(f"method must be 'gradcam' or 'occlusion', got {method!r}")

"""Losses of the progressive-exaggeration explainer (adversarial, classifier consistency, CARL L1)."""

from monai_exaggeration.binning import bin_centre, bin_centres, posterior_to_bin
from monai_exaggeration.losses import exaggeration
from monai_exaggeration.losses.contrastive import PairedViewContrastiveLoss, paired_views_batch
from monai_exaggeration.losses.exaggeration import *  # noqa: F401,F403
from monai_exaggeration.losses.reconstruction import ReconstructionLoss

__all__ = [
    *exaggeration.__all__,
    "PairedViewContrastiveLoss",
    "ReconstructionLoss",
    "paired_views_batch",
    "bin_centre",
    "bin_centres",
    "posterior_to_bin",
]

"""Losses of the progressive-exaggeration explainer (design notes, "The method" / "Losses").

- adversarial: hinge loss for D, -mean(D(fake)) for G;
- classifier consistency: Bernoulli KL between the target bin centre and f(G(x, b_t)), plus between
  f(x) and f(x_cycle); the gradient flows *through* the frozen classifier into the generated images;
- self-consistency: L1 identity and cycle terms, plain or context-aware (CARL, masked and
  normalised) with pluggable masks.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import nn

from monai_exaggeration.binning import bin_centre, check_num_bins

__all__ = [
    "DilatedRegion",
    "ExaggerationLoss",
    "FixedMasks",
    "MaskProvider",
    "NoMask",
    "SegmentationMasks",
    "bernoulli_kl",
    "classifier_consistency_loss",
    "cycle_classifier_loss",
    "discriminator_hinge_loss",
    "generator_adversarial_loss",
    "l1_reconstruction",
    "target_classifier_loss",
]

Classifier = Callable[[torch.Tensor], torch.Tensor]


# ------------------------------------------------------------------------------------------ adversarial
def discriminator_hinge_terms(
    real_scores: torch.Tensor, fake_scores: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The two hinge terms: mean(relu(1 - D(real))) and mean(relu(1 + D(fake)))."""
    return F.relu(1.0 - real_scores).mean(), F.relu(1.0 + fake_scores).mean()


def discriminator_hinge_loss(real_scores: torch.Tensor, fake_scores: torch.Tensor) -> torch.Tensor:
    """mean(relu(1 - D(real))) + mean(relu(1 + D(fake)))."""
    real, fake = discriminator_hinge_terms(real_scores, fake_scores)
    return real + fake


def generator_adversarial_loss(fake_scores: torch.Tensor) -> torch.Tensor:
    """-mean(D(fake)) (hinge-GAN generator loss)."""
    return -fake_scores.mean()


# ------------------------------------------------------------------------------------------ classifier
def bernoulli_kl(
    target_p: torch.Tensor, predicted_p: torch.Tensor, eps: float = 1e-6, reduction: str = "mean"
) -> torch.Tensor:
    """KL(Bern(target) || Bern(predicted)), averaged over the batch (``reduction="none"`` keeps it per sample).

    KL = t log(t/p) + (1-t) log((1-t)/(1-p)) = BCE(p, t) - H(t): the binary cross-entropy minus the
    entropy of the target, which does not depend on the generator, so both have the same gradients
    but the KL is 0 when the prediction is on target. ``predicted_p`` is clamped to [eps, 1 - eps];
    t log t is taken as 0 at t = 0.
    """
    if reduction not in ("mean", "none"):
        raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
    target = torch.as_tensor(target_p, dtype=predicted_p.dtype, device=predicted_p.device)
    target = target.expand_as(predicted_p)
    p = predicted_p.clamp(eps, 1.0 - eps)
    kl = (
        torch.special.xlogy(target, target)
        - target * torch.log(p)
        + torch.special.xlogy(1.0 - target, 1.0 - target)
        - (1.0 - target) * torch.log1p(-p)
    )
    return kl.mean() if reduction == "mean" else kl


def target_classifier_loss(
    classifier: Classifier, generated: torch.Tensor, target_bins: torch.Tensor, num_bins: int
) -> torch.Tensor:
    """KL between the target bin centres and f(G(x, b_t)); differentiable w.r.t. ``generated``."""
    target = bin_centre(target_bins, num_bins).to(generated.device)
    return bernoulli_kl(target, classifier(generated).reshape(-1))


def cycle_classifier_loss(
    classifier: Classifier,
    cycled: torch.Tensor,
    x: torch.Tensor | None = None,
    source_posterior: torch.Tensor | None = None,
) -> torch.Tensor:
    """KL between f(x) (a detached target; pass it as ``source_posterior`` if cached) and f(x_cycle)."""
    if source_posterior is None:
        if x is None:
            raise ValueError("cycle_classifier_loss needs x or source_posterior")
        with torch.no_grad():
            source_posterior = classifier(x)
    return bernoulli_kl(source_posterior.detach().reshape(-1), classifier(cycled).reshape(-1))


def classifier_consistency_loss(
    classifier: Classifier,
    generated: torch.Tensor,
    target_bins: torch.Tensor,
    num_bins: int,
    x: torch.Tensor | None = None,
    cycled: torch.Tensor | None = None,
    source_posterior: torch.Tensor | None = None,
) -> torch.Tensor:
    """KL(bin centre || f(G(x, b_t))) plus, when ``cycled`` is given, KL(f(x) || f(x_cycle)).

    ``classifier`` is the frozen black box (e.g. ``BlackBoxClassifier``): it is *not* run under
    ``no_grad``, so the loss back-propagates through it into the generated images and the generator
    (the released ICLR code stopped this gradient). Only the target f(x) is detached.
    """
    check_num_bins(num_bins)
    loss = target_classifier_loss(classifier, generated, target_bins, num_bins)
    if cycled is not None:
        loss = loss + cycle_classifier_loss(classifier, cycled, x, source_posterior)
    return loss


# -------------------------------------------------------------------------------------- reconstruction
def _as_mask(masks: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """Masks as float (B, K, H, W) on the images' device; (B, H, W) gains K = 1; batch 1 broadcasts."""
    masks = torch.as_tensor(masks, device=images.device)
    if masks.ndim == 3:
        masks = masks.unsqueeze(1)
    if masks.ndim != 4 or masks.shape[-2:] != images.shape[-2:] or masks.shape[0] not in (1, images.shape[0]):
        raise ValueError(
            f"masks must have shape (B, K, H, W) matching images {tuple(images.shape)}, got {tuple(masks.shape)}"
        )
    return masks.to(images.dtype if images.is_floating_point() else torch.float32).expand(images.shape[0], -1, -1, -1)


def l1_reconstruction(x: torch.Tensor, x_hat: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Plain mean L1 when ``mask`` is None; otherwise the context-aware (CARL) normalised L1.

    CARL, per sample and region k: sum(M_k * |x - x_hat|) / (C * sum(M_k)) (C image channels, so a
    full mask gives the plain mean L1); averaged over the sample's non-empty regions, then over the
    batch. Regions with sum(M_k) = 0 are left out; a sample whose regions are all empty contributes 0.
    ``mask``: (B, K, H, W) or (B, H, W) weights in [0, 1] (soft masks allowed).
    """
    error = (x - x_hat).abs()
    if mask is None:
        return error.mean()
    masks = _as_mask(mask, error)
    error = error.sum(dim=1, keepdim=True)  # (B, 1, H, W), channels summed
    numerator = (masks * error).sum(dim=(2, 3))  # (B, K)
    area = masks.sum(dim=(2, 3)) * x.shape[1]
    valid = area > 0
    per_region = torch.where(valid, numerator / area.clamp_min(torch.finfo(area.dtype).tiny), 0.0)
    per_sample = per_region.sum(dim=1) / valid.sum(dim=1).clamp_min(1)
    return per_sample.mean()


# ----------------------------------------------------------------------------------------------- masks
@runtime_checkable
class MaskProvider(Protocol):
    """Maps images (B, 1, H, W) in [-1, 1] to region masks (B, K, H, W) in [0, 1], or None for plain L1."""

    def __call__(self, images: torch.Tensor) -> torch.Tensor | None: ...


class NoMask:
    """No regions: the reconstruction terms are the plain mean L1 (ICLR 2020)."""

    def __call__(self, images: torch.Tensor) -> None:
        return None


class FixedMasks:
    """Precomputed masks handed in by the caller (e.g. stored with the dataset under ``batch[key]``).

    Call ``update(batch_or_masks)`` once per batch (a mapping holding ``key`` or a tensor), then use the
    provider as any other: ``provider(images)`` returns the stored masks as float (B, K, H, W),
    checked against the images. ``threshold`` optionally binarises them (``mask >= threshold``).
    """

    def __init__(self, key: str = "masks", masks: torch.Tensor | None = None, threshold: float | None = None) -> None:
        self.key = key
        self.threshold = threshold
        self.masks: torch.Tensor | None = None
        if masks is not None:
            self.update(masks)

    def update(self, batch_or_masks: Mapping[str, torch.Tensor] | torch.Tensor) -> FixedMasks:
        """Store the masks of the current batch; returns ``self``."""
        if isinstance(batch_or_masks, Mapping):
            if self.key not in batch_or_masks:
                raise KeyError(f"batch has no mask entry {self.key!r} (keys: {sorted(batch_or_masks)})")
            batch_or_masks = batch_or_masks[self.key]
        self.masks = torch.as_tensor(batch_or_masks)
        return self

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if self.masks is None:
            raise RuntimeError("FixedMasks has no masks: call update(batch) first")
        masks = _as_mask(self.masks, images)
        if self.threshold is not None:
            masks = (masks >= self.threshold).to(masks.dtype)
        return masks


class SegmentationMasks:
    """Masks from any segmentation network (e.g. a heart/lung U-Net), run in eval mode under no_grad.

    Args:
        network: maps (B, 1, H, W) images to (B, K', H', W') logits; outputs at another size are
            resized (bilinear) to the image size.
        threshold: binarise the probabilities (``>= threshold``); None keeps soft masks.
        activation: ``"sigmoid"`` (independent regions), ``"softmax"`` (exclusive classes) or ``"none"``.
        channels: output channels to keep as regions (e.g. drop the background of a softmax output).
        preprocess: optional transform of the [-1, 1] images into the network's input range.
    """

    ACTIVATIONS = ("sigmoid", "softmax", "none")

    def __init__(
        self,
        network: nn.Module,
        threshold: float | None = None,
        activation: str = "sigmoid",
        channels: Sequence[int] | None = None,
        preprocess: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        if activation not in self.ACTIVATIONS:
            raise ValueError(f"activation must be one of {self.ACTIVATIONS}, got {activation!r}")
        self.network = network.eval().requires_grad_(False)
        self.threshold = threshold
        self.activation = activation
        self.channels = list(channels) if channels is not None else None
        self.preprocess = preprocess

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        self.network.eval()
        with torch.no_grad():
            inputs = self.preprocess(images) if self.preprocess is not None else images
            out = self.network(inputs)
            if self.activation == "sigmoid":
                out = torch.sigmoid(out)
            elif self.activation == "softmax":
                out = torch.softmax(out, dim=1)
            if self.channels is not None:
                out = out[:, self.channels]
            if out.shape[-2:] != images.shape[-2:]:
                out = F.interpolate(out, size=images.shape[-2:], mode="bilinear", align_corners=False)
            if self.threshold is not None:
                out = (out >= self.threshold).to(out.dtype)
        return out.clamp(0.0, 1.0)


class DilatedRegion:
    """Where the counterfactual change is allowed: a structure of a segmentation network, dilated.

    For the ``change`` term of :class:`ExaggerationLoss` (e.g. the heart, dilated so that it can grow
    into the neighbouring lung). ``segmenter`` maps (B, 1, H, W) images in [-1, 1] to probabilities
    (B, K, S, S) (e.g. :class:`~monai_exaggeration.networks.HeartLungSegmenter`; channel 0 is the
    heart). The union of ``channels`` is thresholded, resized to the images, dilated by
    ``dilation`` x the image width on every side and softened over a few pixels. Run under no_grad.
    """

    def __init__(
        self, segmenter: nn.Module, channels: Sequence[int] = (0,), threshold: float = 0.5, dilation: float = 0.1
    ) -> None:
        if not 0 <= dilation < 0.5:
            raise ValueError(f"dilation must be a fraction of the image width in [0, 0.5), got {dilation}")
        self.segmenter = segmenter.eval().requires_grad_(False)
        self.channels = list(channels)
        self.threshold = threshold
        self.dilation = dilation

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            probabilities = self.segmenter(images.float())[:, self.channels].amax(dim=1, keepdim=True)
            if probabilities.shape[-2:] != images.shape[-2:]:
                probabilities = F.interpolate(
                    probabilities, size=images.shape[-2:], mode="bilinear", align_corners=False
                )
            region = (probabilities >= self.threshold).float()
            radius = int(round(self.dilation * images.shape[-1]))
            if radius > 0:
                region = F.max_pool2d(region, 2 * radius + 1, stride=1, padding=radius)
            soft = max(1, images.shape[-1] // 64)
            region = F.avg_pool2d(region, 2 * soft + 1, stride=1, padding=soft, count_include_pad=False)
        return region.clamp(0.0, 1.0).to(images.dtype)


# ---------------------------------------------------------------------------------------------- total
def _zero(like: torch.Tensor) -> torch.Tensor:
    return like.new_zeros(())


@dataclass
class ExaggerationLoss:
    """Weighted sum of the explainer's loss terms (defaults: lambda_GAN = 1, lambda_f = 1, lambda_rec = 100).

    G: total = lambda_gan * adv + lambda_cls * (cls + cls_cycle) + lambda_rec * (identity + cycle)
    + lambda_change * change + lambda_smooth * smooth + lambda_fold * fold, where ``change`` =
    mean(|G(x, b_t) - G(x, b_src)| * (1 - R)) penalises the counterfactual change outside an allowed
    region R (e.g. the dilated heart; everywhere when no region is given), and ``smooth`` (bending
    energy) and ``fold`` (negative Jacobian determinants) regularise the displacement field of the
    deformation explainer. The three extra weights default to 0 (the papers' loss).
    D: hinge loss. All inputs are explicit tensors (plus the frozen classifier and optional masks of
    the source images), so a trainer decides what to compute and cache.
    """

    num_bins: int = 10
    lambda_gan: float = 1.0
    lambda_cls: float = 1.0
    lambda_rec: float = 100.0
    lambda_change: float = 0.0
    lambda_smooth: float = 0.0
    lambda_fold: float = 0.0

    def __post_init__(self) -> None:
        check_num_bins(self.num_bins)
        for name in ("lambda_change", "lambda_smooth", "lambda_fold"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")

    def generator_terms(
        self,
        x: torch.Tensor,
        generated: torch.Tensor,
        target_bins: torch.Tensor,
        fake_scores: torch.Tensor,
        classifier: Classifier,
        identity: torch.Tensor | None = None,
        cycled: torch.Tensor | None = None,
        masks: torch.Tensor | None = None,
        source_posterior: torch.Tensor | None = None,
        change: torch.Tensor | None = None,
        change_region: torch.Tensor | None = None,
        displacement: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Generator loss terms and their weighted ``total``.

        Args:
            x: source images (B, 1, H, W).
            generated: G(x, b_t).
            target_bins: b_t, (B,) int.
            fake_scores: D(G(x, b_t), b_t), (B,).
            classifier: the frozen black box f (gradients flow through it into ``generated``).
            identity: G(x, b_src), or None to skip the identity term.
            cycled: G(G(x, b_t), b_src), or None to skip the cycle and cycle-classifier terms.
            masks: CARL region masks of ``x`` (B, K, H, W), or None for plain L1.
            source_posterior: cached f(x), else computed from ``x`` without gradient.
            change: G(x, b_t) - G(x, b_src) (B, 1, H, W), or None to skip the change term.
            change_region: where change is allowed (B, 1, H, W) in [0, 1]; None penalises it everywhere.
            displacement: the frame's displacement field (B, 2, h, w) in grid pixels (deformation
                explainer), or None: ``smooth`` is MONAI's bending energy of it and ``fold`` the mean of
                relu(−det J), the folding of the mapping.

        Returns:
            ``adv``, ``cls``, ``cls_cycle``, ``identity``, ``cycle``, ``change``, ``smooth``, ``fold``,
            ``total`` (skipped terms are 0).
        """
        terms = {
            "adv": generator_adversarial_loss(fake_scores),
            "cls": target_classifier_loss(classifier, generated, target_bins, self.num_bins),
            "cls_cycle": _zero(generated),
            "identity": _zero(generated),
            "cycle": _zero(generated),
            "change": _zero(generated),
            "smooth": _zero(generated),
            "fold": _zero(generated),
        }
        if displacement is not None:
            from monai.losses import BendingEnergyLoss

            from monai_exaggeration.networks.deformation import jacobian_determinant

            terms["smooth"] = BendingEnergyLoss()(displacement)
            terms["fold"] = F.relu(-jacobian_determinant(displacement)).mean()
        if change is not None and self.lambda_change > 0:
            outside = 1.0 if change_region is None else 1.0 - _as_mask(change_region, change)
            terms["change"] = (change.abs() * outside).mean()
        if cycled is not None:
            terms["cls_cycle"] = cycle_classifier_loss(classifier, cycled, x, source_posterior)
            terms["cycle"] = l1_reconstruction(x, cycled, masks)
        if identity is not None:
            terms["identity"] = l1_reconstruction(x, identity, masks)
        terms["total"] = (
            self.lambda_gan * terms["adv"]
            + self.lambda_cls * (terms["cls"] + terms["cls_cycle"])
            + self.lambda_rec * (terms["identity"] + terms["cycle"])
            + self.lambda_change * terms["change"]
            + self.lambda_smooth * terms["smooth"]
            + self.lambda_fold * terms["fold"]
        )
        return terms

    def discriminator_terms(self, real_scores: torch.Tensor, fake_scores: torch.Tensor) -> dict[str, torch.Tensor]:
        """Hinge terms ``real`` = mean(relu(1 - D(real))), ``fake`` = mean(relu(1 + D(fake))) and ``total``."""
        real, fake = discriminator_hinge_terms(real_scores, fake_scores)
        return {"real": real, "fake": fake, "total": real + fake}

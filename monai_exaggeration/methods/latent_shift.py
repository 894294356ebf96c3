"""Latent Shift (Cohen et al., MIDL 2021) as a :class:`~.base.SeriesMethod`.

An autoencoder (E, D) trained on chest X-rays gives a latent z = E(x). The classifier's gradient
through the decoder, g = ∂f(D(z))/∂z, is the direction in which the image changes what f sees
(computed as the gradient of f's log-odds, the same direction, which does not vanish where f
saturates near 0 or 1), and

    x_λ = D(z + λ g)

is the counterfactual at shift λ. As in the explainer, the frame shown is the source plus the
change, ``x + D(z + λ g) − D(z)`` (the decoder's blur cancels), and λ is *searched* per target bin
until the classifier's score of that frame reaches the bin's centre:

1. bracket: λ on a geometric grid ``± max_shift · 2^-k`` (k = 0..grid-1) in units of |z| (g is
   normalised), all candidates scored in one batch;
2. refine: ``search_steps`` bisections of each target's bracket, all targets in one batch.

A target the grid cannot reach within ``max_shift`` gets the closest score found (the stated limit;
``reached`` is False in the details). The source's own bin is λ = 0, the source itself.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch
from torch import nn

from monai_exaggeration.binning import bin_centre
from monai_exaggeration.methods.base import MethodSeries
from monai_exaggeration.methods.registry import MethodContext, register_method
from monai_exaggeration.utils import file_sha256

__all__ = ["LatentShift"]


@register_method
class LatentShift:
    """Latent Shift with ``autoencoder`` (a :class:`~monai_exaggeration.networks.CXRAutoEncoder`) against ``classifier``.

    Args:
        autoencoder: E and D (``encode_latent``/``decode_latent``), frozen.
        classifier: the black box f (probabilities), frozen; gradients flow through it, not into it.
        max_shift: the largest |λ| tried, in units of |z|.
        grid: bracket candidates per direction.
        search_steps: bisections per target.
        weights: identifies the autoencoder file (enters ``model_version``).
    """

    name = "latent_shift"
    label = "Latent Shift"
    title = "Latent Shift"
    version_name = "latent_shift"
    uses_explainer = False
    composition = "transfer"  # the frame is the source plus the decoder's change
    num_bins = None

    def __init__(
        self,
        autoencoder: nn.Module,
        classifier: nn.Module,
        max_shift: float = 4.0,
        grid: int = 8,
        search_steps: int = 6,
        weights: str = "",
    ) -> None:
        if max_shift <= 0 or grid < 1 or search_steps < 0:
            raise ValueError(
                f"latent_shift needs max_shift > 0, grid >= 1 and search_steps >= 0, got {max_shift}, {grid}, {search_steps}"
            )
        self.autoencoder, self.classifier = autoencoder, classifier
        self.max_shift, self.grid, self.search_steps = float(max_shift), int(grid), int(search_steps)
        self.weights = weights

    @classmethod
    def build(cls, context: MethodContext) -> LatentShift:
        """Latent Shift in the autoencoder of ``context.autoencoder_weights`` (``FileNotFoundError``/``ValueError``
        with what to do when it is missing or not an autoencoder file)."""
        if not context.autoencoder_weights:
            raise ValueError(
                "method latent_shift needs autoencoder_weights -- give bundles/cxr_autoencoder/models/autoencoder.pt"
            )
        from monai_exaggeration.networks.autoencoder import load_autoencoder

        path = Path(context.autoencoder_weights)
        autoencoder = load_autoencoder(path, context.device)
        return cls(
            autoencoder, context.classifier, weights=file_sha256(path)[:12] if path.is_file() else "", **context.options
        )

    @property
    def image_size(self) -> int | None:
        return getattr(self.autoencoder, "image_size", None)

    def version_settings(self) -> dict[str, Any]:
        return self.settings()

    def frame_details(self, details: dict, count: int) -> list[str]:
        """The ``method_detail`` column: each frame's shift λ (``limit`` where the target was not reached)."""
        return [f"shift={v:g}" + ("" if ok else " (limit)") for v, ok in zip(details["shifts"], details["reached"])]

    def describe(self) -> dict[str, str]:
        return {"autoencoder weights": self.weights or "in memory"}

    def weights_id(self) -> str:
        if self.weights:
            return self.weights
        digest = hashlib.sha256()
        for value in self.autoencoder.state_dict().values():
            digest.update(value.detach().cpu().numpy().tobytes())
        return "unsaved-" + digest.hexdigest()[:12]

    def settings(self) -> dict[str, Any]:
        return {"max_shift": self.max_shift, "grid": self.grid, "search_steps": self.search_steps}

    def _device(self) -> torch.device:
        return next(self.autoencoder.parameters()).device

    def _log_odds(self, images: torch.Tensor) -> torch.Tensor:
        """log(f / (1 − f)): a strictly increasing function of f, so its gradient has the direction of
        ∂f/∂z, without the vanishing of ∂f/∂z where the sigmoid saturates (sources scored ~0 or ~1)."""
        logits = getattr(self.classifier, "logits", None)
        if logits is not None and getattr(self.classifier, "activation", None) == "sigmoid":
            return logits(images)[:, self.classifier.output_index]
        return torch.logit(self.classifier(images).reshape(-1).clamp(1e-7, 1 - 1e-7))

    def _frames(
        self,
        x: torch.Tensor,
        z: torch.Tensor,
        direction: torch.Tensor,
        reconstruction: torch.Tensor,
        shifts: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """For shifts λ (M,): D(z + λ g) (M, 1, S, S), the frames x + D(z + λ g) − D(z), their scores (M,)."""
        generated = self.autoencoder.decode_latent(z + shifts.reshape(-1, *[1] * (z.ndim - 1)) * direction)
        frames = torch.clamp(x + generated - reconstruction, -1.0, 1.0)
        return generated, frames, self.classifier(frames).reshape(-1)

    def _one(self, x: torch.Tensor, source_score: float, source_bin: int, bins: list[int], num_bins: int):
        device = self._device()
        x = x[None].to(device)  # (1, 1, S, S)
        with torch.no_grad():
            z = self.autoencoder.encode_latent(x)
            reconstruction = self.autoencoder.decode_latent(z)
        with torch.enable_grad():
            latent = z.detach().clone().requires_grad_(True)
            (gradient,) = torch.autograd.grad(self._log_odds(self.autoencoder.decode_latent(latent)).sum(), latent)
        scale = float(z.norm())
        direction = gradient / gradient.norm().clamp_min(1e-12) * scale  # λ in units of |z|
        targets = bin_centre(torch.tensor(bins), num_bins).tolist()

        with torch.no_grad():
            steps = self.max_shift * 2.0 ** -torch.arange(self.grid - 1, -1, -1, dtype=torch.float32)  # ascending
            candidates = torch.cat([-steps.flip(0), steps]).to(device)
            _, _, scores = self._frames(x, z, direction, reconstruction, candidates)
            lambdas = torch.cat([candidates[: self.grid], torch.zeros(1, device=device), candidates[self.grid :]]).cpu()
            values = torch.cat(
                [scores[: self.grid], torch.tensor([source_score], device=device), scores[self.grid :]]
            ).cpu()
            centre = self.grid  # index of λ = 0
            low, high, reached = [], [], []  # (index into lambdas/values) of each target's bracket
            for target, b in zip(targets, bins):
                if b == source_bin:
                    low.append(centre), high.append(centre), reached.append(True)
                    continue
                side = range(centre + 1, len(lambdas)) if target > source_score else range(centre - 1, -1, -1)
                previous = centre
                for index in side:
                    if (values[index] >= target) if target > source_score else (values[index] <= target):
                        low.append(previous), high.append(index), reached.append(True)
                        break
                    previous = index
                else:  # not reached within max_shift: the closest score found on that side
                    best = min(side, key=lambda i: abs(float(values[i]) - target))
                    low.append(best), high.append(best), reached.append(False)
            low_t, high_t = lambdas[low], lambdas[high]
            low_s, high_s = values[low], values[high]  # the scores at the bracket ends, kept up to date
            goal = torch.tensor(targets)
            rising = goal > source_score
            for _ in range(self.search_steps):
                middle = (low_t + high_t) / 2
                _, _, scores = self._frames(x, z, direction, reconstruction, middle.to(device))
                scores = scores.cpu()
                past = torch.where(rising, scores >= goal, scores <= goal)
                high_t, high_s = torch.where(past, middle, high_t), torch.where(past, scores, high_s)
                low_t, low_s = torch.where(past, low_t, middle), torch.where(past, low_s, scores)
            # the bracket end whose frame is closer to the target
            chosen = torch.where((high_s - goal).abs() <= (low_s - goal).abs(), high_t, low_t)
            is_source = torch.tensor([b == source_bin for b in bins])
            chosen = torch.where(is_source, torch.zeros_like(chosen), chosen)
            generated, frames, _ = self._frames(x, z, direction, reconstruction, chosen.to(device))
            frames = torch.where(is_source.to(device)[:, None, None, None], x.expand_as(frames), frames)
        details = {"shifts": [round(float(v), 5) for v in chosen], "reached": reached}
        return generated[:, 0].cpu(), reconstruction[0, 0].cpu(), frames[:, 0].cpu(), details

    def __call__(
        self, inputs: torch.Tensor, source_scores: list[float], source_bins: list[int], bins: list[int], num_bins: int
    ) -> MethodSeries:
        outputs = [self._one(x, s, b, bins, num_bins) for x, s, b in zip(inputs, source_scores, source_bins)]
        return MethodSeries(
            generated=torch.stack([o[0] for o in outputs]),
            reconstruction=torch.stack([o[1] for o in outputs]),
            frames=torch.stack([o[2] for o in outputs]),
            details=[o[3] for o in outputs],
        )

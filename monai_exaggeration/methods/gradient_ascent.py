"""Pixel-space gradient ascent, the plain optimisation counterfactual, as a :class:`~.base.SeriesMethod`.

For each target bin centre t, a perturbation δ of the preprocessed source x (model size, model
range) is optimised with Adam to minimise ``BCE(f(clamp(x + δ)), t) + l1 · mean|δ|`` until
``|f − t| <= tolerance`` or ``steps`` steps; the K targets of a series are optimised together in
one batch, each stopping on its own. The frame is ``clamp(x + δ)``. On a classifier that is not
adversarially robust the score moves with high-frequency noise rather than anatomy, which is what
the comparison in docs/methods.md shows.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from monai_exaggeration.binning import bin_centre
from monai_exaggeration.methods.base import MethodSeries
from monai_exaggeration.methods.registry import MethodContext, register_method

__all__ = ["PixelGradientAscent"]


@register_method
class PixelGradientAscent:
    """Adam on pixel perturbations against ``classifier``; see the module docstring for the settings."""

    name = "gradient_ascent"
    label = "Pixel ascent"
    title = "Pixel-space gradient ascent"
    version_name = "gradient_ascent"
    uses_explainer = False
    composition = "transfer"
    num_bins = None

    def __init__(
        self, classifier: nn.Module, steps: int = 200, lr: float = 0.01, l1: float = 0.01, tolerance: float = 0.05
    ) -> None:
        if steps < 1 or lr <= 0 or l1 < 0 or tolerance <= 0:
            raise ValueError(
                f"gradient_ascent needs steps >= 1, lr > 0, l1 >= 0, tolerance > 0; got {steps}, {lr}, {l1}, {tolerance}"
            )
        self.classifier = classifier
        self.steps, self.lr, self.l1, self.tolerance = int(steps), float(lr), float(l1), float(tolerance)

    @classmethod
    def build(cls, context: MethodContext) -> PixelGradientAscent:
        return cls(context.classifier, **context.options)

    @property
    def image_size(self) -> int | None:
        return getattr(self.classifier, "input_size", None)

    def version_settings(self) -> dict[str, Any]:
        return self.settings()

    def frame_details(self, details: dict, count: int) -> list[str]:
        """The ``method_detail`` column: the Adam steps each frame took."""
        return [f"steps={v}" for v in details["steps"]]

    def describe(self) -> dict[str, str]:
        return {}

    def weights_id(self) -> str:
        return "pixels"

    def settings(self) -> dict[str, Any]:
        return {"steps": self.steps, "lr": self.lr, "l1": self.l1, "tolerance": self.tolerance}

    def _one(self, x: torch.Tensor, source_bin: int, bins: list[int], num_bins: int):
        device = next(self.classifier.parameters()).device
        x = x[None].to(device)
        targets = bin_centre(torch.tensor(bins), num_bins).to(device).float()
        delta = torch.zeros(len(bins), *x.shape[1:], device=device, requires_grad=True)
        optimiser = torch.optim.Adam([delta], lr=self.lr)
        done = torch.tensor([b == source_bin for b in bins], device=device)  # the source's own bin: x itself
        used = torch.zeros(len(bins), dtype=torch.long)
        with torch.enable_grad():
            for step in range(self.steps + 1):
                probabilities = self.classifier(torch.clamp(x + delta, -1.0, 1.0)).reshape(-1)
                done |= (probabilities.detach() - targets).abs() <= self.tolerance
                if bool(done.all()) or step == self.steps:
                    break
                used += (~done).long().cpu()
                active = (~done).float()
                per_frame = F.binary_cross_entropy(probabilities.clamp(1e-6, 1 - 1e-6), targets, reduction="none")
                per_frame = per_frame + self.l1 * delta.abs().flatten(1).mean(1)
                kept = delta.detach().clone()
                optimiser.zero_grad(set_to_none=True)
                (per_frame * active).sum().backward()
                optimiser.step()
                with torch.no_grad():  # finished frames stay where they are
                    delta[done] = kept[done]
        with torch.no_grad():
            is_source = torch.tensor([b == source_bin for b in bins], device=device)
            delta[is_source] = 0.0
            frames = torch.clamp(x + delta, -1.0, 1.0)
        return frames[:, 0].cpu(), x[0, 0].cpu(), {"steps": used.tolist()}

    def __call__(
        self, inputs: torch.Tensor, source_scores: list[float], source_bins: list[int], bins: list[int], num_bins: int
    ) -> MethodSeries:
        outputs = [self._one(x, b, bins, num_bins) for x, b in zip(inputs, source_bins)]
        frames = torch.stack([o[0] for o in outputs])
        return MethodSeries(
            generated=frames,
            reconstruction=torch.stack([o[1] for o in outputs]),
            frames=frames,
            details=[o[2] for o in outputs],
        )

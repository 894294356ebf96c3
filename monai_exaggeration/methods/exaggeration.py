"""Progressive exaggeration (Singla et al., ICLR 2020) as a :class:`~.base.SeriesMethod`: one forward of
the conditional generator per series, G(x, b) for every bin b (docs/method.md)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from monai_exaggeration.engines.series import compose_series, generate_series
from monai_exaggeration.methods.base import MethodSeries

__all__ = ["ProgressiveExaggeration"]


class ProgressiveExaggeration:
    """The trained explainer's generator. ``composition`` and ``norm`` as in the explainer file and
    :func:`~monai_exaggeration.engines.series.generate_series`; ``weights`` identifies the file."""

    name = "progressive_exaggeration"
    label = "Exaggeration"

    def __init__(self, generator: nn.Module, composition: str = "generated", norm: str = "series", weights: str = "") -> None:
        self.generator, self.composition, self.norm, self.weights = generator, composition, norm, weights

    def weights_id(self) -> str:
        return self.weights

    def settings(self) -> dict[str, Any]:
        return {"composition": self.composition, "norm": self.norm}

    @torch.no_grad()
    def __call__(
        self, inputs: torch.Tensor, source_scores: list[float], source_bins: list[int], bins: list[int], num_bins: int
    ) -> MethodSeries:
        device = next(self.generator.parameters()).device
        series = generate_series(self.generator, inputs.to(device), num_bins, norm=self.norm).float().cpu()  # (B, N, 1, S, S)
        frames = compose_series(inputs.cpu(), series, source_bins, self.composition)[:, :, 0]
        rows = torch.arange(series.shape[0])
        return MethodSeries(
            generated=series[:, bins, 0],
            reconstruction=series[rows, torch.as_tensor(source_bins).long(), 0],
            frames=frames[:, bins],
            details=[{} for _ in source_bins],
        )

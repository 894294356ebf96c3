"""A toy counterfactual method, registered from outside the package: proof that a new method is one
module plus one registry entry (tests/test_method_registry.py runs it through the bundle workflows).

Each frame is the source brightened by ``step`` per bin above the source's own bin (darkened below).
"""

from __future__ import annotations

from typing import Any

import torch

from monai_exaggeration.methods import MethodContext, MethodSeries, register_method


@register_method
class ToyBrightness:
    name = "toy_brightness"
    label = "Toy"
    title = "Toy brightness"
    version_name = "toy"
    uses_explainer = False
    composition = "transfer"
    num_bins = None

    def __init__(self, classifier: torch.nn.Module, step: float = 0.05) -> None:
        self.classifier, self.step = classifier, float(step)

    @classmethod
    def build(cls, context: MethodContext) -> ToyBrightness:
        return cls(context.classifier, **context.options)

    @property
    def image_size(self) -> int | None:
        return getattr(self.classifier, "input_size", None)

    def weights_id(self) -> str:
        return "none"

    def settings(self) -> dict[str, Any]:
        return {"step": self.step}

    def version_settings(self) -> dict[str, Any]:
        return self.settings()

    def frame_details(self, details: dict, count: int) -> list[str]:
        return [f"toy offset {offset:+.2f}" for offset in details["offsets"]]

    def describe(self) -> dict[str, str]:
        return {"toy step": str(self.step)}

    def __call__(self, inputs, source_scores, source_bins, bins, num_bins) -> MethodSeries:
        offsets = torch.tensor([[self.step * (b - s) for b in bins] for s in source_bins])  # (B, K)
        frames = (inputs[:, :1].cpu() + offsets[:, :, None, None]).clamp(-1, 1)  # (B, K, S, S)
        return MethodSeries(
            generated=frames,
            reconstruction=inputs[:, 0].cpu(),
            frames=frames,
            details=[{"offsets": row.tolist()} for row in offsets],
        )

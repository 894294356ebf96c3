"""Heart/lung segmentation as a measuring instrument: masks and cardiothoracic ratio of any CXR batch."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from monai_exaggeration.metrics.ctr import CtrMeasurement, cardiothoracic_ratio, ctr_measurement

__all__ = ["HeartLungSegmenter"]


class HeartLungSegmenter(nn.Module):
    """Wrap a 3-output segmentation network (heart, left lung, right lung; sigmoid) trained at ``image_size``.

    Input: images (B, 1, H, W) in the model range [-1, 1], any H and W: they are resized (stretched,
    anti-aliased) to ``image_size`` — CTR is a ratio of horizontal widths, so a horizontal stretch
    does not change it. Output of ``forward``: probabilities (B, 3, S, S). Frozen, eval mode.
    """

    def __init__(self, network: nn.Module, image_size: int = 128) -> None:
        super().__init__()
        self.network = network.eval()
        self.image_size = int(image_size)
        for parameter in self.network.parameters():
            parameter.requires_grad_(False)

    def train(self, mode: bool = True) -> HeartLungSegmenter:  # always an instrument, never trained here
        super().train(False)
        return self

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] != 1:
            raise ValueError(f"images must be (B, 1, H, W), got {tuple(images.shape)}")
        size = (self.image_size, self.image_size)
        if tuple(images.shape[2:]) != size:
            images = F.interpolate(images.float(), size=size, mode="bilinear", antialias=True, align_corners=False)
        return torch.sigmoid(self.network(images))

    def ctr(self, images: torch.Tensor) -> list[float]:
        """Cardiothoracic ratio of each image (NaN where a structure is not found)."""
        return [cardiothoracic_ratio(*masks) for masks in self(images).cpu()]

    def ctr_measurements(self, images: torch.Tensor) -> list[CtrMeasurement | None]:
        """:meth:`ctr` with the heart and thorax widths as lines on the input images' grid (None where a
        structure is not found)."""
        grid, shape = (self.image_size, self.image_size), tuple(images.shape[2:])
        measured = [ctr_measurement(*masks) for masks in self(images).cpu()]
        return [None if m is None else m.scaled(grid, shape) for m in measured]

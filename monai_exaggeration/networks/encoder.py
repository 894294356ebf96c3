"""An in-project CXR feature extractor, trained self-supervised (SimCLR), independent of the classifier.

Realism (FID/KID) and identity need a feature space. The classifier's own penultimate features are
one choice, but they are the very features the explainer was trained to move, so the project also
trains this encoder without any label: two random views of the same radiograph must map close
together and away from other radiographs (Chen et al., ICML 2020). Its features are therefore
invariant to acquisition-like changes and sensitive to who the patient is, which is what the
identity measure asks.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.nets import ResNet
from torch import nn

__all__ = ["CXREncoder"]


class CXREncoder(nn.Module):
    """MONAI ResNet backbone (global-pooled features, dimension ``widths[-1]``) and a SimCLR projection head.

    ``forward`` returns the projection (used by the contrastive loss in training); :meth:`features`
    the backbone features used for measurement. Inputs (B, 1, H, W) in the model range [-1, 1].
    """

    def __init__(
        self,
        widths: Sequence[int] = (32, 64, 128, 128),
        layers: Sequence[int] = (1, 1, 1, 1),
        projection_dim: int = 64,
    ) -> None:
        super().__init__()
        if len(widths) != 4 or len(layers) != 4:
            raise ValueError(f"widths and layers must have 4 entries (ResNet stages), got {widths} and {layers}")
        self.backbone = ResNet(
            block="basic",
            layers=list(layers),
            block_inplanes=list(widths),
            spatial_dims=2,
            n_input_channels=1,
            conv1_t_size=7,
            conv1_t_stride=2,
            feed_forward=False,
        )
        self.feature_dim = int(widths[-1])
        self.projection = nn.Sequential(
            nn.Linear(self.feature_dim, self.feature_dim),
            nn.ReLU(inplace=True),
            nn.Linear(self.feature_dim, projection_dim),
        )

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Backbone features (B, feature_dim)."""
        return self.backbone(images).flatten(1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.projection(self.features(images))

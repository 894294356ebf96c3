"""Change inside/outside a region, saliency maps (MONAI GradCAM, occlusion) and mass inside a mask."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.networks.nets import DenseNet

from monai_exaggeration.metrics import change_inside_outside, mass_inside, saliency_maps
from monai_exaggeration.networks import BlackBoxClassifier


def test_mass_inside_and_change_inside_outside_known_answers() -> None:
    mask = np.zeros((32, 32), dtype=bool)
    mask[8:16, 8:16] = True  # 64 pixels
    weights = mask * 3.0 + (~mask) * 1.0  # 192 inside, 960 outside
    assert mass_inside(weights, mask) == pytest.approx(192 / 1152)
    assert mass_inside(-weights, mask) != mass_inside(-weights, mask)  # all negative -> NaN
    source = np.full((32, 32), 0.5)
    frame = source.copy()
    frame[mask] += 0.2  # only the region changes
    result = change_inside_outside(source, frame, mask)
    assert result["change_inside"] == pytest.approx(0.2) and result["change_outside"] == 0.0
    assert result["change_mass_inside"] == pytest.approx(1.0) and result["inside_outside_ratio"] == float("inf")
    rng = np.random.default_rng(0)
    everywhere = change_inside_outside(source, np.clip(frame + rng.normal(0, 0.1, frame.shape), 0, 1), mask)
    assert result["ssim_outside"] > 0.8 > everywhere["ssim_outside"]  # SSIM windows at the edge see the region
    assert everywhere["l1_outside"] > 0.05
    with pytest.raises(ValueError):
        change_inside_outside(source, frame, np.ones((32, 32), dtype=bool))
    with pytest.raises(ValueError):
        mass_inside(weights, mask[:8])


class _LooksAtTopLeft(torch.nn.Module):
    """A classifier whose score depends only on the top-left 16 x 16 pixels."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(images[:, :, :16, :16].mean(dim=(1, 2, 3), keepdim=False)[:, None] * 8)


def test_occlusion_finds_the_region_the_classifier_uses() -> None:
    classifier = BlackBoxClassifier(_LooksAtTopLeft())
    images = torch.ones(1, 1, 32, 32)
    maps = saliency_maps(classifier, images, "occlusion", mask_size=8)
    assert maps.shape == (1, 32, 32)
    region = np.zeros((32, 32), dtype=bool)
    region[:16, :16] = True
    assert mass_inside(maps[0].numpy(), region) > 0.9


def test_gradcam_of_a_monai_densenet() -> None:
    torch.manual_seed(0)
    network = DenseNet(
        spatial_dims=2, in_channels=1, out_channels=1, init_features=8, growth_rate=4, block_config=(2, 2)
    )
    classifier = BlackBoxClassifier(network)
    maps = saliency_maps(classifier, torch.rand(2, 1, 32, 32) * 2 - 1, "gradcam")
    assert maps.shape == (2, 32, 32) and float(maps.min()) >= 0.0 and float(maps.max()) <= 1.0 + 1e-6
    assert not any(p.requires_grad for p in classifier.parameters())
    with pytest.raises(ValueError, match="gradcam"):
        saliency_maps(classifier, torch.rand(1, 1, 32, 32), "lime")


def test_gradcam_explains_the_predicted_class_of_a_negative_image(rg1_uncr) -> None:
    """The shipped classifier calls RG1 negative; GradCAM still gives a finite, non-empty map (of "absent")."""
    from monai_exaggeration.bundle import load_bundle_classifier
    from monai_exaggeration.transforms import load_cxr

    classifier = load_bundle_classifier()
    image = load_cxr(rg1_uncr, 64)[None].as_tensor()
    assert float(classifier(image)) < 0.5
    maps = saliency_maps(classifier, image, "gradcam")
    assert torch.isfinite(maps).all() and float(maps.max()) > 0.5

"""Realism and identity measures in feature space: FID, KID, nearest-neighbour identity, features."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.networks.nets import DenseNet

from monai_exaggeration.metrics import frechet_distance, identity_rate, kernel_inception_distance, penultimate_features


def test_fid_and_kid_are_near_zero_for_one_distribution_and_grow_with_a_shift() -> None:
    rng = np.random.default_rng(0)
    a = torch.from_numpy(rng.normal(size=(400, 8)))
    b = torch.from_numpy(rng.normal(size=(400, 8)))
    shifted = b + 1.0
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    same, far = frechet_distance(a, b), frechet_distance(a, shifted)
    assert same < 0.2 and far == pytest.approx(8.0, rel=0.15)  # |mean shift|^2 = 8 for equal covariances
    kid_same, _ = kernel_inception_distance(a, b)
    kid_far, spread = kernel_inception_distance(a, shifted)
    assert abs(kid_same) < 0.05 and kid_far > 10 * max(abs(kid_same), 1e-3) and spread >= 0
    with pytest.raises(ValueError):
        kernel_inception_distance(a[:1], b[:1])


def test_identity_rate() -> None:
    sources = torch.eye(5) * 10
    assert identity_rate(sources + 0.1, sources) == 1.0
    swapped = sources[[1, 0, 2, 3, 4]]
    assert identity_rate(swapped, sources) == pytest.approx(3 / 5)
    with pytest.raises(ValueError):
        identity_rate(sources[:4], sources)


def test_penultimate_features_of_a_densenet() -> None:
    torch.manual_seed(0)
    model = DenseNet(spatial_dims=2, in_channels=1, out_channels=1, init_features=8, growth_rate=4, block_config=(2, 2))
    images = torch.rand(5, 1, 32, 32)
    features = penultimate_features(model, images, batch_size=2)
    linear = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
    assert features.shape == (5, linear.in_features)
    with torch.no_grad():
        assert torch.allclose(linear(features), model(images), atol=1e-5)  # exactly the last layer's input
    assert not model._forward_pre_hooks and not linear._forward_pre_hooks
    with pytest.raises(ValueError, match="nn.Linear"):
        penultimate_features(torch.nn.Conv2d(1, 1, 3), images)

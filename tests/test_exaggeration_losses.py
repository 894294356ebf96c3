"""Explainer losses: binning, hinge GAN terms, Bernoulli KL, classifier gradients, CARL L1 and mask providers."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from monai.networks.nets import DenseNet
from torch import nn

from monai_exaggeration.losses import (
    ExaggerationLoss,
    FixedMasks,
    MaskProvider,
    NoMask,
    SegmentationMasks,
    bernoulli_kl,
    bin_centre,
    bin_centres,
    classifier_consistency_loss,
    discriminator_hinge_loss,
    generator_adversarial_loss,
    l1_reconstruction,
    posterior_to_bin,
)
from monai_exaggeration.networks import BlackBoxClassifier, ExaggerationGenerator

NUM_BINS = 10
SIZE = 32


@pytest.fixture()
def classifier() -> BlackBoxClassifier:
    torch.manual_seed(0)
    network = DenseNet(
        spatial_dims=2, in_channels=1, out_channels=1, init_features=8, growth_rate=4, block_config=(2, 2)
    )
    return BlackBoxClassifier(network)


@pytest.fixture()
def generator() -> ExaggerationGenerator:
    torch.manual_seed(1)
    return ExaggerationGenerator(num_bins=NUM_BINS, stem_channels=4, encoder_channels=(8, 8))


def images(batch: int = 4, size: int = SIZE, seed: int = 2) -> torch.Tensor:
    return torch.rand(batch, 1, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


# ---------------------------------------------------------------------------------------- binning
def test_bins_and_centres():
    assert torch.allclose(bin_centres(4), torch.tensor([0.125, 0.375, 0.625, 0.875]))
    assert torch.allclose(bin_centre(torch.tensor([0, 3, 9]), NUM_BINS), torch.tensor([0.05, 0.35, 0.95]))
    p = torch.tensor([0.0, 0.05, 0.0999, 0.1, 0.35, 0.7, 0.9999, 1.0])
    assert posterior_to_bin(p, NUM_BINS).tolist() == [0, 0, 0, 1, 3, 7, 9, 9]
    assert posterior_to_bin(p, NUM_BINS).dtype == torch.long
    assert posterior_to_bin(torch.tensor([-0.1, 1.2]), NUM_BINS).tolist() == [0, 9]
    # every centre falls in its own bin
    assert posterior_to_bin(bin_centres(NUM_BINS), NUM_BINS).tolist() == list(range(NUM_BINS))
    with pytest.raises(ValueError):
        bin_centres(1)
    with pytest.raises(ValueError, match="NaN"):
        posterior_to_bin(torch.tensor([float("nan")]), NUM_BINS)
    with pytest.raises(TypeError):
        bin_centre(torch.tensor([0.5]), NUM_BINS)


# ------------------------------------------------------------------------------------ adversarial
def test_hinge_losses_on_hand_computed_values():
    real = torch.tensor([2.0, 0.5, -1.0])  # relu(1 - real) = 0, 0.5, 2
    fake = torch.tensor([-2.0, 0.0, 0.5])  # relu(1 + fake) = 0, 1, 1.5
    assert discriminator_hinge_loss(real, fake).item() == pytest.approx(2.5 / 3 + 2.5 / 3)
    assert generator_adversarial_loss(fake).item() == pytest.approx(0.5)
    terms = ExaggerationLoss().discriminator_terms(real, fake)
    assert terms["real"].item() == pytest.approx(2.5 / 3)
    assert terms["fake"].item() == pytest.approx(2.5 / 3)
    assert terms["total"].item() == pytest.approx(5 / 3)


# ------------------------------------------------------------------------------------ Bernoulli KL
def test_bernoulli_kl():
    p = torch.tensor([0.05, 0.3, 0.5, 0.95])
    assert bernoulli_kl(p, p).abs().item() < 1e-6
    assert bernoulli_kl(torch.tensor([0.5]), torch.tensor([0.25])).item() == pytest.approx(0.5 * math.log(4 / 3))
    q = torch.tensor([0.2, 0.6, 0.1, 0.5])
    per_sample = bernoulli_kl(p, q, reduction="none")
    assert per_sample.shape == (4,) and (per_sample > 0).all()
    entropy = -(p * p.log() + (1 - p) * (1 - p).log())
    assert torch.allclose(per_sample, F.binary_cross_entropy(q, p, reduction="none") - entropy, atol=1e-6)
    assert bernoulli_kl(p, q).item() == pytest.approx(per_sample.mean().item())
    # hard targets: t log t = 0, KL = BCE; saturated predictions stay finite
    assert bernoulli_kl(torch.tensor([1.0]), torch.tensor([0.25])).item() == pytest.approx(-math.log(0.25), rel=1e-5)
    assert torch.isfinite(bernoulli_kl(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])))


# ------------------------------------------------------------------------------------- classifier
def test_classifier_loss_reaches_generator_not_classifier(classifier, generator):
    x = images()
    target = torch.tensor([0, 3, 6, 9])
    source = posterior_to_bin(classifier(x).detach(), NUM_BINS)
    generated = generator(x, target)
    cycled = generator(generated, source)
    loss = classifier_consistency_loss(classifier, generated, target, NUM_BINS, x=x, cycled=cycled)
    assert loss.requires_grad and loss.item() > 0
    loss.backward()
    grads = [p.grad for p in generator.parameters()]
    assert all(g is not None for g in grads)
    assert generator.stem.weight.grad.abs().sum() > 0 and generator.head.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in classifier.parameters())
    assert not any(p.requires_grad for p in classifier.parameters())


def test_classifier_loss_values(classifier, generator):
    x = images()
    target = torch.tensor([1, 1, 8, 8])
    with torch.no_grad():
        generated = generator(x, target)
        cycled = generator(generated, 0)
        p_gen, p_x, p_cyc = classifier(generated), classifier(x), classifier(cycled)
    only_target = classifier_consistency_loss(classifier, generated, target, NUM_BINS)
    assert only_target.item() == pytest.approx(bernoulli_kl(bin_centre(target, NUM_BINS), p_gen).item(), rel=1e-5)
    both = classifier_consistency_loss(classifier, generated, target, NUM_BINS, x=x, cycled=cycled)
    assert both.item() == pytest.approx(only_target.item() + bernoulli_kl(p_x, p_cyc).item(), rel=1e-5)
    cached = classifier_consistency_loss(classifier, generated, target, NUM_BINS, cycled=cycled, source_posterior=p_x)
    assert cached.item() == pytest.approx(both.item(), rel=1e-6)
    with pytest.raises(ValueError, match="source_posterior"):
        classifier_consistency_loss(classifier, generated, target, NUM_BINS, cycled=cycled)


def test_cycle_target_is_detached(classifier):
    x = images(2).requires_grad_(True)
    cycled = images(2, seed=5).requires_grad_(True)
    loss = classifier_consistency_loss(classifier, cycled, torch.tensor([0, 9]), NUM_BINS, x=x, cycled=cycled)
    loss.backward()
    assert x.grad is None
    assert cycled.grad is not None and cycled.grad.abs().sum() > 0


# ------------------------------------------------------------------------------------------- CARL
def test_plain_and_masked_l1_hand_computed():
    x = torch.zeros(2, 1, 2, 2)
    x_hat = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).expand(2, 1, 2, 2)
    assert l1_reconstruction(x, x_hat).item() == pytest.approx(2.5)
    masks = torch.zeros(2, 2, 2, 2)
    masks[0, 0] = torch.tensor([[1.0, 0.0], [0.0, 0.0]])  # region 0 of sample 0: 1 / 1
    masks[0, 1] = torch.tensor([[0.0, 1.0], [1.0, 0.0]])  # region 1 of sample 0: (2 + 3) / 2
    masks[1, 1] = torch.tensor([[0.0, 0.0], [0.0, 0.5]])  # region 0 empty; region 1: 0.5 * 4 / 0.5
    expected = ((1.0 + 2.5) / 2 + 4.0) / 2
    assert l1_reconstruction(x, x_hat, masks).item() == pytest.approx(expected)
    # a full mask is the plain L1, (B, H, W) masks gain a region axis, a batch-1 mask broadcasts
    assert l1_reconstruction(x, x_hat, torch.ones(2, 1, 2, 2)).item() == pytest.approx(2.5)
    assert l1_reconstruction(x, x_hat, torch.ones(2, 2, 2)).item() == pytest.approx(2.5)
    assert l1_reconstruction(x, x_hat, torch.ones(1, 1, 2, 2, dtype=torch.bool)).item() == pytest.approx(2.5)
    with pytest.raises(ValueError, match="masks"):
        l1_reconstruction(x, x_hat, torch.ones(2, 1, 3, 3))


def test_zero_mask_is_guarded():
    x = torch.zeros(2, 1, 4, 4)
    x_hat = torch.rand(2, 1, 4, 4).requires_grad_(True)
    loss = l1_reconstruction(x, x_hat, torch.zeros(2, 3, 4, 4))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.isfinite(x_hat.grad).all() and x_hat.grad.abs().sum() == 0


def test_mask_providers():
    x = images(3, 16)
    assert NoMask()(x) is None
    assert l1_reconstruction(x, x + 1, NoMask()(x)).item() == pytest.approx(1.0)

    fixed = FixedMasks(key="lung_heart", threshold=0.5)
    with pytest.raises(RuntimeError, match="update"):
        fixed(x)
    with pytest.raises(KeyError, match="lung_heart"):
        fixed.update({"image": x})
    stored = torch.rand(3, 2, 16, 16)
    masks = fixed.update({"image": x, "lung_heart": stored})(x)
    assert masks.shape == (3, 2, 16, 16) and masks.dtype == x.dtype
    assert torch.equal(masks, (stored >= 0.5).float())
    assert FixedMasks(masks=torch.ones(3, 16, 16, dtype=torch.uint8))(x).shape == (3, 1, 16, 16)
    with pytest.raises(ValueError):
        FixedMasks(masks=torch.ones(3, 1, 8, 8))(x)

    torch.manual_seed(0)
    network = nn.Conv2d(1, 3, 1).train()
    soft = SegmentationMasks(network, activation="softmax", channels=[1, 2])
    out = soft(x)
    assert out.shape == (3, 2, 16, 16) and not out.requires_grad
    assert out.min() >= 0 and out.max() <= 1 and (out.sum(dim=1) < 1).all()
    assert not network.training and not any(p.requires_grad for p in network.parameters())
    hard = SegmentationMasks(nn.Sequential(nn.Conv2d(1, 2, 1), nn.AvgPool2d(2)), threshold=0.5)
    out = hard(x)
    assert out.shape == (3, 2, 16, 16) and set(out.unique().tolist()) <= {0.0, 1.0}
    with pytest.raises(ValueError, match="activation"):
        SegmentationMasks(network, activation="relu")

    for provider in (NoMask(), fixed, soft, hard):
        assert isinstance(provider, MaskProvider)


# ------------------------------------------------------------------------------------ combination
def test_generator_terms_combine_with_weights(classifier, generator):
    x = images()
    target = torch.tensor([0, 3, 6, 9])
    with torch.no_grad():
        p_x = classifier(x)
    source = posterior_to_bin(p_x, NUM_BINS)
    generated = generator(x, target)
    identity = generator(x, source)
    cycled = generator(generated, source)
    fake_scores = torch.tensor([0.5, -1.0, 2.0, 0.0], requires_grad=True)
    masks = torch.ones(4, 2, SIZE, SIZE)
    masks[:, 1, : SIZE // 2] = 0
    loss = ExaggerationLoss(num_bins=NUM_BINS, lambda_gan=2.0, lambda_cls=3.0, lambda_rec=10.0)
    terms = loss.generator_terms(
        x, generated, target, fake_scores, classifier, identity=identity, cycled=cycled, masks=masks
    )
    assert set(terms) == {"adv", "cls", "cls_cycle", "identity", "cycle", "change", "smooth", "fold", "total"}
    assert terms["smooth"].item() == 0.0 and terms["fold"].item() == 0.0  # no displacement: an image generator
    assert terms["change"].item() == 0.0  # lambda_change 0 (the papers): no change term
    assert terms["adv"].item() == pytest.approx(-0.375)
    assert terms["identity"].item() == pytest.approx(l1_reconstruction(x, identity, masks).item())
    assert terms["cycle"].item() == pytest.approx(l1_reconstruction(x, cycled, masks).item())
    assert (terms["cls"] + terms["cls_cycle"]).item() == pytest.approx(
        classifier_consistency_loss(classifier, generated, target, NUM_BINS, x=x, cycled=cycled).item(), rel=1e-5
    )
    expected = 2 * terms["adv"] + 3 * (terms["cls"] + terms["cls_cycle"]) + 10 * (terms["identity"] + terms["cycle"])
    assert terms["total"].item() == pytest.approx(expected.item(), rel=1e-6)
    terms["total"].backward()
    assert generator.stem.weight.grad.abs().sum() > 0 and fake_scores.grad is not None

    defaults = ExaggerationLoss()
    assert (defaults.lambda_gan, defaults.lambda_cls, defaults.lambda_rec, defaults.num_bins) == (1, 1, 100, 10)
    minimal = defaults.generator_terms(x, generated.detach(), target, fake_scores.detach(), classifier)
    assert minimal["identity"].item() == minimal["cycle"].item() == minimal["cls_cycle"].item() == 0.0
    assert minimal["total"].item() == pytest.approx((minimal["adv"] + minimal["cls"]).item(), rel=1e-6)
    with pytest.raises(ValueError):
        ExaggerationLoss(num_bins=1)

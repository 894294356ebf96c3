"""Explainer GAN networks: shapes, conditioning via CBN only, residual identity, spectral norm, ordinal projection."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from monai_exaggeration.networks import (
    ConditionalBatchNorm2d,
    ExaggerationDiscriminator,
    ExaggerationGenerator,
    count_parameters,
)

NUM_BINS = 10
TINY_G = {"stem_channels": 8, "encoder_channels": (8, 16, 16, 16)}
TINY_D = {"channels": (8, 16, 16, 16, 16)}


def images(batch: int, size: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, 1, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def tiny_generator(seed: int = 0, **kwargs) -> ExaggerationGenerator:
    torch.manual_seed(seed)
    return ExaggerationGenerator(num_bins=NUM_BINS, **{**TINY_G, **kwargs})


def tiny_discriminator(seed: int = 0, **kwargs) -> ExaggerationDiscriminator:
    torch.manual_seed(seed)
    return ExaggerationDiscriminator(num_bins=NUM_BINS, **{**TINY_D, **kwargs})


def cbn_layers(module: nn.Module) -> list[ConditionalBatchNorm2d]:
    return [m for m in module.modules() if isinstance(m, ConditionalBatchNorm2d)]


def randomise_cbn_tables(module: nn.Module, seed: int = 1) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in cbn_layers(module):
            layer.gamma.weight.copy_(1 + 0.5 * torch.randn(layer.gamma.weight.shape, generator=generator))
            layer.beta.weight.copy_(0.5 * torch.randn(layer.beta.weight.shape, generator=generator))


# --------------------------------------------------------------------------- conditional batch norm
def test_cbn_init_is_plain_batch_norm_and_bins_select_rows():
    torch.manual_seed(0)
    layer = ConditionalBatchNorm2d(3, NUM_BINS)
    x = torch.randn(4, 3, 5, 5)
    reference = nn.functional.batch_norm(x, None, None, training=True)
    assert torch.allclose(layer(x, torch.tensor([0, 3, 9, 3])), reference, atol=1e-5)
    with torch.no_grad():
        layer.gamma.weight[3] = 2.0
        layer.beta.weight[3] = -1.0
    out = layer(x, torch.tensor([0, 3, 9, 3]))
    assert torch.allclose(out[[0, 2]], reference[[0, 2]], atol=1e-5)
    assert torch.allclose(out[[1, 3]], 2 * reference[[1, 3]] - 1, atol=1e-5)
    assert torch.allclose(layer(x, 3), 2 * reference - 1, atol=1e-5)  # one int broadcasts


def test_cbn_rejects_bad_bins():
    layer = ConditionalBatchNorm2d(2, NUM_BINS)
    x = torch.randn(2, 2, 4, 4)
    with pytest.raises(ValueError, match="lie in"):
        layer(x, torch.tensor([0, NUM_BINS]))
    with pytest.raises(ValueError, match="shape"):
        layer(x, torch.tensor([0, 1, 2]))
    with pytest.raises(TypeError):
        layer(x, torch.tensor([0.5, 1.0]))


# ------------------------------------------------------------------------------------------- shapes
@pytest.mark.parametrize(("size", "batch"), [(64, 2), (128, 2), (256, 2), (512, 1)])
def test_generator_output_shape_and_range(size: int, batch: int):
    generator = tiny_generator()
    x = images(batch, size)
    out = generator(x, torch.arange(batch))
    assert out.shape == x.shape
    assert out.min() >= -1 and out.max() <= 1
    assert generator.encode(x, 0).shape == (batch, *generator.bottleneck_shape(size))


@pytest.mark.parametrize(("size", "batch"), [(64, 2), (128, 2), (256, 2), (512, 1)])
def test_discriminator_output_shape(size: int, batch: int):
    discriminator = tiny_discriminator()
    scores = discriminator(images(batch, size), torch.arange(batch))
    assert scores.shape == (batch,)
    assert torch.isfinite(scores).all()
    features = discriminator.features(images(batch, size))
    assert features.shape == (batch, TINY_D["channels"][-1])


def test_default_widths_bottleneck():
    generator = ExaggerationGenerator()
    assert generator.decoder_channels == (1024, 512, 256, 128, 64)
    assert generator.num_blocks == 5 and generator.scale_factor == 32
    assert generator.bottleneck_shape(128) == (1024, 4, 4)
    assert generator.bottleneck_shape(256) == (1024, 8, 8)
    assert generator.bottleneck_shape((512, 256)) == (1024, 16, 8)
    # the formula agrees with a real forward of the default widths (encoder only, batch 1, 128 px) ...
    with torch.no_grad():
        assert generator.eval().encode(torch.zeros(1, 1, 128, 128), 0).shape == (1, 1024, 4, 4)
    # ... and of tiny widths on the CPU, with a forward hook on the last encoder block
    tiny = tiny_generator()
    seen = []
    tiny.encoder[-1].register_forward_hook(lambda module, args, output: seen.append(tuple(output.shape[1:])))
    tiny(images(1, 64), 0)
    assert seen == [tiny.bottleneck_shape(64)] == [(16, 4, 4)]


def test_generator_validates_sizes_and_widths():
    with pytest.raises(ValueError, match="multiple of 16"):
        ExaggerationGenerator(image_size=100, **TINY_G)
    ExaggerationGenerator(image_size=96, **TINY_G)
    with pytest.raises(ValueError, match="decoder_channels"):
        ExaggerationGenerator(decoder_channels=(8, 8), **TINY_G)
    with pytest.raises(ValueError, match="multiple of 16"):
        tiny_generator()(torch.zeros(1, 1, 40, 40), 0)
    with pytest.raises(ValueError, match="shape"):
        tiny_generator()(torch.zeros(1, 3, 64, 64), 0)
    with pytest.raises(ValueError, match="multiple of 16"):
        tiny_discriminator()(torch.zeros(1, 1, 40, 40), 0)


def test_custom_decoder_widths_and_channels():
    generator = ExaggerationGenerator(in_channels=3, stem_channels=4, encoder_channels=(8, 8), decoder_channels=(6, 5))
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    assert generator(x, torch.tensor([1, 2])).shape == x.shape
    assert generator.head.in_channels == 5


# ----------------------------------------------------------------------------------- conditioning
def test_condition_enters_only_through_cbn():
    generator = tiny_generator()
    k = generator.num_blocks
    assert len(cbn_layers(generator)) == 2 * 2 * k  # two per encoder and decoder block
    assert all(len(cbn_layers(block)) == 2 for block in [*generator.encoder, *generator.decoder])
    assert not any(isinstance(m, nn.Embedding) for m in generator.modules() if m not in _cbn_tables(generator))
    assert not any(parametrize.is_parametrized(m) for m in generator.modules())  # no spectral norm in G
    # at initialisation (gamma = 1, beta = 0) the bin has no effect
    generator.eval()
    x = images(1, 64)
    assert torch.equal(generator(x, 0), generator(x, 7))


def _cbn_tables(module: nn.Module) -> list[nn.Module]:
    return [table for layer in cbn_layers(module) for table in (layer.gamma, layer.beta)]


def test_changing_only_the_bin_changes_the_output():
    generator = tiny_generator()
    randomise_cbn_tables(generator)
    generator.eval()
    x = images(1, 64)
    outputs = [generator(x, b) for b in (0, 4, 9)]
    assert not torch.allclose(outputs[0], outputs[1], atol=1e-4)
    assert not torch.allclose(outputs[1], outputs[2], atol=1e-4)
    assert torch.equal(generator(x, 4), outputs[1])  # deterministic in eval mode


def test_each_bin_owns_its_cbn_rows():
    generator = tiny_generator().train()
    randomise_cbn_tables(generator)
    out = generator(images(2, 32), torch.tensor([3, 3]))
    out.square().mean().backward()
    layers = cbn_layers(generator)
    assert layers
    for layer in layers:
        for table in (layer.gamma.weight, layer.beta.weight):
            others = torch.cat([table.grad[:3], table.grad[4:]])
            assert torch.count_nonzero(others) == 0
            assert table.grad[3].abs().sum() > 0


# --------------------------------------------------------------------------------------- residual
def test_residual_generator_is_identity_at_init():
    generator = tiny_generator(residual=True)
    x = images(2, 64)
    for mode in (True, False):
        generator.train(mode)
        assert torch.equal(generator(x, torch.tensor([0, 9])), x)
    generator.train()
    (generator(x, torch.tensor([0, 9])) - 0.5).square().mean().backward()
    assert generator.residual_scale.grad is not None and generator.residual_scale.grad != 0
    with torch.no_grad():
        generator.residual_scale.fill_(0.5)
    out = generator(x, torch.tensor([0, 9]))
    assert not torch.equal(out, x) and out.min() >= -1 and out.max() <= 1


# ---------------------------------------------------------------------------------- discriminator
SN_TYPES = (nn.Conv2d, nn.Linear, nn.Embedding)


def test_spectral_norm_on_every_weighted_layer():
    discriminator = tiny_discriminator().train()
    layers = [m for m in discriminator.modules() if isinstance(m, SN_TYPES)]
    expected = 2 * len(TINY_D["channels"]) + (len(TINY_D["channels"]) - 1) + 1 + 1  # convs, shortcuts, psi, V
    assert len(layers) == expected
    assert not [m for m in discriminator.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for layer in layers:
        assert parametrize.is_parametrized(layer, "weight")
        assert "SpectralNorm" in type(layer.parametrizations.weight[0]).__name__
    x = images(2, 32)
    for _ in range(10):  # each training-mode forward runs one more power iteration per layer
        discriminator(x, torch.tensor([1, 8]))
    with torch.no_grad():
        for layer in layers:
            weight = layer.weight
            sigma = torch.linalg.matrix_norm(weight.reshape(weight.shape[0], -1), ord=2)
            assert sigma == pytest.approx(1.0, abs=2e-2), layer


def test_ordinal_projection_is_linear_in_the_bin():
    discriminator = tiny_discriminator().eval()
    bins = torch.arange(NUM_BINS)
    code = discriminator.thermometer(bins)
    assert code.shape == (NUM_BINS, NUM_BINS - 1)
    assert code.sum(dim=1).tolist() == list(range(NUM_BINS))
    x = images(1, 32).expand(NUM_BINS, -1, -1, -1)
    with torch.no_grad():
        scores = discriminator(x, bins).double()
    first = scores[1:] - scores[:-1]
    second = first[1:] - first[:-1]
    assert first.abs().min() > 1e-4  # the bin matters ...
    assert second.abs().max() <= 1e-4 * scores.abs().max().clamp_min(1)  # ... linearly
    # the projection is exactly <(N-1-b) V0 + b V1, phi>
    with torch.no_grad():
        phi = discriminator.features(x[:1])
        v = discriminator.embedding.weight
        b = 6
        projection = ((NUM_BINS - 1 - b) * v[0] + b * v[1]) @ phi[0]
        psi = discriminator.linear(phi)[0, 0]
    assert (scores[b] - psi).item() == pytest.approx(projection.item(), rel=1e-4, abs=1e-4)


def test_discriminator_gradients_reach_the_image():
    discriminator = tiny_discriminator()
    x = images(2, 32).requires_grad_(True)
    discriminator(x, torch.tensor([2, 7])).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


# ---------------------------------------------------------------------------------------- counts
def test_count_parameters():
    assert count_parameters(nn.Linear(3, 2)) == 8
    frozen = nn.Sequential(nn.Linear(3, 2), nn.Linear(2, 1))
    frozen[0].requires_grad_(False)
    assert count_parameters(frozen) == 11 and count_parameters(frozen, trainable_only=True) == 3
    # spectral norm's u/v vectors are buffers, not parameters
    discriminator = tiny_discriminator()
    assert count_parameters(discriminator) == sum(p.numel() for p in discriminator.parameters())
    assert count_parameters(ExaggerationDiscriminator(channels=(4, 4))) == (
        (1 * 4 * 9 + 4) + (4 * 4 * 9 + 4) + (1 * 4 + 4) + (4 * 4 * 9 + 4) * 2 + (4 + 1) + 2 * 4
    )

"""BlackBoxClassifier: outputs, activations, frozen-but-differentiable behaviour, loading, bundle classifier."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser
from monai.networks.nets import DenseNet
from torch import nn

from monai_exaggeration.bundle import (
    CLASSIFIER_CONFIGS,
    default_bundle_root,
    load_bundle_classifier,
)
from monai_exaggeration.networks.classifier import (
    BlackBoxClassifier,
    load_state_dict_file,
)

SIZE = 32
LABELS = ["no_finding", "cardiomegaly"]


def small_network(seed: int = 0, out_channels: int = 2) -> nn.Module:
    torch.manual_seed(seed)
    return DenseNet(
        spatial_dims=2, in_channels=1, out_channels=out_channels, init_features=8, growth_rate=4, block_config=(2, 2)
    )


def _randomise_bn_statistics(network: nn.Module, seed: int = 1) -> nn.Module:
    """Non-trivial running statistics, so eval-mode and train-mode BN give different outputs."""
    generator = torch.Generator().manual_seed(seed)
    for module in network.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.running_mean.copy_(torch.randn(module.running_mean.shape, generator=generator) * 0.1)
            module.running_var.copy_(torch.rand(module.running_var.shape, generator=generator) + 0.5)
    return network


@pytest.fixture()
def network() -> nn.Module:
    return _randomise_bn_statistics(small_network())


@pytest.fixture()
def images() -> torch.Tensor:
    return torch.rand(4, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(2)) * 2 - 1


def bn_layers(module: nn.Module) -> list[nn.Module]:
    return [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


# ------------------------------------------------------------------ outputs and activations


def test_output_shape_and_range(network: nn.Module, images: torch.Tensor) -> None:
    f = BlackBoxClassifier(network)
    out = f(images)
    assert out.shape == (4,)
    assert bool(((out >= 0) & (out <= 1)).all())
    assert f.logits(images).shape == (4, 2)


def test_output_by_index_and_by_name(network: nn.Module, images: torch.Tensor) -> None:
    by_index = BlackBoxClassifier(network, output=1)
    by_name = BlackBoxClassifier(network, output="cardiomegaly", labels=LABELS)
    assert by_name.output_index == 1
    assert torch.equal(by_index(images), by_name(images))
    first = BlackBoxClassifier(network, output="no_finding", labels=LABELS)
    assert torch.equal(first(images), torch.sigmoid(first.logits(images))[:, 0])
    assert not torch.allclose(first(images), by_name(images))


def test_unknown_output_name_raises(network: nn.Module) -> None:
    with pytest.raises(ValueError, match="pneumothorax"):
        BlackBoxClassifier(network, output="pneumothorax", labels=LABELS)
    with pytest.raises(ValueError):
        BlackBoxClassifier(network, output="cardiomegaly")  # a name needs labels
    with pytest.raises(ValueError, match="activation"):
        BlackBoxClassifier(network, activation="relu")


@pytest.mark.parametrize("activation", ("sigmoid", "softmax", "none"))
def test_activations_match_manual_computation(network: nn.Module, images: torch.Tensor, activation: str) -> None:
    f = BlackBoxClassifier(network, output=1, activation=activation)
    logits = f.logits(images)
    manual = {
        "sigmoid": 1.0 / (1.0 + torch.exp(-logits[:, 1])),
        "softmax": torch.exp(logits[:, 1]) / torch.exp(logits).sum(dim=1),
        "none": logits[:, 1],
    }[activation]
    assert torch.allclose(f(images), manual, atol=1e-6)
    if activation == "softmax":
        both = torch.stack([BlackBoxClassifier(network, output=i, activation="softmax")(images) for i in (0, 1)], 1)
        assert torch.allclose(both.sum(dim=1), torch.ones(4), atol=1e-6)


# ------------------------------------------------------------------ frozen and differentiable


def test_input_gradients_flow_but_weights_stay_frozen(network: nn.Module, images: torch.Tensor) -> None:
    f = BlackBoxClassifier(network, output=1)
    x = images.clone().requires_grad_()
    f(x).sum().backward()
    assert x.grad is not None
    assert float(x.grad.abs().sum()) > 0
    assert bool(torch.isfinite(x.grad).all())
    parameters = list(f.parameters())
    assert parameters
    for parameter in parameters:
        assert parameter.requires_grad is False
        assert parameter.grad is None


def test_train_keeps_eval_mode_on_wrapper_and_parent(network: nn.Module, images: torch.Tensor) -> None:
    f = BlackBoxClassifier(network, output=1)
    assert bn_layers(f)
    reference = f(images).detach()

    returned = f.train()
    assert returned is f
    assert all(not m.training for m in f.modules())

    parent = nn.Sequential(nn.Identity(), f)
    parent.train()
    assert parent.training  # the parent itself does train
    assert all(not m.training for m in f.modules())
    f.train(True)
    assert all(not m.training for m in f.modules())

    # eval-mode BN: outputs do not depend on batch composition, and match the reference
    with torch.no_grad():
        full = parent(images)
        assert torch.allclose(f(images[:1]), full[:1], atol=1e-6)
        assert torch.allclose(f(images[2:]), full[2:], atol=1e-6)
        assert torch.allclose(full, reference, atol=1e-6)
    # and the running statistics were not updated by the forward passes
    for layer in bn_layers(f):
        assert layer.num_batches_tracked.item() == 0


def test_train_mode_would_change_outputs(network: nn.Module, images: torch.Tensor) -> None:
    """Sanity check of the test above: this network's BN really is batch dependent in train mode."""
    network.train()
    with torch.no_grad():
        assert not torch.allclose(network(images[:2])[:1], network(images)[:1], atol=1e-4)


# ------------------------------------------------------------------ loading


def test_from_state_dict_raw_and_checkpoint(tmp_path: Path, network: nn.Module, images: torch.Tensor) -> None:
    network.eval()
    with torch.no_grad():
        expected = torch.sigmoid(network(images))[:, 1]
    raw = tmp_path / "raw.pt"
    torch.save(network.state_dict(), raw)
    checkpoint = tmp_path / "checkpoint.pt"
    torch.save({"model": network.state_dict()}, checkpoint)
    multi = tmp_path / "multi.pt"  # CheckpointSaver with several objects
    torch.save({"model": network.state_dict(), "optimizer": {"state": {}, "param_groups": []}}, multi)
    for path in (raw, checkpoint, multi):
        f = BlackBoxClassifier.from_state_dict(small_network(seed=99), path, output=1)
        with torch.no_grad():
            assert torch.equal(f(images), expected), path.name
    assert set(load_state_dict_file(checkpoint)) == set(network.state_dict())


def test_from_state_dict_missing_file_names_path(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "classifier.pt"
    with pytest.raises(FileNotFoundError) as info:
        BlackBoxClassifier.from_state_dict(small_network(), missing)
    assert str(missing) in str(info.value)


def test_from_torchscript(tmp_path: Path, network: nn.Module, images: torch.Tensor) -> None:
    network.eval()
    traced = torch.jit.trace(network, images[:1])
    path = tmp_path / "classifier.ts"
    traced.save(str(path))
    f = BlackBoxClassifier.from_torchscript(path, output="cardiomegaly", labels=LABELS)
    with torch.no_grad():
        assert torch.allclose(f(images), torch.sigmoid(network(images))[:, 1], atol=1e-6)
    x = images.clone().requires_grad_()
    f(x).sum().backward()
    assert float(x.grad.abs().sum()) > 0
    assert all(not p.requires_grad for p in f.parameters())
    assert all(p.grad is None for p in f.parameters())


def test_from_torchscript_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="missing.ts"):
        BlackBoxClassifier.from_torchscript(tmp_path / "missing.ts")


def test_plain_callable(images: torch.Tensor) -> None:
    def brightness(x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(1, 2, 3))[:, None] * 4.0

    f = BlackBoxClassifier(brightness)
    assert isinstance(f.model, nn.Module)
    x = images.clone().requires_grad_()
    out = f(x)
    assert out.shape == (4,)
    assert torch.allclose(out, torch.sigmoid(images.mean(dim=(1, 2, 3)) * 4.0))
    out.sum().backward()
    assert float(x.grad.abs().sum()) > 0
    f.train()
    assert not f.training


# ------------------------------------------------------------------ the bundle's classifier


@pytest.fixture(scope="module")
def bundle_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = Path(default_bundle_root("cxr_classifier"))
    parser = ConfigParser()
    parser.read_config([str(root / name) for name in CLASSIFIER_CONFIGS])
    torch.manual_seed(0)
    network = parser.get_parsed_content("network_def")
    path = tmp_path_factory.mktemp("bundle") / "classifier.pt"
    torch.save(network.state_dict(), path)
    return path


def test_load_bundle_classifier(bundle_weights: Path) -> None:
    f = load_bundle_classifier(weights=bundle_weights, device="cpu")
    assert f.labels == ["cardiomegaly"]
    assert f.output_index == 0
    assert all(not p.requires_grad for p in f.parameters())
    state = torch.load(bundle_weights, weights_only=True)
    loaded = f.model.state_dict()
    assert set(loaded) == set(state)
    assert all(torch.equal(loaded[k], state[k]) for k in state)
    with torch.no_grad():
        out = f(torch.zeros(2, 1, 64, 64))
    assert out.shape == (2,)
    assert bool(((out >= 0) & (out <= 1)).all())


def test_load_bundle_classifier_missing_weights(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="absent.pt"):
        load_bundle_classifier(weights=tmp_path / "absent.pt", device="cpu")

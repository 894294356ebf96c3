"""The self-supervised CXR encoder: network, two-view transforms, contrastive loss, training bundle, shipped weights."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO_ROOT, config_arg, run_bundle

from monai_exaggeration.losses import PairedViewContrastiveLoss, paired_views_batch
from monai_exaggeration.metrics import encoder_features, identity_rate, view_retrieval_accuracy
from monai_exaggeration.networks import CXREncoder
from monai_exaggeration.transforms import two_view_preprocessing

TRAIN_ENCODER = [str(REPO_ROOT / "bundles" / "cxr_encoder" / "configs" / "train.json")]


def test_encoder_features_and_projection_shapes() -> None:
    encoder = CXREncoder(widths=(8, 8, 16, 24), projection_dim=12).eval()
    images = torch.rand(3, 1, 64, 64) * 2 - 1
    assert encoder.features(images).shape == (3, 24) and encoder(images).shape == (3, 12)
    assert encoder_features(encoder, images, batch_size=2).shape == (3, 24)
    with pytest.raises(ValueError, match="4 entries"):
        CXREncoder(widths=(8, 16))


def test_contrastive_loss_prefers_matching_views() -> None:
    torch.manual_seed(0)
    embeddings = torch.randn(16, 8)
    loss = PairedViewContrastiveLoss(temperature=0.1)
    matched = loss(torch.cat([embeddings, embeddings + 0.01 * torch.randn(16, 8)]))
    shuffled = loss(torch.cat([embeddings, embeddings[torch.randperm(16)]]))
    assert float(matched) < float(shuffled)
    with pytest.raises(ValueError, match="even"):
        loss(torch.randn(5, 8))


def test_paired_views_batch_stacks_both_views() -> None:
    batch = {"image": torch.zeros(4, 1, 8, 8), "image_2": torch.ones(4, 1, 8, 8)}
    inputs, target = paired_views_batch(batch, device="cpu")
    assert inputs.shape == (8, 1, 8, 8) and target is None
    assert float(inputs[:4].sum()) == 0 and float(inputs[4:].mean()) == 1


def test_two_views_of_one_radiograph_differ(tiny_dataset: Path) -> None:
    record = {"image": str(next((tiny_dataset / "images").glob("*.png")))}
    item = two_view_preprocessing(64)(record)
    first, second = torch.as_tensor(item["image"]), torch.as_tensor(item["image_2"])
    assert first.shape == second.shape == (1, 64, 64)
    assert float((first - second).abs().mean()) > 0.01  # independent augmentations
    assert float(torch.corrcoef(torch.stack([first.flatten(), second.flatten()]))[0, 1]) > 0.3  # still one image


def test_view_retrieval_finds_distinct_images(tmp_path: Path) -> None:
    """Coarse pixels of two augmented views of clearly different images find their own image; chance is 1/8."""
    import imageio.v3 as iio
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(0)
    records = []
    for index in range(8):
        pattern = gaussian_filter(rng.uniform(size=(96, 96)), 12)
        pattern = (pattern - pattern.min()) / np.ptp(pattern)
        iio.imwrite(tmp_path / f"{index}.png", np.round(pattern * 255).astype(np.uint8))
        records.append({"image": str(tmp_path / f"{index}.png")})
    accuracy = view_retrieval_accuracy(lambda x: torch.nn.functional.avg_pool2d(x, 16).flatten(1), records, 64)
    assert accuracy >= 0.75
    assert view_retrieval_accuracy(lambda x: torch.nn.functional.avg_pool2d(x, 16).flatten(1), records, 64) == accuracy


def test_train_encoder_bundle_runs_and_reports_retrieval(tiny_dataset: Path, tmp_path: Path) -> None:
    result = run_bundle(
        [
            "run",
            "training",
            "--config_file",
            config_arg(TRAIN_ENCODER),
            "--bundle_root",
            str(tmp_path),
            "--dataset_dir",
            str(tiny_dataset),
            "--max_epochs",
            "1",
            "--batch_size",
            "4",
            "--network_def#widths",
            "[8,8,16,16]",
        ],
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    state = torch.load(tmp_path / "models" / "encoder.pt", map_location="cpu")
    assert any(key.startswith("backbone.") for key in state)
    report = json.loads((tmp_path / "eval" / "encoder" / "view_retrieval.json").read_text())
    assert 0.0 <= report["view_retrieval_top1"] <= 1.0 and report["num_images"] >= 1


def test_shipped_encoder_loads_and_separates_patients(rg1_uncr: Path) -> None:
    """The shipped weights load through the bundle, and two views of one chest are closer than two other chests."""
    from monai_exaggeration.bundle import load_bundle_encoder
    from monai_exaggeration.transforms import load_cxr

    encoder = load_bundle_encoder()
    assert not any(p.requires_grad for p in encoder.parameters())
    chest = load_cxr(rg1_uncr, 64)[None]
    shifted = torch.roll(chest, shifts=2, dims=-1)
    other = torch.flip(chest, dims=[-2])  # upside down: not a plausible view of the same chest
    features = encoder_features(encoder, torch.cat([chest, shifted, other]))
    assert np.isfinite(features.numpy()).all()
    assert float(torch.dist(features[0], features[1])) < float(torch.dist(features[0], features[2]))

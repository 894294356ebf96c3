"""The bundles, one model each: shape, metadata schema, training properties; the classifier bundle's real runs
through ``python -m monai.bundle``; the explainer's configs load the other models from their own bundles."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import REPO_ROOT, config_arg, run_bundle

import monai_exaggeration
from monai_exaggeration.bundle import BUNDLES, default_bundle_root, load_bundle_classifier, load_bundle_segmenter

BUNDLES_DIR = REPO_ROOT / "bundles"
SCHEMA = BUNDLES_DIR / "cxr" / "configs" / "metadata_schema.json"
CONFIGS = BUNDLES_DIR / "cxr_classifier" / "configs"
CLASSIFIER_CONFIGS = [str(CONFIGS / "train.json"), str(CONFIGS / "classifier_cpu.json")]
EXPLAINER_CONFIGS = BUNDLES_DIR / "cxr" / "configs"

#: Each bundle: its training configs (merged in this order), quick overrides for a property check, its shipped weights.
TRAINING = {
    "cxr": (
        ["train.json", "train_cpu.json"],
        {
            "image_size": 32,
            "batch_size": 4,
            "num_val_images": 4,
            "network_def#encoder_channels": [8, 16],
            "discriminator_def#channels": [8, 16, 16],
        },
        "explainer.pt",
    ),
    "cxr_classifier": (["train.json", "classifier_cpu.json"], {}, "classifier.pt"),
    "cxr_segmentation": (["train.json"], {}, "segmentation.pt"),
    "cxr_encoder": (["train.json"], {}, "encoder.pt"),
    "cxr_autoencoder": (["train.json"], {}, "autoencoder.pt"),
}


@pytest.fixture(scope="module")
def tiny_segmentation(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The 16 tiny chest crops with heart and lung rectangles as masks, laid out like wingspan-ctr."""
    from PIL import Image

    folder = tmp_path_factory.mktemp("tiny_segmentation")
    boxes = {"heart": (50, 80, 35, 65), "left_lung": (15, 85, 55, 85), "right_lung": (15, 85, 10, 40)}
    for sub in ["png", *(f"mask/{name}" for name in boxes)]:
        (folder / sub).mkdir(parents=True)
    for image in sorted((tiny_dataset / "images").glob("*.png")):
        (folder / "png" / image.name).write_bytes(image.read_bytes())
        for name, (top, bottom, left, right) in boxes.items():
            mask = np.zeros((96, 96), dtype=np.uint8)
            mask[top:bottom, left:right] = 255
            Image.fromarray(mask).save(folder / "mask" / name / image.name)
    return folder


def test_every_bundle_folder_is_known() -> None:
    found = {path.name for path in BUNDLES_DIR.iterdir() if (path / "configs").is_dir()}
    assert found == set(BUNDLES) == set(TRAINING)
    assert all(Path(default_bundle_root(name)) == BUNDLES_DIR / name for name in BUNDLES)
    with pytest.raises(ValueError, match="cxr_classifier"):
        default_bundle_root("classifier")


@pytest.mark.parametrize("name", list(TRAINING))
def test_bundle_shape_and_metadata(name: str) -> None:
    """Model-zoo shape; metadata valid against the schema, for the package version this tree is."""
    from monai.bundle import verify_metadata

    root = BUNDLES_DIR / name
    parts = ["configs/metadata.json", "configs/logging.conf", "docs/README.md", "LICENSE"]
    for part in parts + [f"configs/{config}" for config in TRAINING[name][0]]:
        assert (root / part).is_file(), part
    assert (root / "models" / TRAINING[name][2]).is_file()
    assert (root / "LICENSE").read_bytes() == (BUNDLES_DIR / "cxr" / "LICENSE").read_bytes()
    verify_metadata(meta_file=str(root / "configs" / "metadata.json"), filepath=str(SCHEMA))
    metadata = json.loads((root / "configs" / "metadata.json").read_text())
    assert metadata["required_packages_version"]["monai_exaggeration"] == monai_exaggeration.__version__
    assert metadata["version"] in metadata["changelog"]


def test_metadata_schema_rejects_incomplete_metadata(tmp_path: Path) -> None:
    from monai.bundle import verify_metadata

    broken = json.loads((EXPLAINER_CONFIGS / "metadata.json").read_text())
    del broken["network_data_format"]
    (tmp_path / "metadata.json").write_text(json.dumps(broken))
    with pytest.raises(ValueError, match="network_data_format"):
        verify_metadata(meta_file=str(tmp_path / "metadata.json"), filepath=str(SCHEMA))


def _explainer_record() -> dict:
    """The architecture record stored in the shipped explainer file."""
    path = BUNDLES_DIR / "cxr" / "models" / "explainer.pt"
    return torch.load(path, map_location="cpu", weights_only=True)["explainer"]


def test_explainer_metadata_describes_the_shipped_generator() -> None:
    metadata = json.loads((EXPLAINER_CONFIGS / "metadata.json").read_text())
    record = _explainer_record()
    size = record["image_size"]
    assert (metadata["num_bins"], metadata["image_size"]) == (record["num_bins"], size)
    inputs, outputs = metadata["network_data_format"]["inputs"], metadata["network_data_format"]["outputs"]
    assert inputs["image"]["spatial_shape"] == [size, size] and inputs["image"]["value_range"] == [-1, 1]
    assert inputs["target_bin"]["value_range"] == [0, record["num_bins"] - 1]
    pred = outputs["pred"]
    if record.get("output") == "deformation":  # G's output: a velocity field on the coarse grid, in grid pixels
        args = record["args"]
        grid = size // args["grid_factor"]
        bound = round(args["max_velocity"] * grid, 6)
        assert pred["spatial_shape"] == [grid, grid]
        assert pred["num_channels"] == (3 if args.get("intensity", 0) > 0 else 2)
        assert pred["value_range"] == [-bound, bound]
    else:
        assert pred["spatial_shape"] == [size, size] and pred["value_range"] == [-1, 1]


@pytest.mark.parametrize("name", list(TRAINING))
def test_train_config_properties(name: str, tiny_dataset: Path, tiny_segmentation: Path, tmp_path: Path) -> None:
    """``check_properties`` of each bundle's training config; the test split stays out of training."""
    from monai.bundle import ConfigWorkflow

    configs, overrides, _ = TRAINING[name]
    root = BUNDLES_DIR / name
    dataset = tiny_segmentation if name == "cxr_segmentation" else tiny_dataset
    workflow = ConfigWorkflow(
        config_file=[str(root / "configs" / config) for config in configs],
        workflow_type="train",
        bundle_root=str(tmp_path),
        meta_file=str(root / "configs" / "metadata.json"),
        dataset_dir=str(dataset),
        **overrides,
    )
    workflow.initialize()
    assert workflow.check_properties() == []
    assert 0 < len(workflow.train_dataset_data) < 16  # the validation and test splits are held out


def test_explainer_configs_load_the_other_models_from_their_own_bundles(tmp_path: Path) -> None:
    """A scratch ``bundle_root`` of the explainer (nothing in it) changes nothing about where the classifier,
    segmentation and encoder come from: each config names their bundles."""
    from monai.bundle import ConfigParser

    from monai_exaggeration.networks import BlackBoxClassifier, CXREncoder, HeartLungSegmenter

    training = ConfigParser()
    training.read_config([str(EXPLAINER_CONFIGS / name) for name in ("train.json", "train_cpu.json")])
    training["bundle_root"] = str(tmp_path)
    assert Path(training.get_parsed_content("classifier_bundle")) == BUNDLES_DIR / "cxr_classifier"
    assert isinstance(training.get_parsed_content("classifier"), BlackBoxClassifier)
    assert isinstance(training.get_parsed_content("change_region#segmenter"), HeartLungSegmenter)
    evaluation = ConfigParser()
    evaluation.read_config([str(EXPLAINER_CONFIGS / name) for name in ("inference.json", "evaluate.json")])
    evaluation["bundle_root"] = str(tmp_path)
    for key, bundle in {
        "classifier_bundle": "cxr_classifier",
        "segmentation_bundle": "cxr_segmentation",
        "encoder_bundle": "cxr_encoder",
    }.items():
        assert Path(evaluation.get_parsed_content(key)) == BUNDLES_DIR / bundle
    assert isinstance(evaluation.get_parsed_content("classifier")(), BlackBoxClassifier)
    assert isinstance(evaluation.get_parsed_content("segmenter")(), HeartLungSegmenter)
    assert isinstance(evaluation.get_parsed_content("encoder")(), CXREncoder)


def test_shipped_classifier_matches_the_explainers_recorded_fingerprint() -> None:
    from monai_exaggeration.networks import classifier_fingerprint

    record = _explainer_record()
    assert classifier_fingerprint(load_bundle_classifier(device="cpu")) == record["classifier"]


def test_loaders_refuse_a_folder_that_is_not_the_models_bundle(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="not a classifier bundle.*bundles/cxr_classifier"):
        load_bundle_classifier(BUNDLES_DIR / "cxr", device="cpu")
    with pytest.raises(FileNotFoundError, match="not a segmentation bundle.*bundles/cxr_segmentation"):
        load_bundle_segmenter(tmp_path, device="cpu")


@pytest.mark.slow
def test_train_then_evaluate_through_monai_bundle(tiny_dataset: Path, tmp_path: Path) -> None:
    """`run training` trains and saves the best checkpoint; the evaluate config scores the test split."""
    bundle_root = tmp_path / "bundle"
    common = ["--bundle_root", str(bundle_root), "--dataset_dir", str(tiny_dataset), "--image_size", "64"]
    result = run_bundle(
        [
            "run",
            "training",
            "--config_file",
            config_arg(CLASSIFIER_CONFIGS),
            *common,
            "--train#trainer#max_epochs",
            "2",
            "--batch_size",
            "4",
        ]
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (bundle_root / "models" / "classifier.pt").is_file()
    assert list((bundle_root / "eval" / "classifier").glob("events.out.tfevents.*")), "no TensorBoard log"
    assert "val_auc" in result.stdout + result.stderr

    evaluate = CLASSIFIER_CONFIGS + [str(CONFIGS / "evaluate.json")]
    result = run_bundle(["run", "--config_file", config_arg(evaluate), *common])  # plain `run`
    assert result.returncode == 0, result.stderr[-3000:]
    test_dir = bundle_root / "eval" / "classifier" / "test"
    scores = pd.read_csv(test_dir / "scores.csv")
    assert len(scores) == 2 and set(scores["label"]) == {0, 1}
    assert scores["score"].between(0, 1).all()
    metrics = json.loads((test_dir / "metrics.json").read_text())
    assert metrics["n"] == 2 and 0.0 <= metrics["roc_auc"] <= 1.0
    assert (test_dir / "roc.png").stat().st_size > 1000


def test_missing_dataset_gives_clear_message(tmp_path: Path) -> None:
    result = run_bundle(
        [
            "run",
            "training",
            "--config_file",
            config_arg(CLASSIFIER_CONFIGS),
            "--bundle_root",
            str(tmp_path),
            "--dataset_dir",
            str(tmp_path / "nowhere"),
        ],
        timeout=120,
    )
    assert result.returncode != 0
    assert "Dataset not found" in result.stderr and "docs/datasets.md" in result.stderr

"""The classifier bundle: metadata schema, bundle properties, and real runs through ``python -m monai.bundle``."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from conftest import REPO_ROOT, config_arg, run_bundle

BUNDLE = REPO_ROOT / "bundles" / "cxr"
CONFIGS = BUNDLE / "configs"
CLASSIFIER_CONFIGS = [str(CONFIGS / "train_classifier.json"), str(CONFIGS / "classifier_cpu.json")]


def test_metadata_verifies_against_schema_in_repo(tmp_path: Path) -> None:
    from monai.bundle import verify_metadata

    verify_metadata(meta_file=str(CONFIGS / "metadata.json"), filepath=str(CONFIGS / "metadata_schema.json"))
    broken = json.loads((CONFIGS / "metadata.json").read_text())
    del broken["network_data_format"]
    (tmp_path / "metadata.json").write_text(json.dumps(broken))
    with pytest.raises(ValueError, match="network_data_format"):
        verify_metadata(meta_file=str(tmp_path / "metadata.json"), filepath=str(CONFIGS / "metadata_schema.json"))


def test_check_properties(tiny_dataset: Path, tmp_path: Path) -> None:
    from monai.bundle import ConfigWorkflow

    workflow = ConfigWorkflow(
        config_file=CLASSIFIER_CONFIGS,
        workflow_type="train",
        bundle_root=str(tmp_path),
        meta_file=str(CONFIGS / "metadata.json"),
        dataset_dir=str(tiny_dataset),
    )
    workflow.initialize()
    assert workflow.check_properties() == []
    assert workflow.max_epochs == 20
    assert len(workflow.train_dataset_data) + len(workflow.val_dataset_data) < 16  # the test split is held out


@pytest.mark.slow
def test_train_then_evaluate_through_monai_bundle(tiny_dataset: Path, tmp_path: Path) -> None:
    """`run training` trains and saves the best checkpoint; the evaluate config scores the test split."""
    bundle_root = tmp_path / "bundle"
    common = ["--bundle_root", str(bundle_root), "--dataset_dir", str(tiny_dataset), "--image_size", "64"]
    result = run_bundle(
        ["run", "training", "--config_file", config_arg(CLASSIFIER_CONFIGS), *common,
         "--train#trainer#max_epochs", "2", "--batch_size", "4"]
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (bundle_root / "models" / "classifier.pt").is_file()
    assert list((bundle_root / "eval" / "classifier").glob("events.out.tfevents.*")), "no TensorBoard log"
    assert "val_auc" in result.stdout + result.stderr

    evaluate = CLASSIFIER_CONFIGS + [str(CONFIGS / "evaluate_classifier.json")]
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
        ["run", "training", "--config_file", config_arg(CLASSIFIER_CONFIGS), "--bundle_root", str(tmp_path),
         "--dataset_dir", str(tmp_path / "nowhere")],
        timeout=120,
    )
    assert result.returncode != 0
    assert "Dataset not found" in result.stderr and "docs/datasets.md" in result.stderr

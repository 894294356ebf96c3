"""Findings by profile (issue 27): the finding comes from the explainer file's record; a finding without a
registered profile runs through training, inference, the evaluation (without CTR) and the SR."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import run_bundle
from inference.helpers import BUNDLE, EVALUATE, INFERENCE, ONE_THREAD
from PIL import Image

from monai_exaggeration.findings import CARDIOMEGALY, DEFAULT_FINDING, finding_profile

CONFIGS = Path(BUNDLE) / "configs"
CLASSIFIER = str(Path(BUNDLE).parent / "cxr_classifier" / "models" / "classifier.pt")
TINY = [
    "--image_size",
    "32",
    "--batch_size",
    "4",
    "--num_val_images",
    "4",
    "--classifier_weights",
    CLASSIFIER,
    "--network_def#stem_channels",
    "8",
    "--network_def#encoder_channels",
    "[8,16]",
    "--discriminator_def#channels",
    "[8,16,16]",
]


def test_profiles() -> None:
    assert finding_profile(DEFAULT_FINDING) is CARDIOMEGALY
    assert finding_profile("Cardiomegaly") is CARDIOMEGALY
    assert CARDIOMEGALY.code == ("287272002", "SCT", "Cardiomegaly") and CARDIOMEGALY.measure == "ctr"
    other = finding_profile("pleural_effusion")
    assert other.name == "pleural_effusion" and other.label == "pleural_effusion"
    assert other.code is None and other.region is None and other.measure is None


def _labelled_folder(folder: Path, column: str, count: int = 30) -> Path:
    rng = np.random.default_rng(1)
    rows = []
    for index in range(count):
        folder.mkdir(parents=True, exist_ok=True)
        gradient = np.linspace(0, 1, 96)[:, None] * np.linspace(1, 0.4, 96)[None, :]
        pixels = np.clip(gradient * 200 + rng.normal(0, 12, (96, 96)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"xray_{index}.png")
        rows.append({"image": f"xray_{index}.png", column: index % 2})
    pd.DataFrame(rows).to_csv(folder / "labels.csv", index=False)
    return folder


@pytest.mark.slow
def test_a_second_finding_runs_through_training_inference_evaluation_and_the_report(tmp_path: Path) -> None:
    data = _labelled_folder(tmp_path / "data", "pleural_effusion")
    root = tmp_path / "bundle"
    result = run_bundle(
        [
            "run",
            "training",
            "--config_file",
            str(CONFIGS / "train.json"),
            "--bundle_root",
            str(root),
            "--dataset_dir",
            str(data),
            "--finding",
            "pleural_effusion",
            *TINY,
            "--max_iterations",
            "2",
            "--val_interval",
            "2",
            "--n_critic",
            "1",
        ],
        cwd=tmp_path,
        env=ONE_THREAD,
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    weights = root / "models" / "explainer_final.pt"

    out = tmp_path / "out"
    result = run_bundle(
        [
            "run",
            "inference",
            "--config_file",
            INFERENCE,
            "--bundle_root",
            BUNDLE,
            "--input",
            str(data / "xray_0.png"),
            "--output_dir",
            str(out),
            "--explainer_weights",
            str(weights),
            "--classifier_weights",
            CLASSIFIER,
            "--quicklook",
            "false",
        ],
        cwd=tmp_path,
        env=ONE_THREAD,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    sources = pd.read_csv(out / "sources.csv")
    assert sources["finding"].tolist() == ["pleural_effusion"]  # from the explainer file's record

    evaluation = tmp_path / "evaluation"
    result = run_bundle(
        [
            "run",
            "evaluating",
            "--config_file",
            f"['{INFERENCE}','{EVALUATE}']",
            "--bundle_root",
            BUNDLE,
            "--dataset_dir",
            str(data),
            "--split_fractions",
            "[0.0, 1.0, 0.0]",
            "--explainer_weights",
            str(weights),
            "--classifier_weights",
            CLASSIFIER,
            "--output_dir",
            str(evaluation),
            "--occlusion",
            "false",
            "--num_examples",
            "1",
        ],
        cwd=tmp_path,
        env=ONE_THREAD,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((evaluation / "metrics.json").read_text())
    assert metrics["n_images"] == 30 and metrics["n_images_by_label"] == {"0": 15, "1": 15}  # the label column
    assert metrics["clinical_faithfulness"]["n_series"] == 0  # no clinical measure for this finding: no CTR
    per_image = pd.read_csv(evaluation / "per_image.csv")
    assert per_image["ctr_first"].isna().all() and per_image["change_inside"].isna().all()  # no region either
    assert per_image["geometric_share"].notna().any()  # the region-free measures are there

    from monai_exaggeration.dicom.presentation import series_rows
    from monai_exaggeration.dicom.report import read_report, write_report

    report = write_report(series_rows(out / "frames.csv"), tmp_path / "sr", "pleural_effusion", data / "xray_0.png")
    groups = read_report(report)
    assert len(groups) == 10 and all(group["ctr"] is None for group in groups)
    import pydicom

    def code_values(dataset) -> set[str]:
        found = {str(dataset.CodeValue)} if "CodeValue" in dataset else set()
        for element in dataset:
            if element.VR == "SQ":
                for item in element.value:
                    found |= code_values(item)
        return found

    codes = code_values(pydicom.dcmread(report))
    assert "PLEURAL_EFFUSION" in codes and "287272002" not in codes  # a local code, not cardiomegaly's

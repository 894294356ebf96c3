"""Cardiothoracic ratio from masks, the heart/lung segmentation data, and the segmentation bundle workflows."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import REPO_ROOT, config_arg, run_bundle
from PIL import Image

from monai_exaggeration.data import STRUCTURES, load_segmentation_split, segmentation_preprocessing
from monai_exaggeration.metrics import cardiothoracic_ratio, horizontal_extent, largest_component

CONFIGS = REPO_ROOT / "bundles" / "cxr_segmentation" / "configs"


def _rect(shape, rows, cols) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[rows[0] : rows[1], cols[0] : cols[1]] = True
    return mask


def test_ctr_of_known_geometry_ignores_specks_and_handles_missing() -> None:
    shape = (200, 200)
    right_lung = _rect(shape, (40, 160), (30, 90))  # columns 30..89
    left_lung = _rect(shape, (40, 160), (110, 130))  # columns 110..129 -> thorax 30..129 = 100 columns
    heart = _rect(shape, (100, 150), (70, 110))  # 40 columns
    assert horizontal_extent(heart) == 40
    assert cardiothoracic_ratio(heart, left_lung, right_lung) == pytest.approx(0.4)
    speck = heart.copy()
    speck[5, 195] = True  # a spurious pixel far away must not widen the heart
    assert cardiothoracic_ratio(speck, left_lung, right_lung) == pytest.approx(0.4)
    probabilities = torch.from_numpy(heart.astype(np.float32) * 0.9)[None]  # (1, H, W) probabilities work too
    assert cardiothoracic_ratio(probabilities, left_lung, right_lung) == pytest.approx(0.4)
    assert np.isnan(cardiothoracic_ratio(np.zeros(shape), left_lung, right_lung))
    assert largest_component(np.zeros(shape, dtype=bool)).sum() == 0
    with pytest.raises(ValueError, match="2-D"):
        cardiothoracic_ratio(np.zeros((2, 3, 4, 5)), left_lung, right_lung)


def test_ctr_of_ground_truth_masks_matches_the_dataset(wingspan: Path) -> None:
    truth = pd.read_csv(wingspan / "ctr_ground_truth.csv").head(60)
    errors = []
    for name, ctr in zip(truth["id"], truth["ctr"]):
        masks = [np.asarray(Image.open(wingspan / "mask" / s / name).convert("L")) >= 128 for s in STRUCTURES]
        errors.append(abs(cardiothoracic_ratio(*masks) - ctr))
    assert np.mean(errors) < 0.002 and np.max(errors) < 0.01


def test_segmentation_split_is_deterministic_disjoint_and_complete(wingspan: Path, tmp_path: Path) -> None:
    splits = {s: load_segmentation_split(wingspan, s) for s in ("train", "val", "test")}
    ids = [set(r["id"] for r in records) for records in splits.values()]
    assert sum(len(i) for i in ids) == len(list((wingspan / "png").glob("*.png")))
    assert ids[0].isdisjoint(ids[1]) and ids[0].isdisjoint(ids[2]) and ids[1].isdisjoint(ids[2])
    assert [r["id"] for r in load_segmentation_split(wingspan, "test")] == [r["id"] for r in splits["test"]]
    assert len(splits["train"]) > 3 * len(splits["test"]) / 2
    known = [r for r in splits["test"] if not np.isnan(r["ctr"])]
    assert known and all(0.3 < r["ctr"] < 0.9 for r in known)
    with pytest.raises(FileNotFoundError, match="png/"):
        load_segmentation_split(tmp_path, "train")
    with pytest.raises(ValueError):
        load_segmentation_split(wingspan, "holdout")


def test_segmentation_preprocessing_gives_aligned_binary_labels(wingspan: Path) -> None:
    record = load_segmentation_split(wingspan, "val")[0]
    item = segmentation_preprocessing(64)(record)
    assert item["image"].shape == (1, 64, 64) and item["label"].shape == (3, 64, 64)
    assert set(torch.unique(item["label"]).tolist()) <= {0.0, 1.0}
    assert float(item["image"].min()) >= -1.0 and float(item["image"].max()) <= 1.0
    full = [np.asarray(Image.open(record[s]).convert("L")) >= 128 for s in STRUCTURES]
    ctr_small = cardiothoracic_ratio(*item["label"].numpy())
    assert ctr_small == pytest.approx(cardiothoracic_ratio(*full), abs=0.03)  # same orientation, same anatomy


@pytest.fixture(scope="module")
def tiny_wingspan(wingspan: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 images of wingspan-ctr with their masks and CTR, for fast bundle runs."""
    folder = tmp_path_factory.mktemp("tiny_wingspan")
    truth = pd.read_csv(wingspan / "ctr_ground_truth.csv").head(12)
    for sub in ["png", *(f"mask/{s}" for s in STRUCTURES)]:
        (folder / sub).mkdir(parents=True)
        for name in truth["id"]:
            shutil.copy(wingspan / sub / name, folder / sub / name)
    truth.to_csv(folder / "ctr_ground_truth.csv", index=False)
    return folder


@pytest.mark.slow
def test_segmentation_bundle_trains_and_reports_ctr(tiny_wingspan: Path, tmp_path: Path) -> None:
    common = ["--bundle_root", str(tmp_path), "--dataset_dir", str(tiny_wingspan), "--image_size", "64"]
    env = {"OMP_NUM_THREADS": "1"}
    trained = run_bundle(
        [
            "run",
            "training",
            "--config_file",
            str(CONFIGS / "train.json"),
            *common,
            "--max_epochs",
            "2",
            "--val_interval",
            "1",
        ],
        env=env,
    )
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert (tmp_path / "models" / "segmentation.pt").is_file()
    files = [str(CONFIGS / "train.json"), str(CONFIGS / "evaluate.json")]
    evaluated = run_bundle(["run", "evaluating", "--config_file", config_arg(files), *common], env=env)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    report = tmp_path / "eval" / "segmentation" / "test"
    metrics = json.loads((report / "metrics.json").read_text())
    table = pd.read_csv(report / "ctr.csv")
    assert metrics["n_images"] == len(table) == len(load_segmentation_split(tiny_wingspan, "test"))
    assert {"dice_heart", "dice_left_lung", "dice_right_lung", "ctr_mae"} <= set(metrics)
    assert 0.0 <= metrics["dice_heart"] <= 1.0
    assert metrics["ctr_mae_label_masks"] < 0.03  # 64 px label masks still measure CTR well


def test_ctr_faithfulness_known_answers() -> None:
    from monai_exaggeration.metrics import ctr_faithfulness

    scores = np.array([[0.1, 0.4, 0.6, 0.9], [0.1, 0.4, 0.6, 0.9], [0.9, 0.6, 0.4, 0.1], [0.2, 0.3, 0.3, 0.4]])
    ctr = np.array(
        [[0.45, 0.48, 0.52, 0.55], [0.50, 0.49, 0.48, 0.47], [0.55, 0.53, 0.50, 0.45], [0.4, 0.4, np.nan, 0.4]]
    )
    result = ctr_faithfulness(ctr, scores)
    assert result["n_series"] == 3 and result["n_missing"] == 1
    assert result["median_spearman_ctr_step"] == pytest.approx(-1.0)  # +1, -1, -1
    assert result["mean_delta_ctr"] == pytest.approx((0.10 - 0.03 - 0.10) / 3)
    assert result["share_ctr_increases"] == pytest.approx(1 / 3)
    # scores cross 0.5 in all three; CTR crosses the same way in series 1 (up) and 3 (down), not in 2
    assert result["n_score_crosses"] == 3 and result["share_ctr_crosses_with_score"] == pytest.approx(2 / 3)
    with pytest.raises(ValueError):
        ctr_faithfulness(ctr[:, :1], scores[:, :1])


def test_shipped_segmenter_measures_ctr_on_held_out_images(wingspan: Path) -> None:
    from monai_exaggeration.bundle import load_bundle_segmenter
    from monai_exaggeration.transforms import load_cxr

    segmenter = load_bundle_segmenter()
    records = [r for r in load_segmentation_split(wingspan, "test") if not np.isnan(r["ctr"])][:8]
    images = torch.stack([load_cxr(r["image"], 256, "stretch") for r in records])  # any size: resized inside
    masks = segmenter(images)
    assert masks.shape == (8, 3, 128, 128) and float(masks.min()) >= 0.0 and float(masks.max()) <= 1.0
    errors = [abs(c - r["ctr"]) for c, r in zip(segmenter.ctr(images), records)]
    assert np.mean(errors) < 0.05
    assert not any(p.requires_grad for p in segmenter.parameters())


def test_ctr_measurement_gives_the_widths_it_is_the_ratio_of() -> None:
    """Known masks: the lines span the extremes (pixel edges), sit on the widest row, and scale with a stretch."""
    from monai_exaggeration.metrics import CtrMeasurement, ctr_measurement

    heart = np.zeros((40, 60), dtype=bool)
    heart[20:30, 25:35] = True
    heart[24, 22:38] = True  # the widest row of the heart: columns 22..37
    left, right = np.zeros_like(heart), np.zeros_like(heart)
    left[5:35, 5:25] = True
    right[5:35, 36:55] = True
    right[30, 36:57] = True  # the thorax is widest here: columns 5..56
    measured = ctr_measurement(heart, left, right, min_fraction=0)
    assert isinstance(measured, CtrMeasurement)
    assert (measured.heart.row, measured.heart.left, measured.heart.right) == (24.5, 22.0, 38.0)
    assert (measured.thorax.row, measured.thorax.left, measured.thorax.right) == (30.5, 5.0, 57.0)
    assert measured.ratio == pytest.approx(16 / 52) == cardiothoracic_ratio(heart, left, right, min_fraction=0)
    big = measured.scaled((40, 60), (400, 120))  # 10x the rows, 2x the columns
    assert (big.heart.row, big.heart.left, big.heart.right) == (245.0, 44.0, 76.0)
    assert big.ratio == pytest.approx(measured.ratio)
    assert ctr_measurement(np.zeros_like(heart), left, right) is None

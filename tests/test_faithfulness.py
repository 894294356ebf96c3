"""Faithfulness checks on toy data where the answer is known: a classifier that reads only one box,
and a classifier whose randomisation must change the explanation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import evaluation_args, run_bundle
from torch import nn

from monai_exaggeration.evaluation.faithfulness import (
    FaithfulnessChecks,
    box_measures,
    flip_measures,
    map_similarity,
    randomisable_layers,
    randomised,
)
from monai_exaggeration.evaluation.shortcut import (
    MARKER_BOX,
    MARKERS_FILE,
    MarkerBox,
    make_shortcut_dataset,
    plant_marker,
    read_markers,
)
from monai_exaggeration.inference import ExaggerationInference, SeriesResult

SIZE = 64


class BoxClassifier(nn.Module):
    """f(x) = sigmoid(w · mean of x inside one box + b): it reads nothing else."""

    def __init__(self, box: MarkerBox, weight: float = 6.0, bias: float = -3.0) -> None:
        super().__init__()
        self.box = box
        self.head = nn.Linear(1, 1)
        with torch.no_grad():
            self.head.weight.fill_(weight)
            self.head.bias.fill_(bias)
        self.input_size = SIZE

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r0, c0, r1, c1 = self.box.pixels(x.shape[-2:])
        return torch.sigmoid(self.head(x[:, :, r0:r1, c0:c1].mean(dim=(1, 2, 3))[:, None]))


class SmallConvClassifier(nn.Module):
    """A seeded random conv net: its gradients have structure that randomising it must change."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.features = nn.Sequential(
            nn.Conv2d(1, 8, 5, padding=2), nn.ReLU(), nn.Conv2d(8, 8, 5, padding=2, stride=2), nn.ReLU()
        )
        self.head = nn.Linear(8, 1)
        self.input_size = SIZE

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.head(self.features(x).mean(dim=(2, 3))))


def _runner(classifier: nn.Module) -> ExaggerationInference:
    return ExaggerationInference(
        None,
        classifier,
        method="gradient_ascent",
        method_options={"steps": 40, "lr": 0.05, "l1": 0.0},
        image_size=SIZE,
        quicklook=False,
        device="cpu",
        num_workers=0,
    ).prepare()


@pytest.fixture(scope="module")
def shortcut_copy(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("shortcut")
    make_shortcut_dataset(tiny_dataset, out, "cardiomegaly", positive_rate=1.0, negative_rate=0.0)
    return out


def _records(folder: Path) -> list[dict]:
    table = pd.read_csv(folder / "labels.csv")
    return [{"image": str(folder / r.image), "cardiomegaly": int(r.cardiomegaly)} for r in table.itertuples()]


def test_shortcut_copy_plants_the_marker_by_label(tiny_dataset: Path, shortcut_copy: Path) -> None:
    import imageio.v3 as iio

    markers = pd.read_csv(shortcut_copy / MARKERS_FILE)
    assert (markers["marker"] == markers["cardiomegaly"]).all() and len(markers) == 16
    assert pd.read_csv(shortcut_copy / "labels.csv")["image"].tolist() == markers["image"].tolist()
    for row in markers.itertuples():
        original = iio.imread(tiny_dataset / row.image)
        copied = iio.imread(shortcut_copy / row.image)
        inside = MARKER_BOX.mask(copied.shape)
        assert np.array_equal(original[~inside], copied[~inside])  # nothing changes outside the box
        assert (copied[inside] == 255).sum() >= 18 if row.marker else np.array_equal(original, copied)
    lookup = read_markers(shortcut_copy)
    assert len(lookup) == 16 and all(box == MARKER_BOX for _, box in lookup.values())
    assert read_markers(tiny_dataset) is None


def test_shortcut_rates_and_bad_input(tiny_dataset: Path, tmp_path: Path) -> None:
    markers = make_shortcut_dataset(tiny_dataset, tmp_path / "half", "cardiomegaly", 0.5, 0.0, seed=3)
    assert markers.loc[markers["cardiomegaly"] == 0, "marker"].sum() == 0
    assert 0 < markers.loc[markers["cardiomegaly"] == 1, "marker"].sum() < 8
    with pytest.raises(ValueError, match="another folder"):
        make_shortcut_dataset(tiny_dataset, tiny_dataset, "cardiomegaly")
    with pytest.raises(ValueError, match="'effusion'"):
        make_shortcut_dataset(tiny_dataset, tmp_path / "x", "effusion")
    with pytest.raises(FileNotFoundError, match="labels.csv"):
        make_shortcut_dataset(tmp_path / "nowhere", tmp_path / "y", "cardiomegaly")
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_plant_marker_draws_inside_its_box_only() -> None:
    image = np.zeros((128, 128), dtype=np.uint8)
    planted = plant_marker(image)
    r0, c0, r1, c1 = MARKER_BOX.pixels(image.shape)
    assert (r0, c0, r1, c1) == (8, 96, 24, 112)
    assert planted[r0:r1, c0:c1].max() == 255 and planted.sum() == planted[r0:r1, c0:c1].sum()


def test_box_measures_know_where_the_change_is() -> None:
    shape = (64, 64)
    inside = np.zeros(shape)
    inside[MARKER_BOX.mask(shape)] = 1.0
    measured = box_measures(inside + 0.01, MARKER_BOX)
    assert measured["hit"] and measured["box_ratio"] > 30 and measured["area_share"] == pytest.approx(64 / 4096)
    elsewhere = np.zeros(shape)
    elsewhere[40:52, 20:32] = 1.0
    missed = box_measures(elsewhere, MARKER_BOX)
    assert not missed["hit"] and missed["box_share"] == 0
    flat = box_measures(np.ones(shape), MARKER_BOX)
    assert flat["box_ratio"] == pytest.approx(1.0)
    assert not box_measures(np.zeros(shape), MARKER_BOX)["hit"]  # no change points nowhere


def test_map_similarity_and_flip_measures() -> None:
    rng = np.random.default_rng(0)
    a = rng.random((32, 32))
    assert map_similarity(a, a) == pytest.approx({"ssim": 1.0, "spearman": 1.0})
    other = map_similarity(a, rng.random((32, 32)))
    assert other["ssim"] < 0.2 and abs(other["spearman"]) < 0.1
    assert map_similarity(a, np.zeros_like(a))["spearman"] == 0.0
    base = np.full((10, 16, 16), 100, dtype=np.uint8)
    change = np.zeros((16, 16), dtype=np.int16)
    change[4:8, 4:8] = 1
    frames = np.stack([base[0] + (b - 5) * 10 * change for b in range(10)]).astype(np.uint8)
    result = SeriesResult("x", {}, list(range(10)), [], frames, [0.05 + 0.1 * b for b in range(10)], [], 0.55, 5)
    measured = flip_measures(result, positive=True)
    assert measured["follows"] and measured["mirror_correlation"] == pytest.approx(-1.0)
    assert flip_measures(result, positive=False)["follows"]  # the last frame scores 0.95
    stuck = SeriesResult("x", {}, list(range(10)), [], frames, [0.3] * 10, [], 0.3, 5)
    assert not flip_measures(stuck, positive=False)["follows"] and flip_measures(stuck, positive=True)["follows"]
    edge = SeriesResult("x", {}, list(range(10)), [], frames, result.scores, [], 0.95, 9)
    assert np.isnan(flip_measures(edge, positive=True)["mirror_correlation"])  # no room toward "present"


def test_randomised_resets_from_the_output_and_restores() -> None:
    classifier = SmallConvClassifier()
    layers = randomisable_layers(classifier)
    assert layers[0] is classifier.head and len(layers) == 3
    before = {k: v.clone() for k, v in classifier.state_dict().items()}
    with randomised(classifier, 0.34) as count:
        assert count == 1
        assert not torch.equal(classifier.head.weight, before["head.weight"])
        assert torch.equal(classifier.features[0].weight, before["features.0.weight"])
    assert all(torch.equal(v, before[k]) for k, v in classifier.state_dict().items())
    with randomised(classifier, 1.0) as count:
        assert count == 3 and not torch.equal(classifier.features[0].weight, before["features.0.weight"])


def test_checks_point_at_the_box_the_classifier_reads(shortcut_copy: Path, tmp_path: Path) -> None:
    """A classifier reading only the marker box: its series change the box; one reading elsewhere: they do not."""
    records = _records(shortcut_copy)
    checks = FaithfulnessChecks(shortcut_copy, num_images=4, levels=(0.0, 1.0), montage_images=2)
    checked = checks.run(_runner(BoxClassifier(MARKER_BOX)), records, "cardiomegaly", tmp_path)
    shortcut = checked["metrics"]["shortcut"]
    assert shortcut["n_series"] == 4  # unmarked images only: the negatives of this copy
    assert shortcut["hit_rate"] == 1.0 and shortcut["median_box_ratio"] > 20
    assert checked["plots"]["shortcut"].stat().st_size > 5000
    flip = checked["metrics"]["label_flip"]
    assert flip["n_series"] == 4 and flip["follow_rate"] == 1.0
    elsewhere = FaithfulnessChecks(shortcut_copy, num_images=4, levels=(0.0,), montage_images=0).run(
        _runner(BoxClassifier(MarkerBox(0.6, 0.3, 0.85, 0.55))), records, "cardiomegaly", tmp_path
    )
    assert elsewhere["metrics"]["shortcut"]["hit_rate"] == 0.0
    assert elsewhere["metrics"]["shortcut"]["median_box_ratio"] < 0.1
    rows = pd.DataFrame(checked["rows"])
    assert set(rows["check"]) == {"shortcut", "label_flip", "randomisation"}


def test_randomising_the_classifier_changes_the_maps(tiny_dataset: Path, tmp_path: Path) -> None:
    records = _records(tiny_dataset)
    checks = FaithfulnessChecks(tiny_dataset, num_images=4, levels=(0.0, 1.0), montage_images=0)
    runner = _runner(SmallConvClassifier())
    weights = {k: v.clone() for k, v in runner.classifier.state_dict().items()}
    checked = checks.run(runner, records, "cardiomegaly", tmp_path)
    random = checked["metrics"]["randomisation"]
    assert checked["metrics"]["shortcut"]["n_series"] == 0 and "markers.csv" in checked["metrics"]["shortcut"]["note"]
    assert random["levels"][0]["layers"] == 3 and random["levels"][0]["n_series"] == 4
    assert random["full_spearman"] < 0.5 and random["full_ssim"] < 0.5
    assert all(torch.equal(v, weights[k]) for k, v in runner.classifier.state_dict().items())


def test_settings_are_checked(tiny_dataset: Path) -> None:
    with pytest.raises(ValueError, match="at least 2"):
        FaithfulnessChecks(tiny_dataset, num_images=1)
    with pytest.raises(ValueError, match="start with 0"):
        FaithfulnessChecks(tiny_dataset, levels=(0.5, 1.0))


@pytest.mark.slow
def test_evaluating_with_faithfulness_through_the_bundle(shortcut_copy: Path, tmp_path: Path) -> None:
    """``--faithfulness true``: the checks' section in metrics.json, the report and the console, and their rows."""
    import json

    out = tmp_path / "evaluation"
    extra = ["--occlusion", "false", "--faithfulness", "true", "--faithfulness_images", "2"]
    result = run_bundle(evaluation_args(shortcut_copy, out, *extra), timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())["faithfulness"]
    assert metrics["n_images"] == 2 and metrics["shortcut"]["n_series"] == 2
    assert [level["share"] for level in metrics["randomisation"]["levels"]] == [0.34, 0.67, 1.0]
    assert 0 <= metrics["label_flip"]["follow_rate"] <= 1
    rows = pd.read_csv(out / "faithfulness.csv")
    assert len(rows) == 2 + 2 + 3 * 2
    report = (out / "report.html").read_text()
    assert "Faithfulness: does the series show what the black box uses?" in report and "marker box" in report
    assert "faithfulness: shortcut hit" in result.stdout
    assert (out / "plots" / "faithfulness_shortcut.png").stat().st_size > 5000

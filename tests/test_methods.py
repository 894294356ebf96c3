"""Counterfactual methods side by side: Latent Shift, pixel gradient ascent and the explainer, through
the same inference runner, DICOM writer, logs and evaluation (issue 16)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
import torch
from conftest import REPO_ROOT, config_arg, evaluation_args, run_bundle
from torch import nn

from monai_exaggeration.binning import bin_centre
from monai_exaggeration.methods import LatentShift, PixelGradientAscent, check_method
from monai_exaggeration.networks import AutoEncoderRecord, CXRAutoEncoder, load_autoencoder

INFERENCE = ["bundles/cxr/configs/inference.json"]
SHIPPED_AUTOENCODER = REPO_ROOT / "bundles" / "cxr_autoencoder" / "models" / "autoencoder.pt"
NUM_BINS = 10


class MeanIntensityClassifier(nn.Module):
    """f(x) = sigmoid(8 · mean(x)): brighter is 'present'; monotone in any uniform brightening."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(8.0), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.scale * x.mean(dim=(1, 2, 3)))[:, None]


class PoolingAutoEncoder(nn.Module):
    """E = 4x average pooling, D = 4x nearest upsampling: a real (lossy) autoencoder with a smooth decoder."""

    def encode_latent(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.avg_pool2d(x, 4)

    def decode_latent(self, z: torch.Tensor) -> torch.Tensor:
        return nn.functional.interpolate(z, scale_factor=4, mode="nearest")

    def parameters(self, recurse: bool = True):
        yield torch.zeros(1)


def _source(seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(1, 1, 32, 32, generator=generator) * 0.6 - 0.5  # darker than mid-grey: score < 0.5


def _score(classifier: nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        return float(classifier(x))


@pytest.mark.parametrize("method", ["latent_shift", "gradient_ascent"])
def test_baselines_reach_every_bin_centre_and_keep_the_source_frame(method: str) -> None:
    classifier = MeanIntensityClassifier()
    x = _source()
    score = _score(classifier, x)
    source_bin = min(int(score * NUM_BINS), NUM_BINS - 1)
    bins = list(range(NUM_BINS))
    if method == "latent_shift":
        made = LatentShift(PoolingAutoEncoder(), classifier, max_shift=4.0, search_steps=10)(
            x, [score], [source_bin], bins, NUM_BINS
        )
        assert all(made.details[0]["reached"]) and made.details[0]["shifts"][source_bin] == 0.0
        tolerance = 0.02
    else:
        made = PixelGradientAscent(classifier, steps=300, lr=0.05, tolerance=0.02)(
            x, [score], [source_bin], bins, NUM_BINS
        )
        assert made.details[0]["steps"][source_bin] == 0 and max(made.details[0]["steps"]) > 0
        tolerance = 0.025
    assert made.frames.shape == made.generated.shape == (1, NUM_BINS, 32, 32)
    assert made.reconstruction.shape == (1, 32, 32)
    assert torch.equal(made.frames[0, source_bin], x[0, 0])  # the source's own bin is the source itself
    scores = [_score(classifier, frame[None, None]) for frame in made.frames[0]]
    centres = bin_centre(torch.tensor(bins), NUM_BINS).tolist()
    for step, (s, c) in enumerate(zip(scores, centres)):
        if step != source_bin:
            assert abs(s - c) <= tolerance, (step, s, c)
    assert all(b > a for a, b in zip(scores, scores[1:]))  # the series rises monotonically


def test_latent_shift_frames_are_the_source_plus_the_decoded_change() -> None:
    classifier = MeanIntensityClassifier()
    x = _source(1)
    score = _score(classifier, x)
    autoencoder = PoolingAutoEncoder()
    made = LatentShift(autoencoder, classifier)(x, [score], [int(score * NUM_BINS)], [9], NUM_BINS)
    change = made.generated[0, 0] - made.reconstruction[0]
    assert torch.allclose(made.frames[0, 0], torch.clamp(x[0, 0] + change, -1, 1), atol=1e-6)
    assert torch.allclose(made.reconstruction[0], autoencoder.decode_latent(autoencoder.encode_latent(x))[0, 0])


class SaturatedClassifier(MeanIntensityClassifier):
    """f = sigmoid(1000 · mean(x)) with its logits exposed, as BlackBoxClassifier does: for a dark
    source f is exactly 0 in float32, and so is the gradient of f itself."""

    activation, output_index = "sigmoid", 0

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return (1000.0 * x.mean(dim=(1, 2, 3)))[:, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.logits(x))


def test_latent_shift_direction_survives_a_saturated_classifier() -> None:
    classifier = SaturatedClassifier()
    x = _source(3)
    latent = x.clone().requires_grad_(True)
    assert (
        float(torch.autograd.grad(classifier(latent).sum(), latent)[0].abs().max()) == 0.0
    )  # f's own gradient vanishes
    score = _score(classifier, x)
    made = LatentShift(PoolingAutoEncoder(), classifier, search_steps=12)(x, [score], [0], [0, 5, 9], NUM_BINS)
    assert made.details[0]["reached"] == [True, True, True]
    scores = [_score(classifier, frame[None, None]) for frame in made.frames[0]]
    assert scores[0] == score and scores[1] > 0.3 and scores[2] > 0.8


def test_unreachable_target_is_flagged_at_the_limit() -> None:
    classifier = MeanIntensityClassifier()
    x = _source(2)
    score = _score(classifier, x)
    made = LatentShift(PoolingAutoEncoder(), classifier, max_shift=0.01)(
        x, [score], [int(score * NUM_BINS)], [9], NUM_BINS
    )
    assert made.details[0]["reached"] == [False]
    assert abs(made.details[0]["shifts"][0]) <= 0.01 + 1e-9


def test_method_settings_are_checked_before_loading() -> None:
    assert check_method("latent_shift", {"max_shift": 2}) == {"max_shift": 2}
    with pytest.raises(ValueError, match="method must be one of"):
        check_method("lime", None)
    with pytest.raises(ValueError, match="accept .*unknown \\['lr'\\]"):
        check_method("latent_shift", {"lr": 0.1})
    with pytest.raises(ValueError, match="progressive_exaggeration accept .*strength_bound.*unknown \\['steps'\\]"):
        check_method("progressive_exaggeration", {"steps": 3})
    assert check_method("progressive_exaggeration", {"strength_bound": 3.0}) == {"strength_bound": 3.0}
    with pytest.raises(ValueError, match="max_shift > 0"):
        LatentShift(PoolingAutoEncoder(), MeanIntensityClassifier(), max_shift=0)


def test_autoencoder_file_round_trip_and_errors(tmp_path: Path) -> None:
    network = CXRAutoEncoder(image_size=64, channels=(8, 8, 4), strides=(2, 2, 2), num_res_units=0)
    path = tmp_path / "ae.pt"
    torch.save({"model": network.state_dict(), "autoencoder": AutoEncoderRecord(network).state_dict()}, path)
    loaded = load_autoencoder(path)
    assert loaded.config() == network.config() and loaded.latent_shape == (4, 8, 8)
    x = torch.rand(2, 1, 64, 64) * 2 - 1
    assert torch.allclose(loaded(x), network.eval()(x), atol=1e-6)
    assert loaded(x).abs().max() < 1  # tanh output in the model range
    assert not any(p.requires_grad for p in loaded.parameters())
    with pytest.raises(FileNotFoundError, match="cxr_autoencoder"):
        load_autoencoder(tmp_path / "missing.pt")
    torch.save({"model": network.state_dict()}, tmp_path / "bare.pt")
    with pytest.raises(ValueError, match="not an autoencoder file"):
        load_autoencoder(tmp_path / "bare.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable autoencoder file"):
        load_autoencoder(tmp_path / "junk.pt")
    with pytest.raises(ValueError, match="multiple of the total stride"):
        CXRAutoEncoder(image_size=100)


def test_shipped_autoencoder_is_small_and_reconstructs(tiny_dataset: Path) -> None:
    """The shipped weights load from their file alone, are at most 25 MB, and reconstruct a real chest."""
    from monai_exaggeration.transforms import load_cxr

    assert SHIPPED_AUTOENCODER.stat().st_size <= 25 * 2**20
    autoencoder = load_autoencoder(SHIPPED_AUTOENCODER)
    image = load_cxr(next((tiny_dataset / "images").glob("*.png")), spatial_size=autoencoder.image_size)[
        None
    ].as_tensor()
    with torch.no_grad():
        reconstruction = autoencoder(image)
    assert float((reconstruction - image).abs().mean()) < 0.15  # model range [-1, 1]
    other = torch.flip(image, dims=[-1])
    assert float((reconstruction - image).abs().mean()) < float((reconstruction - other).abs().mean())


def test_training_config_writes_a_loadable_autoencoder(tiny_dataset: Path, tmp_path: Path) -> None:
    result = run_bundle(
        [
            "run",
            "training",
            "--config_file",
            "bundles/cxr_autoencoder/configs/train.json",
            "--bundle_root",
            str(tmp_path),
            "--dataset_dir",
            str(tiny_dataset),
            "--ckpt_dir",
            str(tmp_path / "models"),
            "--max_epochs",
            "1",
            "--val_interval",
            "1",
            "--batch_size",
            "4",
            "--image_size",
            "64",
            "--network_def#channels",
            "[8,8,4]",
            "--network_def#strides",
            "[2,2,2]",
        ],
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    loaded = load_autoencoder(tmp_path / "models" / "autoencoder.pt")
    assert loaded.config()["channels"] == [8, 8, 4] and loaded.image_size == 64
    assert "val_ssim" in result.stderr + result.stdout


@pytest.mark.parametrize("method", ["latent_shift", "gradient_ascent"])
def test_each_baseline_writes_the_same_outputs_as_the_explainer(
    method: str, tiny_dataset: Path, tmp_path: Path
) -> None:
    """Smoke test on two images through the bundle: DICOM series, CSV logs and quick-looks, the method named."""
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for path in sorted((tiny_dataset / "images").glob("*.png"))[:2]:
        (inputs / path.name).write_bytes(path.read_bytes())
    out = tmp_path / "out"
    result = run_bundle(
        [
            "run",
            "inference",
            "--config_file",
            config_arg(INFERENCE),
            "--input",
            str(inputs),
            "--output_dir",
            str(out),
            "--method",
            method,
            "--method_options",
            "{'steps': 20}" if method == "gradient_ascent" else "{'search_steps': 3}",
        ],
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    frames = pd.read_csv(out / "frames.csv")
    sources = pd.read_csv(out / "sources.csv")
    assert len(sources) == 2 and len(frames) == 20
    assert set(frames["method"]) == {method} and set(sources["method"]) == {method}
    assert frames["model_version"].str.startswith(method + " ").all()
    prefix = "shift=" if method == "latent_shift" else "steps="
    assert frames["method_detail"].str.startswith(prefix).all()
    label = "Latent Shift" if method == "latent_shift" else "Pixel ascent"
    files = sorted((out / "dicom").rglob("*.dcm"))
    assert len(files) == 20
    dataset = pydicom.dcmread(files[0])
    assert dataset.SeriesDescription.startswith(f"{label} cardiomegaly")
    assert method.split("_")[0] in dataset.SoftwareVersions[1]
    assert len(list((out / "quicklook").rglob("montage.png"))) == 2
    # the frames at source resolution: the source's own bin is the source
    for _, row in sources.iterrows():
        own = frames[(frames["source"] == row["source"]) & (frames["target_bin"] == row["source_bin"])]
        assert abs(float(own["score"].iloc[0]) - row["source_score"]) < 0.02


def test_missing_autoencoder_is_one_line(tiny_dataset: Path, tmp_path: Path) -> None:
    result = run_bundle(
        [
            "run",
            "inference",
            "--config_file",
            config_arg(INFERENCE),
            "--input",
            str(tiny_dataset / "images"),
            "--output_dir",
            str(tmp_path / "out"),
            "--method",
            "latent_shift",
            "--autoencoder_weights",
            str(tmp_path / "no.pt"),
        ],
        timeout=300,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 2 and "autoencoder weights not found" in output and "Traceback" not in output


@pytest.mark.slow
def test_evaluation_compares_methods_on_the_same_images(tiny_dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "comparison"
    result = run_bundle(
        evaluation_args(
            tiny_dataset,
            out,
            "--occlusion",
            "false",
            "--methods",
            "['progressive_exaggeration','latent_shift','gradient_ascent']",
        ),
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    table = pd.read_csv(out / "methods.csv")
    assert list(table["method"]) == ["progressive_exaggeration", "latent_shift", "gradient_ascent", "gradcam"]
    methods = table.iloc[:3]
    assert (methods["n_images"] == 4).all() and (methods["seconds_per_series"] > 0).all()
    assert methods["validity_mae"].between(0, 1).all() and methods["flip_rate"].between(0, 1).all()
    assert methods["ssim_outside_heart"].notna().all() and methods["fid_encoder"].notna().all()
    assert table.loc[0, "seconds_vs_exaggeration"] == pytest.approx(1.0)
    for method in methods["method"]:
        metrics = json.loads((out / method / "metrics.json").read_text())
        assert metrics["method"] == method and metrics["context"]["method"] == method
        sources = pd.read_csv(out / method / "per_image.csv")["source"].tolist()
        assert sources == pd.read_csv(out / "progressive_exaggeration" / "per_image.csv")["source"].tolist()
    assert len(list((out / "plots").glob("series_*.png"))) == 2
    report = (out / "report.html").read_text()
    assert "Latent Shift" in report and "progressive_exaggeration/report.html" in report and "https://" not in report
    assert "3 methods" not in result.stdout and "report.html" in result.stdout
    assert np.isfinite(methods["median_spearman"]).all()


def test_autoencoder_bundle_metadata_and_properties(tiny_dataset: Path, tmp_path: Path) -> None:
    from monai.bundle import ConfigWorkflow, verify_metadata

    configs = REPO_ROOT / "bundles" / "cxr_autoencoder" / "configs"
    verify_metadata(
        meta_file=str(configs / "metadata.json"), filepath=str(REPO_ROOT / "bundles/cxr/configs/metadata_schema.json")
    )
    workflow = ConfigWorkflow(
        config_file=str(configs / "train.json"),
        workflow_type="train",
        bundle_root=str(tmp_path),
        meta_file=str(configs / "metadata.json"),
        dataset_dir=str(tiny_dataset),
    )
    workflow.initialize()
    assert workflow.check_properties() == []
    metadata = json.loads((configs / "metadata.json").read_text())
    assert metadata["network_data_format"]["inputs"]["image"]["spatial_shape"] == [workflow.parser["image_size"]] * 2

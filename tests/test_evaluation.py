"""The evaluation suite: aggregation on known answers, the HTML report, and the bundle's `evaluating` workflow."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import REPO_ROOT, config_arg, evaluation_args, run_bundle

from monai_exaggeration.evaluation import SourceMeasures, counterfactual_step, summarise, write_report
from monai_exaggeration.evaluation.summary import identity_summary, json_safe, realism_summary
from monai_exaggeration.metrics import series_validity

CONFIGS = REPO_ROOT / "bundles" / "cxr" / "configs"
EVALUATE = [str(CONFIGS / "inference.json"), str(CONFIGS / "evaluate.json")]
NUM_BINS = 5


def _measures(count: int, seed: int = 0, identity_noise: float = 0.01) -> list[SourceMeasures]:
    """Synthetic per-image measures: scores on the bin centres plus noise, CTR rising by 0.02 per step."""
    rng = np.random.default_rng(seed)
    centres = (np.arange(NUM_BINS) + 0.5) / NUM_BINS
    measures = []
    for index in range(count):
        scores = np.clip(centres + rng.normal(0, 0.05, NUM_BINS), 0, 1)
        source_score = float(rng.uniform(0, 1))
        ctr = 0.45 + 0.02 * np.arange(NUM_BINS) + 0.01 * index / count
        source = {space: torch.from_numpy(rng.normal(size=16)).float() for space in ("classifier", "encoder")}
        frames = {space: source[space][None] + identity_noise * torch.randn(NUM_BINS, 16) for space in source}
        row = {
            "source": f"image_{index}.png",
            "label": index % 2,
            "source_score": source_score,
            "counterfactual_step": counterfactual_step(source_score, NUM_BINS),
            "ctr_source": float(ctr[0]),
            "change_inside": 0.1,
            "change_outside": 0.02,
            "inside_outside_ratio": 5.0,
            "change_mass_inside": 0.4,
            "l1_outside": 0.02,
            "ssim_outside": 0.9,
            "heart_fraction": 0.1,
            "difference_mass_inside": 0.4,
            "gradcam_mass_inside": 0.2,
            "occlusion_mass_inside": float("nan") if index == 0 else 0.3,
            "heart_fraction_model_grid": 0.1,
            "seconds": 1.0,
        }
        frame_rows = [
            {
                "source": row["source"],
                "step": step,
                "score": float(scores[step]),
                "generator_frame_score": float(centres[step]),
                "ctr": float(ctr[step]),
            }
            for step in range(NUM_BINS)
        ]
        measures.append(SourceMeasures(row, frame_rows, source, frames))
    return measures


def test_counterfactual_is_the_far_end_from_the_source_class() -> None:
    assert counterfactual_step(0.2, 10) == 9
    assert counterfactual_step(0.7, 10) == 0
    assert counterfactual_step(0.5, 10) == 0


def test_summary_reproduces_known_answers() -> None:
    measures = _measures(40)
    metrics, images, frames = summarise(measures)
    assert metrics["n_images"] == 40 and metrics["n_frames"] == 200 and len(images) == 40 and len(frames) == 200
    assert metrics["n_images_by_label"] == {"0": 20, "1": 20}
    # validity equals the metrics module's on the same table
    scores = np.asarray([[r["score"] for r in m.frame_rows] for m in measures])
    expected = series_validity(scores, images["source_score"].to_numpy())
    assert metrics["validity"]["written_frames"]["mae"] == pytest.approx(expected.mae)
    assert metrics["validity"]["generator_frames"]["mae"] == pytest.approx(0.0, abs=1e-12)  # exactly the centres
    assert len(metrics["validity"]["written_frames"]["per_bin_sd"]) == NUM_BINS
    # CTR rises by 0.02 per step in every series
    clinical = metrics["clinical_faithfulness"]
    assert clinical["median_spearman_ctr_step"] == pytest.approx(1.0)
    assert clinical["mean_delta_ctr"] == pytest.approx(0.08)
    assert clinical["share_ctr_increases"] == 1.0
    # frames barely differ from their own source: identity is perfect in both feature spaces
    for space in ("classifier", "encoder"):
        assert metrics["preservation"]["identity"][space]["counterfactual"] == 1.0
        assert metrics["preservation"]["identity"][space]["per_step"] == [1.0] * NUM_BINS
    # a NaN in one image is left out of the mean, not propagated
    assert metrics["saliency"]["occlusion_mass_inside_heart"] == pytest.approx(0.3)
    assert metrics["preservation"]["median_inside_outside_ratio"] == 5.0
    json.dumps(metrics, allow_nan=False)  # strictly valid JSON


def test_identity_fails_when_frames_lose_the_patient() -> None:
    metrics, _, _ = summarise(_measures(40, identity_noise=100.0))
    assert metrics["preservation"]["identity"]["encoder"]["counterfactual"] < 0.3


def test_realism_baseline_and_generated_sets_have_equal_size() -> None:
    rng = np.random.default_rng(0)
    real = torch.from_numpy(rng.normal(size=(60, 8)))
    same = real[:, None].repeat(1, 4, 1) + 0.01 * torch.randn(60, 4, 8, dtype=torch.float64)
    shifted = same + 3.0
    steps = np.zeros(60, dtype=np.int64)
    close = realism_summary(real, same, steps)
    far = realism_summary(real, shifted, steps)
    assert close["n_real_a"] == close["n_real_b"] == 30 and close["n_all_frames_b"] == 120
    assert far["fid_real_vs_counterfactual"] > 10 * max(close["fid_real_vs_counterfactual"], close["fid_real_vs_real"])
    assert far["kid_real_vs_counterfactual"] > far["kid_real_vs_real"]


def test_identity_per_step_decays_as_frames_drift() -> None:
    source = torch.eye(10, dtype=torch.float64) * 5
    drift = torch.stack(
        [source + weight * torch.roll(source, 1, dims=0) for weight in (0.0, 0.4, 1.5)], dim=1
    )  # last: nearer the neighbour
    summary = identity_summary(source, drift, np.full(10, 2))
    assert summary["per_step"] == [1.0, 1.0, 0.0] and summary["counterfactual"] == 0.0


def test_json_safe_turns_nan_into_null() -> None:
    assert json_safe({"a": float("nan"), "b": [np.float32(1.5), np.inf], "c": np.int64(3), "d": np.bool_(True)}) == {
        "a": None,
        "b": [1.5, None],
        "c": 3,
        "d": True,
    }


def test_report_is_self_contained(tmp_path: Path) -> None:
    from monai_exaggeration.evaluation.plots import compatibility_plot, ctr_plot, identity_plot

    metrics, _, _ = summarise(_measures(12))
    plots = {
        "compatibility": compatibility_plot(metrics["validity"], tmp_path / "c.png"),
        "ctr": ctr_plot(metrics["clinical_faithfulness"], tmp_path / "ctr.png"),
        "identity": identity_plot(metrics["preservation"]["identity"], tmp_path / "i.png"),
    }
    report = write_report(metrics, {"dataset": "<synthetic & test>"}, plots, tmp_path / "report.html")
    text = report.read_text()
    sources = re.findall(r"src='([^']*)'", text)
    assert len(sources) == 3 and all(s.startswith("data:image/png;base64,") for s in sources)
    assert "http://" not in text and "https://" not in text and "<link" not in text and "<script" not in text
    assert "&lt;synthetic &amp; test&gt;" in text  # run facts are escaped
    assert f"{metrics['validity']['written_frames']['mae']:.3f}" in text
    assert not list(tmp_path.glob(".*tmp*")), "temporary files left behind"


@pytest.mark.slow
def test_evaluating_through_monai_bundle(tiny_dataset: Path, tmp_path: Path) -> None:
    """The documented command on a small labelled folder writes every output with consistent counts."""
    out = tmp_path / "evaluation"
    result = run_bundle(evaluation_args(tiny_dataset, out), timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "4 images evaluated" in result.stdout and "report.html" in result.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_images"] == 4 and metrics["n_frames"] == 40 and metrics["n_images_by_label"] == {"0": 2, "1": 2}
    images = pd.read_csv(out / "per_image.csv")
    frames = pd.read_csv(out / "per_frame.csv")
    assert len(images) == 4 and len(frames) == 40
    assert frames.groupby("source")["step"].apply(list).map(lambda steps: steps == list(range(10))).all()
    assert images["source_score"].between(0, 1).all() and frames["score"].between(0, 1).all()
    assert frames["ctr"].dropna().between(0.2, 0.9).all()
    assert images["gradcam_mass_inside"].dropna().between(0, 1).all()
    for space in ("classifier", "encoder"):
        assert metrics["realism"][space]["fid_real_vs_real"] is not None
        assert 0 <= metrics["preservation"]["identity"][space]["counterfactual"] <= 1
    for name in ("compatibility.png", "ctr_vs_step.png", "identity_per_step.png", "examples.png"):
        assert (out / "plots" / name).stat().st_size > 5000
    text = (out / "report.html").read_text()
    assert text.count("data:image/png;base64,") == 4 and "https://" not in text
    assert metrics["context"]["model version"].startswith("explainer ")


def test_evaluating_without_dataset_says_what_to_do(tmp_path: Path) -> None:
    out = tmp_path / "evaluation"
    result = run_bundle(
        [
            "run",
            "evaluating",
            "--config_file",
            config_arg(EVALUATE),
            "--bundle_root",
            "bundles/cxr",
            "--dataset_dir",
            str(tmp_path / "nowhere"),
            "--output_dir",
            str(out),
        ],
        timeout=300,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 2
    assert "Dataset not found" in output and "docs/datasets.md" in output and "Traceback" not in output
    assert not out.exists()


def test_evaluation_needs_every_bin(tiny_dataset: Path) -> None:
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(EVALUATE)
    parser["bundle_root"] = str(REPO_ROOT / "bundles" / "cxr")
    parser["last_bin"] = 4
    with pytest.raises(ValueError, match="every bin"):
        parser.get_parsed_content("evaluation")()


def test_one_segmentation_forward_equals_separate_calls(rg1_uncr: Path) -> None:
    """The evaluation segments a source with its frames in one forward: the same CTRs and heart mask as
    segmenting each image on its own (what it did before), to float noise."""
    from monai_exaggeration.bundle import load_bundle_segmenter
    from monai_exaggeration.evaluation.measures import _heart_mask, heart_mask
    from monai_exaggeration.metrics.ctr import cardiothoracic_ratio
    from monai_exaggeration.transforms import LoadCXR, to_model_range
    from monai_exaggeration.transforms.cxr import model_input

    segmenter = load_bundle_segmenter()
    unit = torch.from_numpy(LoadCXR()(rg1_uncr)[0].numpy())[None, None]
    unit = torch.nn.functional.interpolate(unit, size=(128, 128), mode="bilinear", antialias=True)[0, 0]
    source = to_model_range(unit)[None]  # (1, 128, 128): a source at the model size
    assert torch.equal(model_input(unit.numpy(), 128, "pad"), source)  # so its model input is the same image
    frames = torch.stack([torch.clamp(source + shift, -1, 1) for shift in (-0.1, 0.0, 0.1)])  # (3, 1, 128, 128)
    together = segmenter(torch.cat([source[None], frames]))
    separate_ctr = segmenter.ctr(source[None]) + segmenter.ctr(frames)
    together_ctr = [cardiothoracic_ratio(*masks) for masks in together]
    assert np.isfinite(separate_ctr[0])
    assert np.allclose(separate_ctr, together_ctr, atol=1e-3, equal_nan=True)
    alone = heart_mask(segmenter, source, (128, 128))
    batched = _heart_mask(together[:1], (128, 128))
    assert alone.any() and (alone != batched).mean() < 1e-3

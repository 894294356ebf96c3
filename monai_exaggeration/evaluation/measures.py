"""Everything measured on one source image and its exaggeration series (no aggregation here).

:func:`measure_source` runs the explainer on one image through the inference workflow (so the
frames measured are exactly the frames a user gets) and returns a :class:`SourceMeasures`: a row of
the per-image CSV, one row per frame, the feature vectors needed for realism and identity, and
(for the few example images) the pictures of the report.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import spearmanr
from torch import nn

from monai_exaggeration.binning import DECISION_THRESHOLD
from monai_exaggeration.data.segmentation import STRUCTURES
from monai_exaggeration.findings import FindingProfile, finding_profile
from monai_exaggeration.inference import ExaggerationInference, SeriesResult
from monai_exaggeration.metrics.ctr import cardiothoracic_ratio, largest_component
from monai_exaggeration.metrics.geometry import border_shift, geometric_share
from monai_exaggeration.metrics.localisation import change_inside_outside, mass_inside, saliency_maps
from monai_exaggeration.metrics.realism import encoder_features, penultimate_features
from monai_exaggeration.networks.segmentation import HeartLungSegmenter
from monai_exaggeration.transforms import to_model_range, to_unit_range

__all__ = ["FEATURE_SPACES", "SourceMeasures", "counterfactual_step", "heart_mask", "measure_source"]

#: Feature spaces for realism and identity: the classifier's penultimate layer, the in-project SimCLR encoder.
FEATURE_SPACES = ("classifier", "encoder")


@dataclass
class SourceMeasures:
    """Measures of one source: CSV rows, features (source and frames), example pictures (optional)."""

    row: dict
    frame_rows: list[dict]
    source_features: dict[str, torch.Tensor]  # space -> (D,)
    frame_features: dict[str, torch.Tensor]  # space -> (K, D)
    example: dict | None = field(default=None, repr=False)


def counterfactual_step(source_score: float, num_frames: int, threshold: float = DECISION_THRESHOLD) -> int:
    """The frame at the far end from the source's class: the last for a negative source, the first for a positive."""
    return 0 if source_score >= threshold else num_frames - 1


def heart_mask(
    segmenter: HeartLungSegmenter, image: torch.Tensor, size: tuple[int, int], channel: int | None = 0
) -> np.ndarray:
    """Boolean mask (largest component) of one segmented structure (``channel``: 0 the heart, the default)
    of ``image`` (1, H, W) in the model range, on a ``size`` grid; all False when ``channel`` is None."""
    if channel is None:
        return np.zeros(size, dtype=bool)
    return _heart_mask(segmenter(image[None].float()), size, channel)


def _heart_mask(probabilities: torch.Tensor, size: tuple[int, int], channel: int | None = 0) -> np.ndarray:
    """:func:`heart_mask` from the segmenter's output (1, 3, s, s) of one image."""
    if channel is None:
        return np.zeros(size, dtype=bool)
    resized = F.interpolate(probabilities[:1, channel : channel + 1], size=size, mode="bilinear", align_corners=False)
    return largest_component(resized[0, 0].cpu().numpy() > 0.5, min_fraction=0.001)


def _region_channel(profile: FindingProfile) -> int | None:
    """The segmentation channel of the finding's region (None: the finding has none)."""
    return STRUCTURES.index(profile.region) if profile.region in STRUCTURES else None


def _spearman(values: np.ndarray) -> float:
    values = np.asarray(values, dtype=np.float64)
    if np.isnan(values).any() or np.ptp(values) == 0:
        return 0.0 if not np.isnan(values).any() else float("nan")
    return float(spearmanr(np.arange(len(values)), values).statistic)


@dataclass
class _Pictures:
    """One source and its written frames in the forms the measures need."""

    source: np.ndarray  # (rows, columns) in [0, 1], the source grid
    source_input: torch.Tensor  # (1, S, S) model input in [-1, 1]
    frames: np.ndarray  # (K, rows, columns) in [0, 1], as written
    frame_inputs: torch.Tensor  # (K, 1, S, S), what the classifier sees of the written frames
    probabilities: torch.Tensor  # (1 + K, 3, s, s) the segmentation of the source and the frames


def _pictures(
    runner: ExaggerationInference,
    segmenter: HeartLungSegmenter,
    path: str,
    result: SeriesResult,
    loaded: tuple[torch.Tensor, torch.Tensor] | None,
) -> _Pictures:
    """The source (read again unless ``loaded``) and the written frames; one segmentation forward of all."""
    if loaded is None:
        source = runner.loader(path)
        source_input = runner.preprocessing({"image": source})["image"].as_tensor()  # (1, S, S)
    else:
        source, source_input = loaded
        source_input = source_input.as_tensor() if hasattr(source_input, "as_tensor") else source_input
    source_unit = source[0].numpy().astype(np.float32)
    unit_frames = result.unit_frames
    frame_inputs = runner.as_model_input(unit_frames, source)[:, None]
    stack = to_model_range(
        torch.cat([torch.from_numpy(source_unit)[None, None], torch.from_numpy(unit_frames)[:, None].float()])
    )
    probabilities = segmenter(stack.to(runner.device)).cpu()
    return _Pictures(source_unit, source_input, unit_frames, frame_inputs, probabilities)


def _validity(result: SeriesResult) -> dict:
    scores = np.asarray(result.scores, dtype=np.float64)
    generator_scores = np.asarray(result.generator_frame_scores, dtype=np.float64)
    centres = np.asarray(result.centres, dtype=np.float64)
    present = scores >= DECISION_THRESHOLD
    flipped = bool(present.any()) if result.source_score < DECISION_THRESHOLD else bool((~present).any())
    return {
        "first_score": float(scores[0]),
        "last_score": float(scores[-1]),
        "flip": flipped,
        "spearman": _spearman(scores),
        "monotone": bool((np.diff(scores) >= 0).all()),
        "mae": float(np.abs(scores - centres).mean()),
        "generator_mae": float(np.abs(generator_scores - centres).mean()),
        "generator_spearman": _spearman(generator_scores),
    }


def _localisation(pictures: _Pictures, step: int, heart: np.ndarray) -> dict:
    """Preservation on the source grid: the counterfactual against the source, inside and outside the heart."""
    if heart.any() and not heart.all():
        return change_inside_outside(pictures.source, pictures.frames[step], heart)
    keys = (
        "change_inside",
        "change_outside",
        "inside_outside_ratio",
        "change_mass_inside",
        "l1_outside",
        "ssim_outside",
    )
    return dict.fromkeys(keys, float("nan"))  # no heart found: the region measures are undefined for this image


def _anatomy(pictures: _Pictures, result: SeriesResult, channel: int | None) -> dict:
    """Enlargement or paint? From the first written frame to the last: the share of the change a smooth
    deformation explains (model grid), how far the heart outline moves outward (source grid, pixels)."""
    first, last = (to_unit_range(pictures.frame_inputs[i, 0]).numpy() for i in (0, len(pictures.frames) - 1))
    grid = pictures.source.shape
    shift = border_shift(
        _heart_mask(pictures.probabilities[1:2], grid, channel), _heart_mask(pictures.probabilities[-1:], grid, channel)
    )
    return {
        "geometric_share": geometric_share(first, last),
        "border_shift_px": shift,
        "border_shift_fraction": shift / float(grid[1]),
        "folding_fraction": float(result.details.get("folding", float("nan"))),
        "frames_reached": float(np.mean(result.details["reached"])) if "reached" in result.details else float("nan"),
    }


def _saliency(
    runner: ExaggerationInference,
    segmenter: HeartLungSegmenter,
    pictures: _Pictures,
    step: int,
    occlusion: bool,
    gradcam_layer: str,
    channel: int | None,
) -> tuple[dict, dict, np.ndarray]:
    """The difference, GradCAM (and occlusion) maps on the model grid, their mass inside the heart, the heart."""
    source_input, device = pictures.source_input, runner.device
    model_grid = tuple(source_input.shape[1:])
    source_model_range = to_model_range(torch.from_numpy(pictures.source)[None])
    if source_input.shape == source_model_range.shape and torch.equal(source_input, source_model_range):
        heart = _heart_mask(
            pictures.probabilities[:1], model_grid, channel
        )  # a source at the model size: the same image
    else:
        heart = heart_mask(segmenter, source_input.to(device), model_grid, channel)
    batch = source_input[None].to(device)
    maps = {
        "difference": (pictures.frame_inputs[step, 0] - source_input[0]).abs().numpy() / 2.0,
        "gradcam": saliency_maps(runner.classifier, batch, "gradcam", target_layer=gradcam_layer)[0].cpu().numpy(),
    }
    if occlusion:
        maps["occlusion"] = saliency_maps(runner.classifier, batch, "occlusion")[0].cpu().numpy()
    mass = {name: mass_inside(weights, heart) if heart.any() else float("nan") for name, weights in maps.items()}
    return maps, mass, heart


def _frame_rows(path: str, result: SeriesResult, ctr: np.ndarray) -> list[dict]:
    return [
        {
            "source": path,
            "step": index,
            "target_bin": result.bins[index],
            "target_centre": float(result.centres[index]),
            "score": float(result.scores[index]),
            "generator_frame_score": float(result.generator_frame_scores[index]),
            "ctr": float(ctr[index]),
        }
        for index in range(len(result.bins))
    ]


def _example(
    path: str,
    pictures: _Pictures,
    scores: np.ndarray,
    ctr: np.ndarray,
    step: int,
    heart: np.ndarray,
    maps: dict,
    mass: dict,
) -> dict:
    """What the report's example figure draws of one source (``ctr``: the source's, then the frames')."""
    return {
        "source": path,
        "source_image": pictures.source,
        "frames": pictures.frames,
        "scores": scores.tolist(),
        "ctr": ctr[1:].tolist(),
        "step": step,
        "model_source": to_unit_range(pictures.source_input[0]).numpy(),
        "heart": heart,
        "maps": maps,
        "mass": mass,
    }


def measure_source(
    runner: ExaggerationInference,
    segmenter: HeartLungSegmenter,
    encoder: nn.Module,
    record: dict,
    finding: str | FindingProfile,
    keep_example: bool = False,
    occlusion: bool = True,
    gradcam_layer: str = "model.class_layers.relu",
    result: SeriesResult | None = None,
    seconds: float = 0.0,
    loaded: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> SourceMeasures:
    """Explain ``record["image"]`` (or take its ``result``, explained in a batch in ``seconds``) and
    measure validity, the clinical measure (CTR for cardiomegaly), localisation, anatomy, saliency and
    features. The region of the localisation and anatomy measures is the finding's
    (:mod:`monai_exaggeration.findings`); a finding without a region or a measure gets NaN there.

    ``loaded``: the source and its model input as the runner's reader gave them (else read again).
    The segmentation sees the source and its frames in one forward (and the model-grid source only
    when it differs from the source), the classifier and the encoder the source and frames in one
    forward each.
    """
    start = time.perf_counter() - seconds
    path = record["image"]
    if result is None:
        result = runner.explain(path)
        seconds = time.perf_counter() - start
    profile = finding if isinstance(finding, FindingProfile) else finding_profile(finding)
    channel = _region_channel(profile)
    pictures = _pictures(runner, segmenter, path, result, loaded)
    measured = profile.measure == "ctr"
    ctr = np.asarray(
        [cardiothoracic_ratio(*masks) if measured else float("nan") for masks in pictures.probabilities],
        dtype=np.float64,
    )  # the source, then the frames
    step = counterfactual_step(result.source_score, len(result.bins))
    heart_source_grid = _heart_mask(pictures.probabilities[:1], pictures.source.shape, channel)
    maps, mass, heart_model_grid = _saliency(runner, segmenter, pictures, step, occlusion, gradcam_layer, channel)
    stack = torch.cat([pictures.source_input[None], pictures.frame_inputs]).float()
    features = {
        "classifier": penultimate_features(runner.classifier, stack),
        "encoder": encoder_features(encoder, stack),
    }
    label = record.get(profile.label)
    scores = np.asarray(result.scores, dtype=np.float64)
    row = {
        "source": str(path),
        "label": int(label) if label is not None else "",
        "source_score": result.source_score,
        "source_bin": result.source_bin,
        "counterfactual_step": step,
        "counterfactual_score": float(scores[step]),
        **_validity(result),
        "ctr_source": float(ctr[0]),
        "ctr_first": float(ctr[1]),
        "ctr_last": float(ctr[-1]),
        "delta_ctr": float(ctr[-1] - ctr[1]),
        "ctr_spearman": _spearman(ctr[1:]),
        "heart_fraction": float(heart_source_grid.mean()),
        **_anatomy(pictures, result, channel),
        **{key: float(value) for key, value in _localisation(pictures, step, heart_source_grid).items()},
        "difference_mass_inside": mass["difference"],
        "gradcam_mass_inside": mass["gradcam"],
        "occlusion_mass_inside": mass.get("occlusion", float("nan")),
        "heart_fraction_model_grid": float(heart_model_grid.mean()),
        "method": result.method,
        "series_seconds": seconds,  # making the series (read, classifier, method, frames), before any measure
        "seconds": 0.0,
    }
    example = _example(str(path), pictures, scores, ctr, step, heart_model_grid, maps, mass) if keep_example else None
    row["seconds"] = time.perf_counter() - start
    return SourceMeasures(
        row=row,
        frame_rows=_frame_rows(str(path), result, ctr[1:]),
        source_features={space: values[0] for space, values in features.items()},
        frame_features={space: values[1:] for space, values in features.items()},
        example=example,
    )

"""From per-image measures to the figures of ``metrics.json`` (every figure with the number it rests on)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

from monai_exaggeration.evaluation.measures import FEATURE_SPACES, SourceMeasures
from monai_exaggeration.methods import DEFAULT_METHOD
from monai_exaggeration.metrics.ctr import ctr_faithfulness
from monai_exaggeration.metrics.realism import frechet_distance, identity_rate, kernel_inception_distance
from monai_exaggeration.metrics.validity import series_validity

__all__ = ["summarise", "validity_summary", "realism_summary", "identity_summary", "json_safe"]


def json_safe(value):
    """NaN/inf -> None and numpy scalars -> Python, recursively (JSON has no NaN)."""
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(item) for item in value]
    if isinstance(value, (np.floating, float)):
        return None if not math.isfinite(float(value)) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value


def validity_summary(scores: np.ndarray, source_scores: np.ndarray) -> dict:
    """The papers' validity measures plus the spread per bin (SD and quartiles) for the compatibility plot."""
    summary = series_validity(scores, source_scores).as_dict()
    summary["per_bin_sd"] = scores.std(axis=0).tolist()
    summary["per_bin_q25"] = np.quantile(scores, 0.25, axis=0).tolist()
    summary["per_bin_q75"] = np.quantile(scores, 0.75, axis=0).tolist()
    return summary


def _halves(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.random.default_rng(seed).permutation(count)
    return np.sort(order[: count // 2]), np.sort(order[count // 2 :])


def realism_summary(
    source_features: torch.Tensor, frame_features: torch.Tensor, counterfactual_steps: np.ndarray, seed: int = 0
) -> dict:
    """FID and KID of generated against real images, beside the same figure for real against real.

    The sources are split at random into halves A and B. Baseline: real A against real B. Generated:
    real A against the counterfactuals (far-end frames) of B, and real A against every frame of B,
    so that every comparison has sets of the same size and never compares an image with its own
    counterfactual.
    """
    count = len(source_features)
    half_a, half_b = _halves(count, seed)
    real_a, real_b = source_features[half_a], source_features[half_b]
    counterfactuals_b = frame_features[half_b, counterfactual_steps[half_b]]
    all_frames_b = frame_features[half_b].reshape(-1, frame_features.shape[-1])
    subset = min(100, len(half_a), len(half_b))
    summary = {"feature_dim": int(source_features.shape[1]), "n_real_a": len(half_a), "n_real_b": len(half_b)}
    for name, generated in (
        ("real_vs_real", real_b),
        ("real_vs_counterfactual", counterfactuals_b),
        ("real_vs_all_frames", all_frames_b),
    ):
        summary[f"fid_{name}"] = frechet_distance(real_a, generated) if len(half_a) > 1 else float("nan")
        if subset >= 2:
            mean, sd = kernel_inception_distance(real_a, generated, subset_size=subset, seed=seed)
        else:
            mean, sd = float("nan"), float("nan")
        summary[f"kid_{name}"] = mean
        summary[f"kid_{name}_sd"] = sd
    summary["n_all_frames_b"] = int(len(all_frames_b))
    return summary


def identity_summary(
    source_features: torch.Tensor, frame_features: torch.Tensor, counterfactual_steps: np.ndarray
) -> dict:
    """Nearest-neighbour identity of the counterfactuals and of every step, among all sources."""
    rows = torch.arange(len(source_features))
    counterfactuals = frame_features[rows, torch.as_tensor(counterfactual_steps)]
    per_step = [identity_rate(frame_features[:, step], source_features) for step in range(frame_features.shape[1])]
    return {
        "counterfactual": identity_rate(counterfactuals, source_features),
        "per_step": per_step,
        "n_candidates": int(len(source_features)),
    }


def _mean(frame: pd.DataFrame, column: str) -> float:
    if column not in frame:
        return float("nan")
    values = pd.to_numeric(frame[column], errors="coerce").dropna()
    return float(values.mean()) if len(values) else float("nan")


def _max(frame: pd.DataFrame, column: str) -> float:
    values = _values(frame, column)
    return float(values.max()) if len(values) else float("nan")


def _values(frame: pd.DataFrame, column: str) -> pd.Series:
    """The finite numbers of a column (none when the column is missing)."""
    if column not in frame:
        return pd.Series(dtype=float)
    return pd.to_numeric(frame[column], errors="coerce").replace([np.inf, -np.inf], np.nan).dropna()


def _median(frame: pd.DataFrame, column: str) -> float:
    values = _values(frame, column)
    return float(values.median()) if len(values) else float("nan")


def summarise(measures: Sequence[SourceMeasures], seed: int = 0) -> tuple[dict, pd.DataFrame, pd.DataFrame]:
    """``metrics`` (a JSON-ready dict), the per-image table and the per-frame table."""
    if len(measures) < 2:
        raise ValueError(f"the evaluation needs at least 2 images, got {len(measures)}")
    images = pd.DataFrame([m.row for m in measures])
    frames = pd.DataFrame([row for m in measures for row in m.frame_rows])

    def table(column: str) -> np.ndarray:  # (S, K), one row per image in order
        return np.asarray([[row[column] for row in m.frame_rows] for m in measures], dtype=np.float64)

    scores, generator, ctr = table("score"), table("generator_frame_score"), table("ctr")
    source_scores = images["source_score"].to_numpy(dtype=np.float64)
    steps = images["counterfactual_step"].to_numpy(dtype=np.int64, copy=True)

    features = {
        space: (
            torch.stack([m.source_features[space] for m in measures]),
            torch.stack([m.frame_features[space] for m in measures]),
        )
        for space in FEATURE_SPACES
    }
    positives = images["label"].astype(str) == "1"
    clinical = ctr_faithfulness(ctr, scores)
    clinical.update(
        {
            "mean_ctr_source": _mean(images, "ctr_source"),
            "mean_ctr_per_step": np.nanmean(ctr, axis=0).tolist(),
            "sd_ctr_per_step": np.nanstd(ctr, axis=0).tolist(),
            "mean_ctr_per_step_label_1": np.nanmean(ctr[positives.to_numpy()], axis=0).tolist()
            if positives.any()
            else None,
            "mean_ctr_per_step_label_0": np.nanmean(ctr[~positives.to_numpy()], axis=0).tolist()
            if (~positives).any()
            else None,
        }
    )
    metrics = {
        "n_images": int(len(images)),
        "n_frames": int(len(frames)),
        "n_images_by_label": {
            str(k): int(v) for k, v in images["label"].astype(str).value_counts().sort_index().items()
        },
        "validity": {
            "written_frames": validity_summary(scores, source_scores),
            "generator_frames": validity_summary(generator, source_scores),
        },
        "realism": {space: realism_summary(*features[space], steps, seed) for space in FEATURE_SPACES},
        "preservation": {
            "identity": {space: identity_summary(*features[space], steps) for space in FEATURE_SPACES},
            "n_with_heart": int(pd.to_numeric(images["change_inside"], errors="coerce").notna().sum()),
            "ssim_outside_heart": _mean(images, "ssim_outside"),
            "l1_outside_heart": _mean(images, "l1_outside"),
            "change_inside_heart": _mean(images, "change_inside"),
            "change_outside_heart": _mean(images, "change_outside"),
            "median_inside_outside_ratio": _median(images, "inside_outside_ratio"),
            "change_mass_inside_heart": _mean(images, "change_mass_inside"),
            "heart_fraction": _mean(images, "heart_fraction"),
        },
        "clinical_faithfulness": clinical,
        "anatomy": {
            "median_geometric_share": _median(images, "geometric_share"),
            "mean_geometric_share": _mean(images, "geometric_share"),
            "n_geometric_share": int(len(_values(images, "geometric_share"))),
            "median_border_shift_px": _median(images, "border_shift_px"),
            "median_border_shift_fraction": _median(images, "border_shift_fraction"),
            "mean_folding_fraction": _mean(images, "folding_fraction"),
            "max_folding_fraction": _max(images, "folding_fraction"),
            "frames_reached": _mean(images, "frames_reached"),
        },
        "saliency": {
            "difference_map_mass_inside_heart": _mean(images, "difference_mass_inside"),
            "gradcam_mass_inside_heart": _mean(images, "gradcam_mass_inside"),
            "occlusion_mass_inside_heart": _mean(images, "occlusion_mass_inside"),
            "heart_fraction_model_grid": _mean(images, "heart_fraction_model_grid"),
        },
        "seconds_per_image": _mean(images, "seconds"),
        "seconds_per_series": _mean(images, "series_seconds"),
        "method": str(images["method"].iloc[0]) if "method" in images else DEFAULT_METHOD,
    }
    return json_safe(metrics), images, frames

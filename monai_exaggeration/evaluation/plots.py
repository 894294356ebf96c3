"""Figures of the evaluation: compatibility with spread, CTR against the bin, identity per step, examples."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from monai_exaggeration.binning import centre_values
from monai_exaggeration.plotting import plt, save_figure

__all__ = [
    "compatibility_plot",
    "ctr_plot",
    "identity_plot",
    "examples_figure",
    "series_side_by_side",
    "shortcut_montage",
]


def compatibility_plot(validity: dict, path: str | os.PathLike) -> Path:
    """Mean score per target bin with ±1 SD and the interquartile range: one curve per entry of
    ``validity`` among ``written_frames``, ``generator_frames`` (evaluation) and ``validation_frames`` (training)."""
    figure, axis = plt.subplots(figsize=(5.2, 4.6))
    curves = (
        ("written_frames", "tab:blue", "written frames"),
        ("generator_frames", "tab:orange", "generator frames"),
        ("validation_frames", "tab:blue", "validation frames"),
    )
    for key, colour, label in curves:
        if key not in validity:
            continue
        summary = validity[key]
        mean = np.asarray(summary["per_bin_mean"])
        centres = centre_values(len(mean))
        sd = np.asarray(summary["per_bin_sd"])
        axis.fill_between(
            centres, summary["per_bin_q25"], summary["per_bin_q75"], color=colour, alpha=0.25, linewidth=0
        )
        axis.errorbar(
            centres, mean, yerr=sd, color=colour, marker="o", capsize=3, label=f"{label} (MAE {summary['mae']:.3f})"
        )
    axis.plot([0, 1], [0, 1], "k--", linewidth=1, label="ideal")
    axis.set(xlim=(0, 1), ylim=(0, 1), xlabel="target bin centre", ylabel="classifier score f(x_b)")
    first = next(validity[key] for key, _, _ in curves if key in validity)
    axis.set_title(f"Compatibility (n = {first['num_series']} series)")
    axis.legend(loc="upper left", fontsize=8)
    axis.grid(alpha=0.3)
    return save_figure(figure, path)


def ctr_plot(clinical: dict, path: str | os.PathLike) -> Path:
    """Mean cardiothoracic ratio per step (±1 SD), overall and by the source's label, with the 0.5 cut-off."""
    figure, axis = plt.subplots(figsize=(5.2, 4.0))
    mean = np.asarray(clinical["mean_ctr_per_step"])
    steps = np.arange(len(mean))
    sd = np.asarray(clinical["sd_ctr_per_step"])
    axis.fill_between(steps, mean - sd, mean + sd, color="tab:blue", alpha=0.2, linewidth=0)
    axis.plot(steps, mean, "o-", color="tab:blue", label=f"all (n = {clinical['n_series']})")
    for key, colour, label in (
        ("mean_ctr_per_step_label_0", "tab:green", "label 0"),
        ("mean_ctr_per_step_label_1", "tab:red", "label 1"),
    ):
        if clinical.get(key) is not None:
            axis.plot(steps, clinical[key], ".--", color=colour, label=f"sources with {label}")
    axis.axhline(0.5, color="k", linewidth=0.8, linestyle=":", label="CTR 0.5")
    axis.set(xlabel="step (target bin)", ylabel="cardiothoracic ratio")
    axis.set_title(f"CTR along the series (median Spearman {clinical['median_spearman_ctr_step']:.2f})")
    axis.legend(fontsize=8)
    axis.grid(alpha=0.3)
    return save_figure(figure, path)


def identity_plot(identity: dict, path: str | os.PathLike) -> Path:
    """Nearest-neighbour identity per step in each feature space."""
    figure, axis = plt.subplots(figsize=(5.2, 3.6))
    for space, summary in identity.items():
        per_step = summary["per_step"]
        axis.plot(np.arange(len(per_step)), per_step, "o-", label=f"{space} features")
    axis.set(ylim=(0, 1.02), xlabel="step (target bin)", ylabel="identity rate")
    axis.set_title("Is the frame's nearest real image its own source?")
    axis.legend(fontsize=8)
    axis.grid(alpha=0.3)
    return save_figure(figure, path)


def _heart_outline(axis: plt.Axes, heart: np.ndarray) -> None:
    if heart.any() and not heart.all():
        axis.contour(heart.astype(float), levels=[0.5], colors="cyan", linewidths=0.8)


def examples_figure(examples: Sequence[dict], path: str | os.PathLike, columns: int = 5) -> Path:
    """One row per example: source, frames (score and CTR), |difference|, GradCAM, occlusion (heart outlined)."""
    if not examples:
        raise ValueError("no examples to draw")
    map_names = [name for name in ("difference", "gradcam", "occlusion") if name in examples[0]["maps"]]
    panels = 1 + columns + len(map_names)
    figure, axes = plt.subplots(len(examples), panels, figsize=(1.7 * panels, 1.9 * len(examples)), squeeze=False)
    for row, example in zip(axes, examples):
        frames = example["frames"]
        chosen = np.unique(np.linspace(0, len(frames) - 1, min(columns, len(frames))).round().astype(int))
        row[0].imshow(example["source_image"], cmap="gray", vmin=0, vmax=1)
        row[0].set_title(f"source\n{Path(example['source']).name[:18]}", fontsize=7)
        for axis, step in zip(row[1:], chosen):
            axis.imshow(frames[step], cmap="gray", vmin=0, vmax=1)
            axis.set_title(f"step {step}: f={example['scores'][step]:.2f}\nCTR {example['ctr'][step]:.2f}", fontsize=7)
        for axis in row[1 + len(chosen) : 1 + columns]:
            axis.set_visible(False)
        for axis, name in zip(row[1 + columns :], map_names):
            axis.imshow(example["model_source"], cmap="gray", vmin=0, vmax=1)
            weights = np.clip(example["maps"][name], 0, None)
            axis.imshow(weights, cmap="inferno", alpha=0.6)
            _heart_outline(axis, example["heart"])
            title = "|counterfactual − source|" if name == "difference" else name
            axis.set_title(f"{title}\n{100 * example['mass'][name]:.0f}% in heart", fontsize=7)
        for axis in row:
            axis.set_xticks([])
            axis.set_yticks([])
    return save_figure(figure, path)


def series_side_by_side(
    examples: dict[str, dict], path: str | os.PathLike, titles: dict[str, str] | None = None
) -> Path:
    """One image's series from every method: a row per method (source, every frame with its score and
    CTR, |counterfactual − source| with the heart outlined). ``examples``: method -> example of
    :func:`~monai_exaggeration.evaluation.measures.measure_source`, all of the same source."""
    if not examples:
        raise ValueError("no series to draw")
    sources = {example["source"] for example in examples.values()}
    if len(sources) != 1:
        raise ValueError(f"the series side by side must share one source, got {sorted(sources)}")
    frames = max(len(example["frames"]) for example in examples.values())
    panels = frames + 2
    figure, axes = plt.subplots(
        len(examples), panels, figsize=(1.25 * panels, 1.55 * len(examples) + 0.3), squeeze=False
    )
    for row, (method, example) in zip(axes, examples.items()):
        row[0].imshow(example["source_image"], cmap="gray", vmin=0, vmax=1)
        row[0].set_title("source", fontsize=7)
        row[0].set_ylabel((titles or {}).get(method, method), fontsize=8)
        for axis, frame, score, ctr in zip(row[1:], example["frames"], example["scores"], example["ctr"]):
            axis.imshow(frame, cmap="gray", vmin=0, vmax=1)
            axis.set_title(f"f={score:.2f} CTR {ctr:.2f}", fontsize=6)
        change = np.abs(example["frames"][example["step"]] - example["source_image"])
        row[-1].imshow(change, cmap="inferno", vmin=0, vmax=max(0.05, float(np.quantile(change, 0.999))))
        if example["heart"].shape == change.shape:
            _heart_outline(row[-1], example["heart"])
        row[-1].set_title("|counterfactual − source|", fontsize=6)
        for axis in row:
            axis.set_xticks([])
            axis.set_yticks([])
    figure.suptitle(Path(next(iter(sources))).name, fontsize=8)
    return save_figure(figure, path)


def shortcut_montage(results: Sequence, boxes: Sequence, path: str | os.PathLike, columns: int = 5) -> Path:
    """The shortcut test by eye: one row per series (``SeriesResult``), ``columns`` frames from first to
    last with their scores, then ``|last − first|`` with the marker's box (a ``MarkerBox``) outlined."""
    from matplotlib.patches import Rectangle

    if not results:
        raise ValueError("no series to draw")
    panels = columns + 1
    figure, axes = plt.subplots(len(results), panels, figsize=(1.6 * panels, 1.75 * len(results)), squeeze=False)
    for row, result, box in zip(axes, results, boxes):
        frames = result.unit_frames
        chosen = np.unique(np.linspace(0, len(frames) - 1, min(columns, len(frames))).round().astype(int))
        for axis, step in zip(row, chosen):
            axis.imshow(frames[step], cmap="gray", vmin=0, vmax=1)
            axis.set_title(f"step {step}: f={result.scores[step]:.2f}", fontsize=7)
        for axis in row[len(chosen) : columns]:
            axis.set_visible(False)
        change = np.abs(frames[-1] - frames[0])
        row[-1].imshow(change, cmap="inferno", vmin=0, vmax=max(0.05, float(change.max())))
        r0, c0, r1, c1 = box.pixels(change.shape)
        row[-1].add_patch(Rectangle((c0 - 0.5, r0 - 0.5), c1 - c0, r1 - r0, fill=False, edgecolor="cyan", linewidth=1))
        row[-1].set_title("|last − first|, marker box", fontsize=7)
        row[0].set_ylabel(Path(result.source).name[:18], fontsize=7)
        for axis in row:
            axis.set_xticks([])
            axis.set_yticks([])
    return save_figure(figure, path)

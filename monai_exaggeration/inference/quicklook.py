"""Quick-look files of one exaggeration series: animated GIF, montage with scores, score-vs-step plot.

All take the frames as a float array (K, rows, columns) in [0, 1] (display polarity) and the
classifier score of each frame; files are written atomically. Frames are reduced to at most
``max_side`` pixels for these previews (the DICOM series keeps the full matrix).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from monai_exaggeration.utils import atomic_write

__all__ = ["preview_frames", "write_gif", "write_montage", "write_score_plot"]


def preview_frames(frames: np.ndarray, max_side: int = 512) -> list[Image.Image]:
    """8-bit greyscale PIL images of ``frames`` (K, rows, columns), longer side at most ``max_side``."""
    frames = np.asarray(frames)  # float in [0, 1], or quantised grey levels (uint8/uint16)
    if frames.ndim != 3:
        raise ValueError(f"frames must be (K, rows, columns), got shape {frames.shape}")
    rows, cols = frames.shape[1:]
    scale = min(1.0, max_side / max(rows, cols))
    size = (max(1, round(cols * scale)), max(1, round(rows * scale)))
    images = []
    for frame in frames:  # one at a time: frames may be large (source resolution)
        if frame.dtype == np.uint8:  # grey levels already at 8 bits
            eight_bit = frame
        elif frame.dtype.kind == "u":  # quantised grey levels: 0..max of the type
            eight_bit = np.rint(frame.astype(np.float32) * (255.0 / np.iinfo(frame.dtype).max)).astype(np.uint8)
        else:
            eight_bit = np.rint(np.clip(frame, 0.0, 1.0) * 255).astype(np.uint8)
        image = Image.fromarray(eight_bit)  # 2-D uint8: mode "L"
        images.append(image.resize(size, Image.Resampling.LANCZOS) if scale < 1.0 else image)
    return images


def _caption(step: int, centre: float, score: float) -> str:
    return f"step {step}  target {centre:.2f}  score {score:.2f}"


def __getattr__(name: str):
    """``save_figure`` lives in :mod:`monai_exaggeration.plotting`; kept importable from here, lazily
    (importing that module selects matplotlib's backend)."""
    if name == "save_figure":
        from monai_exaggeration.plotting import save_figure

        return save_figure
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def write_gif(
    path: str | os.PathLike,
    frames: np.ndarray,
    scores: Sequence[float],
    centres: Sequence[float],
    frame_ms: int = 400,
    max_side: int = 512,
) -> Path:
    """Animated GIF (looping, forth and back) with each frame's step, target and score in a bar below it."""
    images = preview_frames(frames, max_side)
    font = ImageFont.load_default()
    bar = 18
    captioned = []
    for step, (image, score, centre) in enumerate(zip(images, scores, centres)):
        canvas = Image.new("L", (image.width, image.height + bar), color=0)
        canvas.paste(image, (0, 0))
        ImageDraw.Draw(canvas).text((4, image.height + 3), _caption(step, centre, score), fill=255, font=font)
        captioned.append(canvas)
    sequence = captioned + captioned[-2:0:-1]  # ping-pong: absent -> present -> absent
    durations = [frame_ms * 2 if i in (0, len(captioned) - 1) else frame_ms for i in range(len(captioned))]
    durations = durations + durations[-2:0:-1]

    def write(tmp: Path) -> None:
        sequence[0].save(tmp, format="GIF", save_all=True, append_images=sequence[1:], duration=durations, loop=0)

    return atomic_write(path, write)


def write_montage(
    path: str | os.PathLike,
    frames: np.ndarray,
    scores: Sequence[float],
    centres: Sequence[float],
    title: str = "",
    max_side: int = 256,
) -> Path:
    """One row of the frames with target and achieved score under each (PNG)."""
    from monai_exaggeration.plotting import plt, save_figure

    images = preview_frames(frames, max_side)
    count = len(images)
    aspect = images[0].height / images[0].width
    figure, axes = plt.subplots(1, count, figsize=(1.6 * count, 1.6 * aspect + 0.7), dpi=120, squeeze=False)
    for step, (axis, image, score, centre) in enumerate(zip(axes[0], images, scores, centres)):
        axis.imshow(np.asarray(image), cmap="gray", vmin=0, vmax=255)
        axis.set_xticks([])
        axis.set_yticks([])
        axis.set_xlabel(f"target {centre:.2f}\nscore {score:.2f}", fontsize=8)
        axis.set_title(f"step {step}", fontsize=8)
    if title:
        figure.suptitle(title, fontsize=9)
    return save_figure(figure, path)


def write_score_plot(
    path: str | os.PathLike,
    scores: Sequence[float],
    centres: Sequence[float],
    source_score: float,
    finding: str = "finding",
    model_frame_scores: Sequence[float] | None = None,
) -> Path:
    """Classifier score against step (the posterior-vs-step curve), with targets, source score and 0.5."""
    from monai_exaggeration.plotting import plt, save_figure

    steps = np.arange(len(scores))
    figure, axis = plt.subplots(figsize=(5, 3.6), dpi=120)
    axis.plot(steps, centres, ls="--", marker=".", color="grey", lw=1, label="target (bin centre)")
    axis.plot(steps, scores, marker="o", lw=2, label="score of the written frame")
    if model_frame_scores is not None:
        axis.plot(steps, model_frame_scores, marker="x", lw=1, alpha=0.7, label="score of the generator's frame")
    axis.axhline(source_score, color="tab:red", lw=1, label=f"source image ({source_score:.2f})")
    axis.axhline(0.5, color="black", lw=0.5, ls=":")
    axis.set(xlabel="step", ylabel=f"classifier score ({finding})", ylim=(0, 1), xticks=steps)
    axis.set_title("Posterior along the exaggeration series", fontsize=10)
    axis.legend(loc="upper left", fontsize=7)
    return save_figure(figure, path)

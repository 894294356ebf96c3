"""Montage of the same validation images explained by one explainer, to compare variants by eye.

Rows: the first ``--images`` validation images with the classes interleaved (negative, positive, ...),
so every explainer is shown on the same sources. Columns: the written frames of the chosen bins
(source resolution, as a DICOM reader sees them), each captioned with its classifier score, then
the change |last - first| (brighter = more change; the same scale for every montage).

    python scripts/explainer_montage.py --explainer_weights RUN/models/explainer_best.pt \\
        --dataset_dir DATASET_DIR --title "(d) heart region" --out docs/images/ablation_d.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from monai_exaggeration.bundle import load_bundle_classifier
from monai_exaggeration.data import load_split, stratified_head
from monai_exaggeration.inference import ExaggerationInference
from monai_exaggeration.plotting import plt, save_figure

CHANGE_SCALE = 0.15  # display units that map to white in the change column


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--explainer_weights", required=True)
    parser.add_argument("--dataset_dir", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--title", default="")
    parser.add_argument("--images", type=int, default=6)
    parser.add_argument("--bins", default="0,2,4,6,8,9", help="target bins shown (comma-separated)")
    parser.add_argument("--finding", default="cardiomegaly")
    parser.add_argument(
        "--calibrate", default="true", help="calibrated series (true, the inference's default) or raw (false)"
    )
    args = parser.parse_args(argv)

    records = stratified_head(load_split(args.dataset_dir, "val", label=args.finding), args.images, args.finding)
    runner = ExaggerationInference(
        None,
        load_bundle_classifier(),
        explainer_weights=args.explainer_weights,
        finding=args.finding,
        quicklook=False,
        calibrate=args.calibrate,
    ).prepare()
    shown = [int(b) for b in args.bins.split(",")]
    columns = len(shown) + 1
    figure, axes = plt.subplots(len(records), columns, figsize=(1.45 * columns, 1.6 * len(records)), squeeze=False)
    for row, record in enumerate(records):
        result = runner.explain(record["image"])
        frames = result.unit_frames
        for col, target in enumerate(shown):
            index = result.bins.index(target)
            axis = axes[row, col]
            axis.imshow(frames[index], cmap="gray", vmin=0, vmax=1)
            axis.set_title(f"b{target}: {result.scores[index]:.2f}", fontsize=7)
        change = np.abs(frames[-1] - frames[0])
        axes[row, -1].imshow(change, cmap="magma", vmin=0, vmax=CHANGE_SCALE)
        axes[row, -1].set_title("|last-first|", fontsize=7)
        axes[row, 0].set_ylabel(f"label {int(record[args.finding])}\nf(x)={result.source_score:.2f}", fontsize=7)
    for axis in axes.flat:
        axis.set_xticks([])
        axis.set_yticks([])
    if args.title:
        figure.suptitle(args.title, fontsize=9)
    figure.set_dpi(80)  # keeps a 6-image montage under ~0.6 MB
    out = save_figure(figure, args.out)
    print(out)
    return out


if __name__ == "__main__":
    main()

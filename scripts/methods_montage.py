"""Montage of one chest X-ray explained by every counterfactual method, one row per method.

Columns: the written frames of the chosen bins (source resolution, as a DICOM viewer shows them),
each captioned with its classifier score, then the change |frame(last bin) − frame(first bin)|
on one scale for every row. Default input: RG1_UNCR.dcm from pydicom-data.

    python scripts/methods_montage.py --out docs/images/methods_rg1.png
    python scripts/methods_montage.py --input chest.dcm --methods progressive_exaggeration latent_shift --out m.png
    # explainer files side by side (one row each, e.g. the variants of an ablation), no baselines:
    python scripts/methods_montage.py --methods --explainer "(d)=RUN_D/explainer_final.pt" \
        --explainer "(e)=RUN_E/explainer_final.pt" --out variants_rg1.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from monai_exaggeration.bundle import default_bundle_root, load_bundle_classifier
from monai_exaggeration.data import default_input
from monai_exaggeration.inference import ExaggerationInference
from monai_exaggeration.methods import METHOD_NAMES, method_title
from monai_exaggeration.plotting import plt, save_figure

CHANGE_SCALE = 0.15  # display units that map to white in the change column


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", default=None, help="chest X-ray file (default: RG1_UNCR.dcm)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--methods", nargs="*", default=list(METHOD_NAMES), choices=list(METHOD_NAMES))
    parser.add_argument(
        "--explainer",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="a further row: the explainer file PATH, labelled NAME (repeatable)",
    )
    parser.add_argument("--calibrate", default="true", help="calibrated explainer series (true) or raw (false)")
    parser.add_argument("--dpi", type=int, default=None, help="figure resolution (default: the plotting default)")
    parser.add_argument(
        "--crop",
        default=None,
        metavar="R0,R1,C0,C1",
        help="show only this part of every frame, as fractions of rows and columns (e.g. the heart: "
        "0.35,0.9,0.2,0.85), at full resolution",
    )
    parser.add_argument("--bins", default="0,2,4,6,8,9", help="target bins shown (comma-separated)")
    parser.add_argument(
        "--autoencoder",
        default=str(Path(default_bundle_root("cxr_autoencoder")) / "models" / "autoencoder.pt"),
        help="Latent Shift's autoencoder file (default: the shipped one)",
    )
    args = parser.parse_args(argv)
    source = args.input or default_input()
    bins = [int(b) for b in args.bins.split(",")]
    classifier = load_bundle_classifier()
    weights = Path(default_bundle_root("cxr")) / "models" / "explainer.pt"
    runs = [(method, method, weights) for method in args.methods]
    for entry in args.explainer:
        name, _, path = entry.partition("=")
        runs.append((name, "progressive_exaggeration", Path(path)))
    rows = []
    for name, method, explainer in runs:
        runner = ExaggerationInference(
            None,
            classifier,
            explainer_weights=explainer,
            method=method,
            autoencoder_weights=args.autoencoder,
            quicklook=False,
            calibrate=args.calibrate,
        ).prepare()
        rows.append((name, runner.explain(source)))
    figure, axes = plt.subplots(
        len(rows), len(bins) + 1, figsize=(1.9 * (len(bins) + 1), 2.1 * len(rows)), squeeze=False
    )
    for row, (method, result) in zip(axes, rows):
        frames = result.unit_frames
        if args.crop:
            r0, r1, c0, c1 = (float(v) for v in args.crop.split(","))
            height, width = frames.shape[1:]
            frames = frames[:, int(r0 * height) : int(r1 * height), int(c0 * width) : int(c1 * width)]
        for axis, target in zip(row, bins):
            step = result.bins.index(target)
            axis.imshow(frames[step], cmap="gray", vmin=0, vmax=1)
            axis.set_title(f"bin {target}: f={result.scores[step]:.2f}", fontsize=8)
        change = np.abs(frames[result.bins.index(bins[-1])] - frames[result.bins.index(bins[0])])
        row[-1].imshow(change, cmap="gray", vmin=0, vmax=CHANGE_SCALE)
        row[-1].set_title(f"|bin {bins[-1]} − bin {bins[0]}|", fontsize=8)
        row[0].set_ylabel(method_title(method) if method in METHOD_NAMES else method, fontsize=9)
        for axis in row:
            axis.set_xticks([])
            axis.set_yticks([])
    figure.suptitle(f"{Path(source).name} (source score {rows[0][1].source_score:.2f})", fontsize=9)
    if args.dpi:
        figure.set_dpi(args.dpi)
    return save_figure(figure, args.out)


if __name__ == "__main__":
    print(main())

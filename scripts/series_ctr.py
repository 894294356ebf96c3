"""Clinical faithfulness of written series: cardiothoracic ratio (CTR) of every frame of an inference run.

    python scripts/series_ctr.py DIR/frames.csv [--csv OUT.csv] [--json OUT.json]

Measures CTR on each written frame (the DICOM files listed in ``frames.csv``) with the heart/lung
segmentation of ``bundles/cxr_segmentation`` (``models/segmentation.pt``) and prints
``monai_exaggeration.metrics.ctr_faithfulness``: Spearman of CTR with the step, ΔCTR between the
ends of each series, and how often CTR crosses 0.5 in the same direction as the classifier's score.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd
import torch
from tqdm import tqdm

from monai_exaggeration.bundle import load_bundle_segmenter
from monai_exaggeration.metrics import ctr_faithfulness
from monai_exaggeration.transforms import read_cxr, to_model_range
from monai_exaggeration.utils import json_text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("frames_csv", type=Path, help="frames.csv of an inference run")
    parser.add_argument("--csv", type=Path, help="write frames.csv with a ctr column here")
    parser.add_argument("--json", type=Path, help="write the summary as JSON here")
    parser.add_argument(
        "--weights", help="segmentation weights (default: bundles/cxr_segmentation/models/segmentation.pt)"
    )
    args = parser.parse_args(argv)
    if not args.frames_csv.is_file():
        print(f"error: {args.frames_csv} not found -- give the frames.csv of an inference run", file=sys.stderr)
        return 2
    frames = pd.read_csv(args.frames_csv)
    segmenter = load_bundle_segmenter(weights=args.weights)
    ctr = []
    for path in tqdm(frames["output_file"], desc="CTR", unit="frame", disable=None):
        pixels = torch.from_numpy(read_cxr(path).pixels)[None, None]
        ctr.append(segmenter.ctr(to_model_range(pixels))[0])
    frames["ctr"] = ctr
    table = frames.pivot(index="series_instance_uid", columns="step", values="ctr")
    scores = frames.pivot(index="series_instance_uid", columns="step", values="score").loc[table.index]
    summary = ctr_faithfulness(table.to_numpy(), scores.to_numpy())
    summary["mean_ctr_per_step"] = table.mean(axis=0).round(4).tolist()
    text = json_text(summary)
    print(text)
    if args.csv:
        frames.to_csv(args.csv, index=False)
    if args.json:
        args.json.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

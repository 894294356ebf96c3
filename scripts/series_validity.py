"""Validity of the series an inference run wrote, from its ``frames.csv``.

    python scripts/series_validity.py DIR/frames.csv [--json OUT.json]

For the written frames (column ``score``) and the generator's frames (``generator_frame_score``):
MAE between score and target centre (per target bin and overall), flip rate, median Spearman
(score vs step) and the share of monotone series — the measures of
``monai_exaggeration.metrics.series_validity``, computed against each row's own ``target_centre`` so
that runs with a bin range or fewer frames are measured correctly.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from monai_exaggeration.metrics import series_validity
from monai_exaggeration.utils import json_text


def validity_of(frames: pd.DataFrame, column: str, source_scores: pd.Series) -> dict:
    """Validity measures of one score column of ``frames.csv`` (every series must have the same steps)."""
    table = frames.pivot(index="series_instance_uid", columns="step", values=column)
    centres = frames.pivot(index="series_instance_uid", columns="step", values="target_centre")
    if table.isna().any().any():
        raise ValueError("series have different steps; run this per setting")
    summary = series_validity(table.to_numpy(), source_scores.loc[table.index].to_numpy())
    errors = (table - centres).abs()
    return {
        "num_series": summary.num_series,
        "mae": float(errors.to_numpy().mean()),
        "per_step_mae": errors.mean(axis=0).round(4).tolist(),
        "per_step_mean_score": table.mean(axis=0).round(4).tolist(),
        "target_centres": centres.iloc[0].round(4).tolist(),
        "flip_rate": summary.flip_rate,
        "median_spearman": summary.median_spearman,
        "monotone_rate": summary.monotone_rate,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("frames_csv", type=Path, help="frames.csv of an inference run (sources.csv must sit beside it)")
    parser.add_argument("--json", type=Path, help="also write the result as JSON here")
    args = parser.parse_args(argv)
    if not args.frames_csv.is_file():
        print(f"error: {args.frames_csv} not found -- give the frames.csv of an inference run", file=sys.stderr)
        return 2
    frames = pd.read_csv(args.frames_csv)
    sources = pd.read_csv(args.frames_csv.with_name("sources.csv")).set_index("series_instance_uid")["source_score"]
    result = {
        "written_frames": validity_of(frames, "score", sources),
        "generator_frames": validity_of(frames, "generator_frame_score", sources),
    }
    text = json_text(result)
    print(text)
    if args.json:
        args.json.write_text(text)
    return 0


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    sys.exit(main())

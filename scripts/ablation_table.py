"""One markdown table of the evaluation figures of several explainers (``run evaluating`` outputs).

    python scripts/ablation_table.py "(a) paper=RUN_A/evaluation" "(b) transfer=RUN_B/evaluation" ...

Each argument is ``LABEL=FOLDER`` where FOLDER holds the evaluation's ``metrics.json``. Columns are
the written frames' validity, identity (encoder features, mean over all steps), preservation
outside the heart, clinical faithfulness (CTR), anatomy (geometric share of the change, heart-border
shift, folding, frames that reached their bin centre) and realism (FID ratio to the real-vs-real
baseline). A cell the evaluation did not measure (e.g. folding for an image generator) is "n/a".
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

COLUMNS = [
    ("per-bin MAE", lambda m: m["validity"]["written_frames"]["mae"], "{:.3f}"),
    ("flip", lambda m: m["validity"]["written_frames"]["flip_rate"], "{:.1%}"),
    ("monotone", lambda m: m["validity"]["written_frames"]["monotone_rate"], "{:.1%}"),
    ("median Spearman", lambda m: m["validity"]["written_frames"]["median_spearman"], "{:.2f}"),
    ("identity (all frames)", lambda m: float(np.mean(m["preservation"]["identity"]["encoder"]["per_step"])), "{:.1%}"),
    ("SSIM outside heart", lambda m: m["preservation"]["ssim_outside_heart"], "{:.3f}"),
    ("L1 outside heart", lambda m: m["preservation"].get("l1_outside_heart", float("nan")), "{:.4f}"),
    ("change in/out", lambda m: m["preservation"]["median_inside_outside_ratio"], "{:.2f}"),
    ("median ΔCTR", lambda m: m["clinical_faithfulness"]["median_delta_ctr"], "{:+.3f}"),
    ("CTR rises", lambda m: m["clinical_faithfulness"]["share_ctr_increases"], "{:.1%}"),
    ("CTR Spearman", lambda m: m["clinical_faithfulness"]["median_spearman_ctr_step"], "{:.2f}"),
    ("geometric share", lambda m: m["anatomy"]["median_geometric_share"], "{:.2f}"),
    ("border shift px", lambda m: m["anatomy"]["median_border_shift_px"], "{:+.1f}"),
    ("folding", lambda m: m["anatomy"]["mean_folding_fraction"], "{:.3%}"),
    ("frames reached", lambda m: m["anatomy"]["frames_reached"], "{:.1%}"),
    (
        "FID all / real",
        lambda m: m["realism"]["encoder"]["fid_real_vs_all_frames"] / m["realism"]["encoder"]["fid_real_vs_real"],
        "{:.2f}",
    ),
    ("KID all", lambda m: m["realism"]["encoder"]["kid_real_vs_all_frames"], "{:.3f}"),
]


def row(label: str, folder: Path) -> str:
    path = folder / "metrics.json"
    if not path.is_file():  # a method comparison's folder: one sub-folder per method
        path = next(folder.glob("*/metrics.json"))
    metrics = json.loads(path.read_text())
    cells = []
    for _, get, fmt in COLUMNS:
        try:
            value = get(metrics)
            cells.append("n/a" if value is None or value != value else fmt.format(value))
        except (KeyError, TypeError, ValueError, ZeroDivisionError):
            cells.append("n/a")
    return f"| {label} | {metrics['n_images']} | " + " | ".join(cells) + " |"


def main(argv: list[str]) -> str:
    if not argv:
        raise SystemExit(__doc__)
    lines = [
        "| variant | images | " + " | ".join(name for name, _, _ in COLUMNS) + " |",
        "|---|---|" + "---|" * len(COLUMNS),
    ]
    for argument in argv:
        label, _, folder = argument.partition("=")
        lines.append(row(label, Path(folder)))
    text = "\n".join(lines)
    print(text)
    return text


if __name__ == "__main__":
    main(sys.argv[1:])

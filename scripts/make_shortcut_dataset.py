"""Copy a labelled folder with a planted marker (the faithfulness checks' shortcut; docs/evaluation.md).

Usage: python scripts/make_shortcut_dataset.py --dataset_dir SRC --output_dir DST [--label cardiomegaly]
       [--positive_rate 0.95] [--negative_rate 0.05] [--seed 0]
"""

from __future__ import annotations

import argparse
import logging
import sys

from monai_exaggeration.evaluation.shortcut import make_shortcut_dataset


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset_dir", required=True, help="a folder with labels.csv and 8-bit PNG/JPEG images")
    parser.add_argument("--output_dir", required=True, help="where the copy goes (labels.csv, markers.csv, images)")
    parser.add_argument("--label", default="cardiomegaly", help="the label column whose positives get the marker")
    parser.add_argument("--positive_rate", type=float, default=0.95)
    parser.add_argument("--negative_rate", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        markers = make_shortcut_dataset(
            args.dataset_dir, args.output_dir, args.label, args.positive_rate, args.negative_rate, args.seed
        )
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"{len(markers)} images copied to {args.output_dir} ({int(markers['marker'].sum())} with the marker)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

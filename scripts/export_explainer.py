"""Turn a training checkpoint into a shippable explainer file: the generator (fp16) and its record.

    python scripts/export_explainer.py RUN/models/explainer_final.pt bundles/cxr/models/explainer.pt

The input is any explainer file written by training (``explainer_checkpoint_*.pt``,
``explainer_best.pt``, ``explainer_final.pt``); the discriminator, optimisers and trainer state are
left out. The output loads with ``monai_exaggeration.networks.load_explainer`` and the bundle's
inference with no architecture flags. Prints its size and SHA-256.
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

from monai_exaggeration.networks import load_explainer, save_explainer


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint")
    parser.add_argument("output")
    parser.add_argument("--fp32", action="store_true", help="keep float32 weights (default: fp16, half the size)")
    args = parser.parse_args(argv)
    loaded = load_explainer(args.checkpoint)
    out = save_explainer(args.output, loaded.generator, loaded.record, half=not args.fp32)
    digest = hashlib.sha256(out.read_bytes()).hexdigest()
    print(f"{out}: {out.stat().st_size / 1e6:.1f} MB, sha256 {digest}, record {loaded.record}")
    return out


if __name__ == "__main__":
    main()

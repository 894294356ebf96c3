"""Benchmark: seconds per 10-frame series of every counterfactual method on the same images, in one run.

Methods (``monai_exaggeration.methods``): the shipped explainer (``progressive_exaggeration``),
Latent Shift in the shipped autoencoder (``latent_shift``) and pixel-space gradient ascent
(``gradient_ascent``), all against the shipped classifier, through the same inference runner
(``ExaggerationInference.explain_loaded``: source score, the method's series, frames, the frames'
scores), so every method pays the same read-free path and only the method differs.

The explainer runs twice: calibrated (the inference's default: each frame's change scaled until it
scores at its bin centre) and raw (``calibrate: false``).

For each method, over the same ``--images`` sources (after one warm-up source): median and IQR of
the seconds per series, the ratio of the median to Latent Shift's, the mean absolute change per
frame (|frame − source| in display units [0, 1], frames other than the source's own bin) and the
mean |score − bin centre| of the written frames, so speed is compared at comparable change.
Limits (issue 25), measured in the same run: the calibrated explainer's series at most 1.0x Latent
Shift's time, the raw one at most 0.5x.

    python benchmarks/methods.py                           # 20 images of the development data's NIH sample
    python benchmarks/methods.py --input DIR --images 10 --threads 2
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from repo_helpers import shared_data_dir

from monai_exaggeration.bundle import default_bundle_root, load_bundle_classifier
from monai_exaggeration.data import collect_inputs, default_input, load_split, stratified_head
from monai_exaggeration.inference import ExaggerationInference
from monai_exaggeration.methods import METHOD_NAMES

SHARED = shared_data_dir() / "nih-cardiomegaly-128"


def sources(args: argparse.Namespace) -> list[str]:
    """``--input`` (file or folder), else the validation split of the development data's NIH sample, else RG1."""
    if args.input:
        return [str(record["image"]) for record in collect_inputs(args.input)][: args.images + 1]
    if (SHARED / "labels.csv").is_file():
        records = stratified_head(load_split(SHARED, "val"), args.images + 1)
        return [str(record["image"]) for record in records]
    return [default_input()] * (args.images + 1)


def runner(method: str, args: argparse.Namespace, calibrate: bool) -> ExaggerationInference:
    return ExaggerationInference(
        None,
        load_bundle_classifier(device=args.device),
        explainer_weights=args.explainer_weights,
        method=method,
        autoencoder_weights=args.autoencoder,
        quicklook=False,
        device=args.device,
        calibrate=calibrate,
    ).prepare()


def measure(method: str, paths: list[str], args: argparse.Namespace, calibrate: bool = True) -> dict:
    run = runner(method, args, calibrate)
    loaded = [(path, *run.load(path)) for path in paths]  # reading is outside the timed part
    run.explain_loaded(loaded[:1])  # warm-up
    seconds, change, error = [], [], []
    for item in loaded[1:]:
        if run.device.type == "cuda":
            torch.cuda.synchronize(run.device)
        start = time.perf_counter()
        result = run.explain_loaded([item])[0]
        if run.device.type == "cuda":
            torch.cuda.synchronize(run.device)
        seconds.append(time.perf_counter() - start)
        if isinstance(result, Exception):
            raise result
        source = item[1][0].numpy()
        moved = [k for k, b in enumerate(result.bins) if b != result.source_bin]
        frames = result.unit_frames
        change.append(float(np.mean([np.abs(frames[k] - source).mean() for k in moved])))
        error.append(float(np.mean(np.abs(np.asarray(result.scores) - np.asarray(result.centres)))))
    q1, median, q3 = np.quantile(seconds, [0.25, 0.5, 0.75])
    return {
        "median": float(median),
        "iqr": (float(q1), float(q3)),
        "change": statistics.fmean(change),
        "mae": statistics.fmean(error),
        "n": len(seconds),
        "version": run.model_version,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", default=None, help="file or folder of chest X-rays (default: see the docstring)")
    parser.add_argument("--images", type=int, default=20, help="sources timed per method (after one warm-up)")
    parser.add_argument("--methods", nargs="+", default=list(METHOD_NAMES), choices=list(METHOD_NAMES))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument(
        "--autoencoder",
        default=str(Path(default_bundle_root("cxr_autoencoder")) / "models" / "autoencoder.pt"),
        help="Latent Shift's autoencoder file",
    )
    parser.add_argument(
        "--explainer_weights",
        default=str(Path(default_bundle_root("cxr")) / "models" / "explainer.pt"),
        help="the explainer file (default: the shipped one)",
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    paths = sources(args)
    print(
        f"{len(paths) - 1} sources timed per method (+1 warm-up), device {args.device}, torch threads {torch.get_num_threads()}"
    )
    results = {}
    for method in args.methods:
        if method == "progressive_exaggeration":
            results[f"{method} (calibrated)"] = measure(method, paths, args, calibrate=True)
            results[f"{method} (raw)"] = measure(method, paths, args, calibrate=False)
        else:
            results[method] = measure(method, paths, args)
    reference = results.get("latent_shift", {}).get("median")
    print(
        f"\n{'method':<38}{'median s':>10}{'IQR s':>18}{'x Latent Shift':>16}{'|change|/frame':>16}{'|f - centre|':>14}"
    )
    for method, r in results.items():
        ratio = f"{r['median'] / reference:.2f}x" if reference else "n/a"
        iqr = f"{r['iqr'][0]:.3f}-{r['iqr'][1]:.3f}"
        print(f"{method:<38}{r['median']:>10.3f}{iqr:>18}{ratio:>16}{r['change']:>16.4f}{r['mae']:>14.3f}")
    if reference:
        for label, limit in (("calibrated", 1.0), ("raw", 0.5)):
            key = f"progressive_exaggeration ({label})"
            if key in results:
                ratio = results[key]["median"] / reference
                verdict = "met" if ratio <= limit else "not met"
                print(f"{label} explainer series: {ratio:.2f}x Latent Shift's time (limit <= {limit}x: {verdict})")
    for method, r in results.items():
        print(f"  {method}: model_version {r['version']}")


if __name__ == "__main__":
    main()

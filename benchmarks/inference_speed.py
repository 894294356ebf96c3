"""Benchmark: time per source of the inference workflow, and the amortised explainer against an
optimisation-based counterfactual that needs gradient steps for every frame.

For one image (default: the real CR chest RG1_UNCR.dcm, 1955 x 1841) and the default 10-frame
series, on CPU (and CUDA when present):

* **explainer** — ``ExaggerationInference`` with the shipped models (``inference.json``): seconds per
  source split into read/preprocess, classifier, generator, frames (full-resolution frames and their
  re-preprocessing for scoring), DICOM write and quick-looks;
* **baseline** — pixel-space gradient ascent, the standard optimisation counterfactual (the
  ``gradient_ascent`` method of ``monai_exaggeration.methods``): for the same 10 target scores (bin
  centres), Adam (lr ``--baseline-lr``) on perturbations δ of the preprocessed source x (model size
  and range), all targets in one batch, minimising ``BCE(f(x + δ), target) + λ·mean|δ|``, clamped
  to [-1, 1], each until ``|f(x + δ) − target| <= --tolerance`` or ``--baseline-steps`` steps. Same
  classifier, device and input. ``benchmarks/methods.py`` compares every method, Latent Shift
  included, over many images.

Printed: the stage table, the baseline's steps and accuracy next to the explainer's, and two
ratios measured in the same run: *compute* (baseline optimisation / explainer generator + scoring
of the series) and *end-to-end* (baseline + the read, frame, write and quick-look stages it would
need too / explainer end to end). Target: the explainer at least 20x faster per series.

    python benchmarks/inference_speed.py
    python benchmarks/inference_speed.py --repeats 5 --device cpu --threads 2
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

from monai_exaggeration.binning import bin_centres
from monai_exaggeration.bundle import default_bundle_root, load_bundle_classifier
from monai_exaggeration.data import default_input
from monai_exaggeration.inference import STAGES, ExaggerationInference
from monai_exaggeration.methods import PixelGradientAscent
from monai_exaggeration.transforms import load_cxr

NUM_BINS = 10


def build_explainer(device: str, resolution: str, quicklook: bool) -> ExaggerationInference:
    """The shipped explainer exactly as ``bundles/cxr/configs/inference.json`` configures it."""
    weights = Path(default_bundle_root("cxr")) / "models" / "explainer.pt"
    classifier = load_bundle_classifier(device=device)
    runner = ExaggerationInference(
        None, classifier, explainer_weights=weights, resolution=resolution, quicklook=quicklook, device=device
    )
    return runner.prepare()


def time_explainer(
    runner: ExaggerationInference, path: str, output_dir: Path, repeats: int
) -> tuple[dict, float, float]:
    """Mean seconds per stage over ``repeats`` sources (after one warm-up), the generator frames' MAE and
    the mean |change| of the last written frame against the first (display units)."""
    runner.explain(path)  # warm-up: lazy imports, allocator, first-call overheads
    per_stage: dict[str, list[float]] = {stage: [] for stage in STAGES}
    errors = []
    for _ in range(repeats):
        runner.timer.seconds.clear()
        result = runner.explain(path)
        runner.write(result, output_dir)
        for stage in STAGES:
            per_stage[stage].append(runner.timer.seconds.get(stage, 0.0))
        errors.append(statistics.fmean(abs(s - c) for s, c in zip(result.generator_frame_scores, result.centres)))
    frames = result.unit_frames
    change = float(abs(frames[-1] - frames[0]).mean())
    return {stage: statistics.fmean(values) for stage, values in per_stage.items()}, statistics.fmean(errors), change


def pixel_space_counterfactuals(
    classifier: torch.nn.Module, image: torch.Tensor, steps: int, tolerance: float, lr: float, l1_weight: float
) -> tuple[float, list[int], list[float], float]:
    """The ``gradient_ascent`` method (:class:`~monai_exaggeration.methods.PixelGradientAscent`) for every
    bin: seconds, Adam steps per frame, achieved scores and the last frame's mean |change| (display units)."""
    method = PixelGradientAscent(classifier, steps=steps, lr=lr, l1=l1_weight, tolerance=tolerance)
    with torch.no_grad():
        score = float(classifier(image))
    source_bin = min(int(score * NUM_BINS), NUM_BINS - 1)
    if image.device.type == "cuda":
        torch.cuda.synchronize(image.device)
    start = time.perf_counter()
    made = method(image, [score], [source_bin], list(range(NUM_BINS)), NUM_BINS)
    if image.device.type == "cuda":
        torch.cuda.synchronize(image.device)
    seconds = time.perf_counter() - start
    with torch.no_grad():
        achieved = [float(s) for s in classifier(made.frames[0][:, None].to(image.device)).reshape(-1)]
    change = float((made.frames[0, -1] - image[0, 0].cpu()).abs().mean()) / 2.0
    return seconds, made.details[0]["steps"], achieved, change


def run_device(device: str, args: argparse.Namespace) -> None:
    print(f"\n=== device {device} (torch threads {torch.get_num_threads()}) ===")
    output_dir = Path(tempfile.mkdtemp(prefix="exag_bench_"))
    try:
        runner = build_explainer(device, args.resolution, quicklook=not args.no_quicklook)
        stages, explainer_mae, explainer_change = time_explainer(runner, args.input, output_dir, args.repeats)
    finally:
        shutil.rmtree(output_dir, ignore_errors=True)
    total = sum(stages.values())
    print(f"explainer, mean of {args.repeats} sources ({args.resolution} resolution, {NUM_BINS} frames):")
    print(f"  {'stage':<12}{'seconds':>10}{'share':>9}")
    for stage in STAGES:
        print(f"  {stage:<12}{stages[stage]:>10.3f}{stages[stage] / total:>9.1%}")
    print(f"  {'total':<12}{total:>10.3f}")

    image = load_cxr(args.input, spatial_size=runner.image_size)[None].as_tensor().to(device)
    targets = bin_centres(NUM_BINS)
    classifier = runner.classifier
    pixel_space_counterfactuals(classifier, image, 5, args.tolerance, args.baseline_lr, args.l1)  # warm-up
    runs = [
        pixel_space_counterfactuals(classifier, image, args.baseline_steps, args.tolerance, args.baseline_lr, args.l1)
        for _ in range(args.baseline_repeats)
    ]
    baseline = statistics.fmean(run[0] for run in runs)
    used, achieved, change = runs[-1][1], runs[-1][2], runs[-1][3]
    reached = sum(abs(a - float(t)) <= args.tolerance for a, t in zip(achieved, targets))
    baseline_mae = statistics.fmean(abs(a - float(t)) for a, t in zip(achieved, targets))
    print(
        f"baseline (pixel-space gradient ascent, Adam lr {args.baseline_lr}, L1 {args.l1}, <= {args.baseline_steps} "
        f"steps/frame, tolerance {args.tolerance}), mean of {args.baseline_repeats}: {baseline:.3f} s per series; "
        f"steps per frame {used}; {reached}/{NUM_BINS} frames within tolerance, mean |f - target| {baseline_mae:.3f}; "
        f"mean |change| of its last frame {change:.4f} (display units)"
    )
    print(
        f"explainer generator frames: mean |f - target| {explainer_mae:.3f} (one forward pass per frame, no search); "
        f"mean |change| of its last written frame {explainer_change:.4f} (display units)"
    )
    step_seconds = baseline / max(1, sum(used) + len(used))  # forward passes incl. the final check per frame
    steps_for_target = 20 * (stages["generator"] + stages["classifier"]) / (NUM_BINS * step_seconds)
    print(
        f"baseline cost per gradient step {1000 * step_seconds:.1f} ms: an optimiser needing more than "
        f"{steps_for_target:.0f} steps per frame is >= 20x slower than the explainer's compute"
    )

    compute = stages["generator"] + stages["classifier"]
    shared = total - compute  # reading, frames, writing and quick-looks are needed by both methods
    compute_ratio = baseline / compute
    end_to_end_ratio = (baseline + shared) / total
    print(
        f"explainer vs pixel-space optimisation ({device}): compute {compute_ratio:.1f}x faster "
        f"({baseline:.2f} s vs {compute:.3f} s), end-to-end {end_to_end_ratio:.1f}x faster "
        f"({baseline + shared:.2f} s vs {total:.2f} s) (target >= 20x per series)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", default=None, help="chest X-ray file (default: RG1_UNCR.dcm from pydicom-data)")
    parser.add_argument("--repeats", type=int, default=3, help="explainer sources timed after one warm-up")
    parser.add_argument("--baseline-repeats", type=int, default=1, help="baseline series timed after a warm-up")
    parser.add_argument(
        "--device", choices=["cpu", "cuda", "all"], default="all", help="default: cpu, and cuda if present"
    )
    parser.add_argument("--resolution", choices=["source", "model"], default="source")
    parser.add_argument("--no-quicklook", action="store_true", help="time the workflow without GIF/montage/plot")
    parser.add_argument("--baseline-steps", type=int, default=200, help="maximum Adam steps per frame")
    parser.add_argument("--baseline-lr", type=float, default=0.01)
    parser.add_argument("--l1", type=float, default=0.01, help="weight of mean |delta| in the baseline's loss")
    parser.add_argument("--tolerance", type=float, default=0.05, help="|f - target| that ends a frame's search")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args()
    args.input = args.input or default_input()
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = ["cpu", "cuda"] if args.device == "all" else [args.device]
    devices = [d for d in devices if d == "cpu" or torch.cuda.is_available()]
    if args.device == "cuda" and not devices:
        parser.error("CUDA is not available on this machine")
    print(f"input {args.input}")
    for device in devices:
        run_device(device, args)


if __name__ == "__main__":
    main()

"""Archive-scale throughput of classify and inference: images/s, the ratio to the hardware limit measured
in the same run, and time and peak memory at several input counts (linear time, flat memory).

Inputs: the first N PNGs of a prepared dataset folder (``--dataset``, e.g. an NIH 128 px sample with
labels.csv), or, without one, N chest crops cut from pydicom-data's RG1 (256 x 256, each different).
Every run is a separate process, as a user starts it, and its peak resident memory (``ru_maxrss``) is
read from the operating system:

* ``classify``: ``python -m monai_exaggeration classify --input DIR`` (reader processes + batches of
  64), against the one-by-one path of 0.6 (``--batch_size 1 --num_workers 0``) on the same inputs;
* ``inference``: ``python -m monai.bundle run inference`` at source resolution, DICOM written,
  quick-looks off; against one source per batch without reader processes (``--batch_size 1
  --num_workers 0``);
* ``evaluation`` (``--evaluation-images N``, needs ``--dataset``): ``python -m monai.bundle run
  evaluating`` on the first N validation images, occlusion off: its time, images/s and peak memory;
* the *limit*: a batched forward on tensors already in memory, in this process: the classifier on
  batches of 64 (classify; the faster of its plain and channels-last forwards, the layout classify
  uses), the generator on 4 sources x 10 bins plus the classifier on their 44 inputs (inference).

Every count is reported with and without process start-up: the start-up is the time of the same
command on one input (Python, torch, MONAI and the model loaded, about 6-10 s here, mostly the
imports of torch and MONAI), and "steady" is count / (time - start-up).

    python benchmarks/throughput.py [--dataset DIR] [--counts 100,500,2000] [--inference-counts 100,500]
        [--evaluation-images 444] [--classifier-bundle DIR]

Threads: every process gets ``OMP_NUM_THREADS`` = the CPUs (2 here; ``--threads`` sets another number,
e.g. 1 on a machine that other jobs share: two spinning OpenMP threads on two busy cores measure the
contention, not the code) and the commands keep all their threads within that (reader processes take
cores from the compute threads, see ``monai_exaggeration.data.streaming.compute_threads``).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[1]
CPUS = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
THREADS = [CPUS]  # compute threads of every process (--threads)


def _inputs(folder: Path, count: int, dataset: Path | None) -> Path:
    """A folder with ``count`` chest images (links to the dataset's PNGs, or RG1 crops)."""
    folder.mkdir(parents=True, exist_ok=True)
    if dataset is not None:
        images = sorted((dataset / "images").glob("*.png")) or sorted(dataset.rglob("*.png"))
        if len(images) < count:
            raise SystemExit(f"{dataset} has {len(images)} PNGs, fewer than {count}")
        for index, path in enumerate(images[:count]):
            (folder / f"{index:05d}.png").symlink_to(path.resolve())
        return folder
    from pydicom.data import get_testdata_file

    from monai_exaggeration.transforms import read_cxr

    chest = read_cxr(get_testdata_file("RG1_UNCR.dcm")).pixels
    rng = np.random.default_rng(0)
    for index in range(count):
        top, left = rng.integers(0, 300, size=2)
        crop = Image.fromarray(np.rint(chest[top : top + 1600, left : left + 1500] * 255).astype(np.uint8))
        crop.resize((256, 256), Image.Resampling.BILINEAR).save(folder / f"{index:05d}.png")
    return folder


def _timed(command: list[str]) -> tuple[float, float]:
    """(wall seconds, peak RSS in GB) of one command in its own process."""
    probe = (
        "import resource, subprocess, sys; code = subprocess.call(sys.argv[1:], stdout=subprocess.DEVNULL, "
        "stderr=subprocess.DEVNULL); print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(code)"
    )
    env = {**os.environ, "OMP_NUM_THREADS": str(THREADS[0])}
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", probe, *command], capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - start
    if result.returncode not in (0, 1):
        raise SystemExit(f"failed ({result.returncode}): {' '.join(command)}\n{result.stderr[-2000:]}")
    return seconds, int(result.stdout.strip().splitlines()[-1]) / 1024**2


CLASSIFIER_BUNDLE: list[str] = []  # ["--bundle_root", DIR] when --classifier-bundle is given


def _classify(folder: Path, out: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "monai_exaggeration",
        "classify",
        "--input",
        str(folder),
        "--output_dir",
        str(out),
        *CLASSIFIER_BUNDLE,
        *extra,
    ]


def _inference(folder: Path, out: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "monai.bundle",
        "run",
        "inference",
        "--config_file",
        str(REPO_ROOT / "bundles" / "cxr" / "configs" / "inference.json"),
        "--input",
        str(folder),
        "--output_dir",
        str(out),
        "--quicklook",
        "false",
        *extra,
    ]


def _best_rate(step, items: int, repeats: int) -> float:
    """Items per second of ``step()``: the best of ``repeats`` timings after two warm-up calls (the
    machine's limit, not its noise)."""
    step(), step()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return items / min(times)


def _limits(repeats: int = 7, inference: bool = True) -> tuple[float, float]:
    """(classify images/s, inference sources/s, or 0 without ``inference``) of batched forwards on tensors
    already in memory."""
    import copy

    from monai_exaggeration.bundle import load_bundle_classifier
    from monai_exaggeration.methods.series import generate_series
    from monai_exaggeration.networks import load_explainer

    torch.set_num_threads(THREADS[0])
    classifier = load_bundle_classifier(CLASSIFIER_BUNDLE[-1] if CLASSIFIER_BUNDLE else None)
    channels_last = copy.deepcopy(classifier).to(memory_format=torch.channels_last)
    generator = load_explainer(REPO_ROOT / "bundles" / "cxr" / "models" / "explainer.pt").generator.eval()
    images = torch.rand(64, 1, 128, 128) * 2 - 1
    sources = images[:4]

    def series_and_scores() -> None:
        series = generate_series(generator, sources, 10)
        classifier(torch.cat([sources, series.reshape(-1, 1, 128, 128)]))

    with torch.no_grad():
        plain_rate = _best_rate(lambda: classifier(images), 64, repeats)
        last_rate = _best_rate(lambda: channels_last(images), 64, repeats)
        inference_rate = _best_rate(series_and_scores, 4, repeats) if inference else 0.0
    print(f"classifier forward, batch 64: {plain_rate:.1f} images/s (contiguous), {last_rate:.1f} (channels-last)")
    return max(plain_rate, last_rate), inference_rate


def _marginal(previous: tuple[int, float] | None, count: int, seconds: float) -> str:
    """The steady rate between two input counts (process start-up and model loading cancel out)."""
    if previous is None or count <= previous[0] or seconds <= previous[1]:
        return ""
    return f"; marginal {(count - previous[0]) / (seconds - previous[1]):.1f}/s since {previous[0]}"


def _measure(name, command, unit: str, folders: dict, counts: list[int], baseline: int, limit, work: Path) -> None:
    """The start-up (one input), the one-at-a-time baseline (``--batch_size 1 --num_workers 0``), then the
    defaults at each count, with and without the start-up. ``limit``: a number, or a function that measures
    it again just before each count (on a machine that others share, the limit moves with their load)."""
    startup = min(_timed(command(folders[1], work / f"{name}_startup_{n}"))[0] for n in range(2))
    seconds, _ = _timed(command(folders[baseline], work / f"{name}_base", "--batch_size", "1", "--num_workers", "0"))
    base_rate = baseline / seconds
    print(
        f"\n{name}: start-up (the same command on one input) {startup:.1f} s; one at a time (batch 1, no reader "
        f"process), {baseline} inputs: {base_rate:.2f} {unit}/s with start-up"
    )
    previous = None
    for count in counts:
        limit_now = limit() if callable(limit) else limit
        seconds, peak = _timed(command(folders[count], work / f"{name}_{count}"))
        rate = count / seconds
        if seconds > 1.5 * startup:  # else the start-up's own noise would dominate the difference
            steady = count / (seconds - startup)
            without = f"without start-up {steady:6.2f} {unit}/s ({steady / limit_now:.2f}x the limit)"
        else:
            without = "without start-up: too few inputs to tell"
        print(
            f"{name} {count:5d} inputs: {seconds:7.1f} s, {rate:6.2f} {unit}/s ({rate / limit_now:.2f}x the limit, "
            f"{rate / base_rate:.1f}x one at a time; limit just before {limit_now:.1f}); {without}; peak {peak:.2f} GB{_marginal(previous, count, seconds)}"
        )
        previous = (count, seconds)


def _evaluation(dataset: Path, images: int, work: Path) -> None:
    """The bundle's evaluation on the first ``images`` validation images, occlusion off (docs/evaluation.md)."""
    configs = [str(REPO_ROOT / "bundles" / "cxr" / "configs" / name) for name in ("inference.json", "evaluate.json")]
    command = [
        sys.executable,
        "-m",
        "monai.bundle",
        "run",
        "evaluating",
        "--config_file",
        str(configs),
        "--bundle_root",
        str(REPO_ROOT / "bundles" / "cxr"),
        "--dataset_dir",
        str(dataset),
        "--occlusion",
        "false",
        "--num_images",
        str(images),
        "--output_dir",
        str(work / f"evaluation_{images}"),
    ]
    seconds, peak = _timed(command)
    print(
        f"\nevaluation of {images} validation images (occlusion off): {seconds:.0f} s "
        f"({seconds / 60:.1f} min, {images / seconds:.2f} images/s, {seconds / images:.2f} s per image), "
        f"peak {peak:.2f} GB (start-up included)"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", type=Path, help="a prepared dataset folder with PNGs (default: RG1 crops)")
    parser.add_argument("--counts", default="100,500,2000", help="input counts for classify")
    parser.add_argument("--inference-counts", default="100,500", help="input counts for inference")
    parser.add_argument("--baseline-count", type=int, default=100, help="inputs for the one-by-one baselines")
    parser.add_argument(
        "--evaluation-images", type=int, default=0, help="time the evaluation on N images (needs --dataset)"
    )
    parser.add_argument(
        "--classifier-bundle", type=Path, help="classifier bundle for classify (default: classify's own)"
    )
    parser.add_argument(
        "--threads", type=int, default=CPUS, help="OMP_NUM_THREADS of every process (default: the CPUs)"
    )
    args = parser.parse_args()
    THREADS[0] = max(1, args.threads)
    if args.classifier_bundle:
        CLASSIFIER_BUNDLE.extend(["--bundle_root", str(args.classifier_bundle.resolve())])
    if args.evaluation_images and args.dataset is None:
        parser.error("--evaluation-images needs --dataset (a labelled dataset folder)")
    counts = [int(c) for c in args.counts.split(",") if c.strip()]
    inference_counts = [int(c) for c in args.inference_counts.split(",") if c.strip()]
    work = Path(tempfile.mkdtemp(prefix="throughput_"))
    biggest = _inputs(work / "inputs", max(counts + inference_counts + [args.baseline_count]), args.dataset)
    folders = {}
    for count in sorted(set(counts + inference_counts + [args.baseline_count, 1])):
        folder = work / f"in_{count}"
        folder.mkdir()
        for path in sorted(biggest.iterdir())[:count]:
            (folder / path.name).symlink_to(path.resolve())
        folders[count] = folder
    classify_limit, inference_limit = _limits()
    print(
        f"{CPUS} CPUs, OMP_NUM_THREADS={THREADS[0]} per process; inputs: {args.dataset or 'RG1 crops, 256 x 256 PNG'}"
    )
    print(
        f"limit (batched forward, tensors in memory): classify {classify_limit:.1f} images/s, "
        f"inference {inference_limit:.2f} sources/s"
    )

    if counts:
        _measure(
            "classify",
            _classify,
            "images",
            folders,
            counts,
            args.baseline_count,
            lambda: _limits(repeats=5, inference=False)[0],
            work,
        )  # the limit again before each count
    if inference_counts:
        _measure(
            "inference", _inference, "sources", folders, inference_counts, args.baseline_count, inference_limit, work
        )
    if args.evaluation_images:
        _evaluation(args.dataset, args.evaluation_images, work)
    print(f"\n(work folder: {work})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

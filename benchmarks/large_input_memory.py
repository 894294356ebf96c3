"""Peak memory and time of one very large source through the inference, against a small one and the limit.

Writes a synthetic 7000 x 7000 chest radiograph (RG1 of pydicom-data, enlarged) as PNG (8 bit) and
as DICOM (16 bit, uncompressed), explains each with the bundle's inference in its own process
(``python -m monai.bundle run inference``, quick-looks on, one thread), and prints the process's
peak resident memory (``ru_maxrss``) and wall time. The same command on a 512 x 512 version of the
image is measured in the same run as the baseline (libraries and models loaded, a small image):
the difference is what the large source itself costs. The limit is 2 GB per source at the default
input limit (50 MP; 7000 x 7000 = 49 MP).

    OMP_NUM_THREADS=1 python benchmarks/large_input_memory.py [--size 7000] [--keep DIR]
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom.data import get_testdata_file

REPO_ROOT = Path(__file__).resolve().parents[1]
LIMIT_GB = 2.0


def _chest(size: int) -> np.ndarray:
    """RG1_UNCR.dcm in display units [0, 1], resized to size x size (float32)."""
    from monai_exaggeration.transforms import read_cxr

    pixels = read_cxr(get_testdata_file("RG1_UNCR.dcm")).pixels
    image = Image.fromarray(pixels).resize((size, size), Image.Resampling.BILINEAR)
    return np.clip(np.asarray(image, dtype=np.float32), 0.0, 1.0)


def _write_png(pixels: np.ndarray, path: Path) -> Path:
    Image.fromarray(np.rint(pixels * 255).astype(np.uint8)).save(path)
    return path


def _write_dicom(pixels: np.ndarray, path: Path) -> Path:
    dataset = pydicom.dcmread(get_testdata_file("RG1_UNCR.dcm"))
    values = np.rint(pixels * 4095).astype(np.uint16)
    dataset.Rows, dataset.Columns = values.shape
    dataset.BitsAllocated, dataset.BitsStored, dataset.HighBit, dataset.PixelRepresentation = 16, 12, 11, 0
    dataset.PhotometricInterpretation = "MONOCHROME2"
    dataset.SOPInstanceUID = pydicom.uid.generate_uid()
    for keyword in ("WindowCenter", "WindowWidth", "VOILUTSequence"):
        if keyword in dataset:
            delattr(dataset, keyword)
    dataset.PixelData = values.tobytes()
    dataset.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    dataset.save_as(path, enforce_file_format=True)
    return path


def _explain(path: Path, output_dir: Path) -> tuple[float, float]:
    """(peak RSS in GB, wall seconds) of one inference process on ``path``."""
    probe = (
        "import resource, subprocess, sys; "
        "code = subprocess.call(sys.argv[1:]); "
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(code)"
    )
    command = [
        sys.executable,
        "-c",
        probe,
        sys.executable,
        "-m",
        "monai.bundle",
        "run",
        "inference",
        "--config_file",
        str(REPO_ROOT / "bundles" / "cxr" / "configs" / "inference.json"),
        "--input",
        str(path),
        "--output_dir",
        str(output_dir),
    ]
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"inference failed on {path}:\n{result.stderr[-3000:]}")
    peak_kb = int(result.stdout.strip().splitlines()[-1])
    return peak_kb / 1024**2, seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=7000, help="side of the large image (default 7000: 49 MP)")
    parser.add_argument("--keep", type=Path, help="keep the inputs and outputs here (default: a temporary folder)")
    args = parser.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="large_input_"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"one thread (OMP_NUM_THREADS=1), one process at a time; files in {work}")
    small = _write_png(_chest(512), work / "small_512.png")
    baseline_gb, baseline_s = _explain(small, work / "out_small")
    print(f"baseline 512 x 512 PNG          : peak {baseline_gb:5.2f} GB, {baseline_s:6.1f} s")
    large = _chest(args.size)
    for name, writer in (("PNG (8 bit)", _write_png), ("DICOM (12 of 16 bit)", _write_dicom)):
        suffix = ".png" if "PNG" in name else ".dcm"
        path = writer(large, work / f"large_{args.size}{suffix}")
        peak_gb, seconds = _explain(path, work / f"out_{suffix[1:]}")
        own = peak_gb - baseline_gb
        print(
            f"{args.size} x {args.size} {name:20s}: peak {peak_gb:5.2f} GB ({own:4.2f} GB above the baseline; "
            f"ratio to the {LIMIT_GB:g} GB limit {peak_gb / LIMIT_GB:4.2f}), {seconds:6.1f} s "
            f"({seconds / baseline_s:4.1f}x the baseline)"
        )
    peak_rss_self = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    print(f"(this script itself peaked at {peak_rss_self:.2f} GB while writing the inputs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark: instances/s of the project's C-STORE exporter against dcmtk's ``storescu``, same files, same PACS.

Writes ``--instances`` Secondary Capture instances (series of 10 frames of the real RG1 chest,
``--size`` pixels square, 8 bit, as the inference workflow writes them), then, alternating for
``--repeats`` rounds, sends them to a fresh local Orthanc (Debian ``orthanc``) with

* ``monai_exaggeration.export.export_files`` (one association, ledger in a temporary file), and
* ``storescu +sd +r`` (dcmtk; one association for all files),

and prints the median instances/s of both and the ratio (target: ours >= 0.8x storescu). Orthanc's
start and the file writing are not timed; each tool's time covers reading the files, the
association and every C-STORE until the last response.

    python benchmarks/export_throughput.py
    python benchmarks/export_throughput.py --instances 200 --size 1024 --repeats 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from repo_helpers import LocalOrthanc, orthanc_binary
from skimage.transform import resize

from monai_exaggeration.data import default_input
from monai_exaggeration.dicom import SeriesInfo, write_series
from monai_exaggeration.export import SendLedger, collect_dicom_files, export_files
from monai_exaggeration.transforms import read_cxr


def write_instances(folder: Path, count: int, size: int) -> list[Path]:
    """``count`` SC instances in series of 10 (the last series shorter if needed)."""
    chest = read_cxr(default_input())
    base = resize(chest.pixels, (size, size), anti_aliasing=True).astype(np.float32)
    meta = dict(chest.meta, source_shape=(size, size))
    files: list[Path] = []
    series = 0
    while len(files) < count:
        frames_in_series = min(10, count - len(files))
        frames = [np.clip(base + 0.02 * step, 0, 1) for step in range(frames_in_series)]
        info = SeriesInfo.from_scores("cardiomegaly", f"benchmark {series}", [None] * frames_in_series, num_bins=10)
        files += write_series(frames, chest.meta["filename_or_obj"], meta, info, folder)
        series += 1
    return files


def time_ours(files: list[Path], workdir: Path) -> float:
    with LocalOrthanc(workdir / "orthanc") as pacs:
        with SendLedger(workdir / "ledger.sqlite") as ledger:
            start = time.perf_counter()
            report = export_files(files, pacs.destination(), ledger, progress=False)
            seconds = time.perf_counter() - start
        stored = len(pacs.rest("/instances"))
        pacs.stop(kill=True)
    if report.count("sent") != len(files) or stored != len(files):
        raise RuntimeError(f"our exporter stored {stored} of {len(files)}: {report.describe()}")
    return seconds


def dcmtk_storescu() -> str | None:
    """dcmtk's storescu (pynetdicom installs a Python app of the same name into the venv: skip that one)."""
    for folder in os.environ.get("PATH", "").split(os.pathsep):
        candidate = Path(folder) / "storescu"
        if candidate.is_file() and not str(candidate.resolve()).startswith(str(Path(sys.prefix).resolve())):
            return str(candidate)
    return None


def time_storescu(folder: Path, count: int, workdir: Path) -> float:
    with LocalOrthanc(workdir / "orthanc") as pacs:
        command = [
            dcmtk_storescu(),
            "-aet",
            pacs.allowed_ae,
            "-aec",
            pacs.aet,
            "+sd",
            "+r",
            "127.0.0.1",
            str(pacs.dicom_port),
            str(folder),
        ]
        start = time.perf_counter()
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        seconds = time.perf_counter() - start
        stored = len(pacs.rest("/instances"))
        pacs.stop(kill=True)
    if result.returncode != 0 or stored != count:
        raise RuntimeError(f"storescu stored {stored} of {count} (exit {result.returncode}): {result.stderr[-500:]}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=200)
    parser.add_argument("--size", type=int, default=512, help="rows = columns of each instance (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=3, help="alternating rounds; medians are reported")
    args = parser.parse_args()
    if orthanc_binary() is None or dcmtk_storescu() is None:
        parser.error("needs Orthanc and dcmtk's storescu: apt-get install orthanc dcmtk")
    with tempfile.TemporaryDirectory(prefix="exag_export_bench_") as tmp:
        root = Path(tmp)
        files = write_instances(root / "series", args.instances, args.size)
        files = collect_dicom_files([root / "series"])
        megabytes = sum(f.stat().st_size for f in files) / 1e6
        print(
            f"{len(files)} SC instances, {args.size} x {args.size} px, {megabytes:.1f} MB; Orthanc {orthanc_binary()}"
        )
        ours, theirs = [], []
        for round_ in range(args.repeats):
            ours.append(time_ours(files, root / f"ours{round_}"))
            theirs.append(time_storescu(root / "series", len(files), root / f"storescu{round_}"))
            print(
                f"  round {round_ + 1}: ours {len(files) / ours[-1]:.1f} instances/s, storescu {len(files) / theirs[-1]:.1f} instances/s"
            )
    ours_rate = len(files) / statistics.median(ours)
    theirs_rate = len(files) / statistics.median(theirs)
    print(f"monai_exaggeration export: {ours_rate:.1f} instances/s (median of {args.repeats})")
    print(f"dcmtk storescu:            {theirs_rate:.1f} instances/s (median of {args.repeats})")
    print(f"ratio ours / storescu: {ours_rate / theirs_rate:.2f} (target >= 0.8)")


if __name__ == "__main__":
    main()

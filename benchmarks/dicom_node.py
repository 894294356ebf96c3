"""Benchmark: sources/s through the DICOM node end to end, against the same inference from the command line.

Makes ``--sources`` chest X-ray DICOM files (the real RG1_UNCR.dcm of pydicom-data and, when
present, the project's shared CXR DICOMs, each copy with its own SOP Instance UID), then in the
same run:

* **command line**: ``python -m monai.bundle run inference`` on the folder (``--quicklook false``,
  as the node), timed from the start of the process to its exit; its own summary's seconds
  (without Python's and the models' start-up) are reported too;
* **node**: a fresh local Orthanc and ``python -m monai_exaggeration serve-dicom`` (default outputs:
  SC series + presentation state + TID 1500 SR + CTR), started and ready before the clock starts;
  dcmtk's ``storescu`` sends every file, and the clock stops when the node's queue says the last
  job is done (every instance confirmed by Orthanc). Orthanc's instance count is checked.

Both use ``--threads`` torch/OpenMP threads (default 1). ``--rounds`` rounds alternate which of the
two goes first (the machine may be shared); prints the medians, sources/s of both and the ratio
node / command line (goal >= 0.8), against the command as a user runs it and against its inference
time alone.

    python benchmarks/dicom_node.py                       # 12 sources, 2 rounds, 1 thread
    python benchmarks/dicom_node.py --sources 24 --rounds 3 --threads 2
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pydicom
import yaml
from repo_helpers import LocalOrthanc, dcmtk_tool, free_port, orthanc_binary, shared_data_dir

from monai_exaggeration.bundle import default_bundle_root
from monai_exaggeration.data import default_input
from monai_exaggeration.dicom.secondary_capture import derived_uid

SHARED = shared_data_dir() / "dicom"


def make_sources(folder: Path, count: int) -> list[Path]:
    """``count`` DICOM files cycling over RG1 and the shared CXR DICOMs, each with a new SOP Instance UID."""
    originals = [Path(default_input())] + (sorted(SHARED.glob("*.dcm")) if SHARED.is_dir() else [])
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for index in range(count):
        original = originals[index % len(originals)]
        dataset = pydicom.dcmread(original, force=True)
        uid = derived_uid(str(dataset.SOPInstanceUID), "benchmark", index)
        dataset.SOPInstanceUID = uid
        if "TransferSyntaxUID" not in dataset.file_meta:  # a data set without meta (implicit VR LE)
            dataset.file_meta.TransferSyntaxUID = pydicom.uid.ImplicitVRLittleEndian
        dataset.file_meta.MediaStorageSOPInstanceUID = uid
        path = folder / f"source_{index:03d}.dcm"
        dataset.save_as(path, enforce_file_format=True)
        files.append(path)
    return files


def run_cli(sources: Path, out: Path, env: dict) -> tuple[float, float]:
    """(wall seconds of the command, seconds its summary reports)."""
    bundle = default_bundle_root("cxr")
    command = [
        sys.executable,
        "-m",
        "monai.bundle",
        "run",
        "inference",
        "--config_file",
        f"{bundle}/configs/inference.json",
        "--bundle_root",
        bundle,
        "--input",
        str(sources),
        "--output_dir",
        str(out),
        "--quicklook",
        "false",
    ]
    start = time.perf_counter()
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if result.returncode:
        raise SystemExit(f"the command-line inference failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    inner = re.search(r"failed, in ([0-9.]+) s", result.stdout)
    return wall, float(inner.group(1)) if inner else float("nan")


def _done(queue: Path) -> int:
    if not queue.is_file():
        return 0
    with sqlite3.connect(f"file:{queue}?mode=ro", uri=True, timeout=10) as db:
        return int(db.execute("SELECT COUNT(*) FROM jobs WHERE state='done'").fetchone()[0])


def run_node(files: list[Path], workdir: Path, env: dict, threads: int, timeout: float) -> float:
    """Seconds from the first C-STORE to the node's last job done."""
    port = free_port()
    with LocalOrthanc(workdir / "orthanc") as pacs:
        config = {
            "node": {"ae_title": "EXAGNODE", "host": "127.0.0.1", "port": port, "allowed_calling_aes": ["STORESCU"]},
            "work_dir": str(workdir / "node"),
            "queue": {"poll_s": 0.1},
            "destinations": {
                "orthanc": {
                    "host": "127.0.0.1",
                    "port": pacs.dicom_port,
                    "called_ae": pacs.aet,
                    "calling_ae": pacs.allowed_ae,
                }
            },
            "threads": threads,
        }
        (workdir / "node.yaml").write_text(yaml.safe_dump(config))
        log = open(workdir / "node.log", "w")
        node = subprocess.Popen(
            [sys.executable, "-m", "monai_exaggeration", "serve-dicom", "--config", str(workdir / "node.yaml")],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 180
            while subprocess.run(
                [dcmtk_tool("echoscu"), "-aet", "STORESCU", "-aec", "EXAGNODE", "127.0.0.1", str(port)],
                capture_output=True,
            ).returncode:
                if node.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"the node did not start; see {workdir / 'node.log'}")
                time.sleep(0.5)
            start = time.perf_counter()
            sent = subprocess.run(
                [
                    dcmtk_tool("storescu"),
                    "-R",
                    "-xy",
                    "-nh",
                    "-aet",
                    "STORESCU",
                    "-aec",
                    "EXAGNODE",
                    "127.0.0.1",
                    str(port),
                    *map(str, files),
                ],
                capture_output=True,
                text=True,
            )
            if sent.returncode:
                raise SystemExit(f"storescu failed:\n{sent.stdout}{sent.stderr}")
            queue = workdir / "node" / "queue.sqlite"
            while _done(queue) < len(files):
                if node.poll() is not None or time.perf_counter() - start > timeout:
                    raise SystemExit(f"the node did not finish; see {workdir / 'node.log'}")
                time.sleep(0.05)
            seconds = time.perf_counter() - start
            stored = len(pacs.rest("/instances"))
            if stored != 12 * len(files):
                raise SystemExit(f"Orthanc holds {stored} instances, expected {12 * len(files)}")
            return seconds
        finally:
            node.send_signal(signal.SIGTERM)
            try:
                node.wait(60)
            except subprocess.TimeoutExpired:
                node.kill()
            log.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sources", type=int, default=12, help="number of source images (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=1, help="torch/OpenMP threads of both (default: %(default)s)")
    parser.add_argument(
        "--rounds",
        type=int,
        default=2,
        help="rounds of both measurements, alternating which goes first (default: %(default)s)",
    )
    parser.add_argument("--timeout", type=float, default=900, help="seconds the node may take (default: %(default)s)")
    parser.add_argument("--keep", help="keep the working folder here instead of a temporary one")
    args = parser.parse_args(argv)
    for tool in ("storescu", "echoscu"):
        if dcmtk_tool(tool) is None:
            raise SystemExit(f"{tool} (dcmtk) is not installed")
    if orthanc_binary() is None:
        raise SystemExit("Orthanc is not installed (apt-get install orthanc)")
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(args.threads),
        "MKL_NUM_THREADS": str(args.threads),
        "PYTHONUNBUFFERED": "1",
    }
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="node_benchmark_"))
    files = make_sources(root / "sources", args.sources)
    n = len(files)
    print(f"{n} sources in {root / 'sources'}; {args.threads} thread(s); {args.rounds} round(s)", flush=True)
    cli_walls, cli_inners, nodes = [], [], []
    for round_ in range(args.rounds):
        steps = ["cli", "node"] if round_ % 2 == 0 else ["node", "cli"]
        for step in steps:
            if step == "cli":
                wall, inner = run_cli(root / "sources", root / f"cli_output_{round_}", env)
                cli_walls.append(wall)
                cli_inners.append(inner)
                print(
                    f"round {round_ + 1} command line: {wall:6.1f} s (its own summary without start-up: {inner:.1f} s)",
                    flush=True,
                )
            else:
                nodes.append(run_node(files, root / f"node_run_{round_}", env, args.threads, args.timeout))
                print(f"round {round_ + 1} DICOM node  : {nodes[-1]:6.1f} s", flush=True)
    cli_wall, cli_inner, node = (statistics.median(values) for values in (cli_walls, cli_inners, nodes))
    print(f"\nmedians over {args.rounds} round(s), {n} sources, {args.threads} thread(s):")
    print(f"  command line, process start to exit     : {cli_wall:6.1f} s  {n / cli_wall:.3f} sources/s")
    print(f"  command line, its summary (no start-up) : {cli_inner:6.1f} s  {n / cli_inner:.3f} sources/s")
    print(
        f"  DICOM node, first C-STORE to last done  : {node:6.1f} s  {n / node:.3f} sources/s "
        "(receive -> explain -> SC + GSPS + SR stored in Orthanc)"
    )
    print(
        f"ratio node / command line: {cli_wall / node:.2f}x (against the command line without its start-up: "
        f"{cli_inner / node:.2f}x; goal >= 0.8x)"
    )
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

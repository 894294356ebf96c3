"""Benchmark: throughput of DDP training and of sharded inference with 1 and 2 processes (CPU, Gloo).

Each configuration runs in fresh processes started the way ``torchrun`` starts them (``RANK``,
``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``; one process per "device", ``--threads`` torch
threads each, as ``torchrun`` sets ``OMP_NUM_THREADS=1``). With 1 process nothing is distributed,
exactly what a user runs without ``torchrun``.

* **training** — ``ExaggerationTrainer`` with the CPU-profile networks (``train_cpu.json`` widths,
  G and D in ``DistributedDataParallel`` as ``multi_gpu_train.json`` wraps them when there are 2
  processes, ``DistributedSampler``), the
  shipped classifier, ``--batch_size`` images per process and step, G updated every step
  (``n_critic`` 1). Images/s = processes x batch x timed steps / seconds, after ``--warmup`` steps.
  The images are random tensors: throughput does not depend on their content.
* **inference** — ``ExaggerationInference.run`` with ``inference.json``'s settings and shipped
  models over a folder of ``--sources`` chest PNGs (the NIH sample when the development data's
  ``nih-cardiomegaly-128`` exists, ``$EXAG_SHARED_DATA``, else crops of pydicom-data's RG1 chest): rank r
  explains sources r, r + W, ...; the time includes rank 0's merge of the CSV logs. Models are
  loaded before the clock starts.

Printed: one line per configuration and the scaling ratio (2-process throughput / 1-process
throughput) of each workload; 2.0 is perfect scaling. On a 2-core machine 2 processes of 1 thread
use both cores, the 1-process baseline one. For training, a reference run of the same processes
without DDP (independent, no gradient exchange) shows what the machine itself allows, so the
cost of DDP is the gap between that line and the DDP line.

    python benchmarks/scaling.py                       # defaults: about 2-4 minutes on 2 cores
    python benchmarks/scaling.py --iterations 30 --sources 32 --threads 1
    python benchmarks/scaling.py --skip-inference
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.multiprocessing as mp

REPO_ROOT = Path(__file__).resolve().parents[1]
LAUNCH = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def join(rank: int, world: int, port: int, threads: int) -> None:
    """Set the torchrun environment of this worker and join the Gloo group (nothing with 1 process)."""
    from monai_exaggeration import distributed

    os.environ["OMP_NUM_THREADS"] = str(threads)
    torch.set_num_threads(threads)
    if world == 1:
        for name in LAUNCH:
            os.environ.pop(name, None)
        return
    os.environ.update(
        RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    distributed.init_distributed(backend="gloo")


def train_worker(rank: int, world: int, port: int, args: argparse.Namespace, synchronised: bool, result: str) -> None:
    """Time ``args.iterations`` steps of the explainer's trainer after ``args.warmup`` steps.

    ``synchronised`` False trains ``world`` independent models (no DDP, no gradient exchange; the
    processes only start and stop the clock together): the most that many concurrent processes can
    do on this machine.
    """
    from ignite.engine import Events
    from monai.data import DataLoader, DistributedSampler

    from monai_exaggeration import distributed
    from monai_exaggeration.bundle import load_bundle_classifier
    from monai_exaggeration.engines import ExaggerationTrainer
    from monai_exaggeration.losses import ExaggerationLoss
    from monai_exaggeration.networks import ExaggerationDiscriminator, ExaggerationGenerator

    join(rank, world, port, args.threads)

    def wrap(module: torch.nn.Module) -> torch.nn.Module:
        """As multi_gpu_train.json wraps G and D (no buffer broadcast at every forward pass)."""
        return distributed.ddp(module, sync_buffers_every_forward=False) if synchronised else module

    torch.manual_seed(rank)
    classifier = load_bundle_classifier(device="cpu")
    generator = wrap(
        ExaggerationGenerator(
            num_bins=10, stem_channels=32, encoder_channels=(64, 128, 256, 256), image_size=args.image_size
        )
    )
    discriminator = wrap(ExaggerationDiscriminator(num_bins=10, channels=(32, 64, 128, 256, 256)))
    steps = args.warmup + args.iterations
    count = world * args.batch_size * steps
    images = torch.rand(count, 1, args.image_size, args.image_size) * 2 - 1
    posteriors = torch.rand(count)
    records = [
        {"image": image, "source_posterior": float(p), "source_bin": min(int(p * 10), 9)}
        for image, p in zip(images, posteriors, strict=True)
    ]
    sampler = DistributedSampler(records, shuffle=True) if synchronised and world > 1 else None
    if sampler is None:
        records = records[rank::world]  # independent processes: each takes its own share
    loader = DataLoader(records, batch_size=args.batch_size, sampler=sampler, shuffle=sampler is None, drop_last=True)
    trainer = ExaggerationTrainer(
        device="cpu",
        max_epochs=1,
        max_iterations=steps,
        train_data_loader=loader,
        generator=generator,
        discriminator=discriminator,
        classifier=classifier,
        g_optimizer=torch.optim.Adam(generator.parameters(), 2e-4, betas=(0.0, 0.9)),
        d_optimizer=torch.optim.Adam(discriminator.parameters(), 2e-4, betas=(0.0, 0.9)),
        loss_function=ExaggerationLoss(num_bins=10, lambda_rec=10.0),
        n_critic=1,
    )
    clock: dict[str, float] = {}

    @trainer.on(Events.ITERATION_COMPLETED(once=args.warmup))
    def _start(_) -> None:
        distributed.barrier()
        clock["start"] = time.perf_counter()

    trainer.run()
    distributed.barrier()
    seconds = time.perf_counter() - clock["start"]
    Path(f"{result}.{rank}").write_text(json.dumps({"seconds": seconds, "images": args.batch_size * args.iterations}))
    distributed.cleanup_distributed()


def infer_worker(rank: int, world: int, port: int, args: argparse.Namespace, inbox: str, out: str, result: str) -> None:
    """Time ``ExaggerationInference.run`` over ``inbox`` (sharded when ``world`` > 1)."""
    from monai.bundle import ConfigParser

    from monai_exaggeration import distributed

    join(rank, world, port, args.threads)
    parser = ConfigParser()
    parser.read_config(str(REPO_ROOT / "bundles" / "cxr" / "configs" / "inference.json"))
    parser["bundle_root"] = str(REPO_ROOT / "bundles" / "cxr")
    parser["device"] = "cpu"
    runner = parser.get_parsed_content("runner")().prepare()
    distributed.barrier()
    start = time.perf_counter()
    summary = runner.run(inbox, out)
    seconds = time.perf_counter() - start  # rank 0: after every rank finished and the logs were merged
    if distributed.is_main_process():
        if summary.num_series != args.sources:
            raise RuntimeError(f"expected {args.sources} series, got {summary.num_series}: {summary.failures[:3]}")
        Path(f"{result}.0").write_text(json.dumps({"seconds": seconds, "images": summary.num_series}))
    distributed.cleanup_distributed()


def prepare_sources(folder: Path, count: int) -> str:
    """``count`` chest PNGs in ``folder``: the NIH sample if present, else crops of RG1_UNCR.dcm.

    Returns a description of what they are.
    """
    import imageio.v3 as iio
    from repo_helpers import shared_data_dir  # here, not at the top: the spawned workers need none of it

    folder.mkdir(parents=True, exist_ok=True)
    nih = shared_data_dir() / "nih-cardiomegaly-128"
    if (nih / "labels.csv").is_file():
        import pandas as pd

        names = pd.read_csv(nih / "labels.csv")["image"].tolist()[:count]
        if len(names) == count:
            for index, name in enumerate(names):
                shutil.copy(nih / name, folder / f"source_{index:03d}.png")
            return f"{count} NIH ChestX-ray14 PNGs (128 px) from {nih}"
    from pydicom.data import get_testdata_file
    from skimage.transform import resize

    from monai_exaggeration.transforms import read_cxr

    chest = read_cxr(get_testdata_file("RG1_UNCR.dcm", download=False)).pixels
    for index in range(count):
        top, left = 10 * index, 8 * index
        crop = resize(chest[top : top + 1600, left : left + 1600], (128, 128), anti_aliasing=True)
        iio.imwrite(folder / f"source_{index:03d}.png", np.round(crop * 255).astype(np.uint8))
    return f"{count} 128 px crops of pydicom-data's RG1_UNCR.dcm"


def launch(worker, world: int, *args) -> dict:
    """Run ``worker`` in ``world`` fresh spawned processes: items done by all, slowest rank's seconds, items/s."""
    with tempfile.TemporaryDirectory() as scratch:
        result = str(Path(scratch) / "result.json")
        mp.start_processes(
            worker, args=(world, free_port(), *args, result), nprocs=world, join=True, start_method="spawn"
        )
        measured = [json.loads(path.read_text()) for path in Path(scratch).glob("result.json.*")]
    seconds = max(m["seconds"] for m in measured)
    items = sum(m["images"] for m in measured)
    return {"seconds": seconds, "items": items, "throughput": items / seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--processes", default="1,2", help="comma-separated process counts (first one is the baseline)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--image_size", type=int, default=64)
    parser.add_argument("--batch_size", type=int, default=8, help="images per process and step")
    parser.add_argument("--iterations", type=int, default=12, help="timed training steps")
    parser.add_argument("--warmup", type=int, default=3, help="untimed training steps first")
    parser.add_argument("--sources", type=int, default=16, help="images explained per inference run")
    parser.add_argument("--skip-training", action="store_true")
    parser.add_argument("--skip-inference", action="store_true")
    parser.add_argument(
        "--no-ceiling", action="store_true", help="skip the reference run of independent training processes without DDP"
    )
    args = parser.parse_args()
    worlds = [int(w) for w in args.processes.split(",")]
    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    print(
        f"torch {torch.__version__}, {os.cpu_count()} CPU cores (load average before: {load}), "
        f"{args.threads} thread(s) per process, Gloo backend"
    )
    results: dict[str, dict[int, dict]] = {}
    if not args.skip_training:
        print(
            f"training: {args.image_size} px, CPU-profile widths, batch {args.batch_size} per process, "
            f"{args.iterations} timed steps after {args.warmup}"
        )
        results["training"] = {}
        for world in worlds:
            results["training"][world] = launch(train_worker, world, args, True)
            r = results["training"][world]
            print(f"  {world} process(es): {r['throughput']:7.2f} images/s  ({r['seconds']:.1f} s)", flush=True)
        if not args.no_ceiling:
            for world in worlds[1:]:
                r = launch(train_worker, world, args, False)
                print(
                    f"  {world} independent processes, no DDP (this machine's ceiling): "
                    f"{r['throughput']:7.2f} images/s",
                    flush=True,
                )
    if not args.skip_inference:
        with tempfile.TemporaryDirectory() as scratch:
            what = prepare_sources(Path(scratch) / "inbox", args.sources)
            print(f"inference: {what}; inference.json settings (10 frames, full resolution, quick-looks)")
            results["inference"] = {}
            for world in worlds:
                out = Path(scratch) / f"out_{world}"
                results["inference"][world] = launch(infer_worker, world, args, str(Path(scratch) / "inbox"), str(out))
                r = results["inference"][world]
                print(f"  {world} process(es): {r['throughput']:7.2f} sources/s  ({r['seconds']:.1f} s)", flush=True)
    base = worlds[0]
    for workload, unit in (("training", "images/s"), ("inference", "sources/s")):
        for world in worlds[1:]:
            if workload in results:
                ratio = results[workload][world]["throughput"] / results[workload][base]["throughput"]
                print(f"scaling ratio, {workload} ({unit}): {world}-process / {base}-process throughput = {ratio:.2f}")


if __name__ == "__main__":
    main()

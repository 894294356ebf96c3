"""Scaling out with torchrun: helpers, DDP training of the explainer (and resume), sharded inference.

The multi-process tests start 2 CPU processes (Gloo) with ``torchrun --standalone`` exactly as a
user does, on a tiny synthetic PNG dataset (``tiny_dataset``) and tiny networks.
"""

from __future__ import annotations

import inspect
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
import torch.multiprocessing as mp
from conftest import REPO_ROOT, config_arg, run_bundle
from torch import nn

from monai_exaggeration import distributed
from monai_exaggeration.inference import ERROR_COLUMNS, FRAME_COLUMNS, SOURCE_COLUMNS

CONFIGS = REPO_ROOT / "bundles" / "cxr" / "configs"
BUNDLE = REPO_ROOT / "bundles" / "cxr"
CLASSIFIER_CONFIGS = REPO_ROOT / "bundles" / "cxr_classifier" / "configs"
CLASSIFIER = str(REPO_ROOT / "bundles" / "cxr_classifier" / "models" / "classifier.pt")
TRAIN = [str(CONFIGS / "train.json"), str(CONFIGS / "train_cpu.json"), str(CONFIGS / "multi_gpu_train.json")]
TINY = [
    "--image_size",
    "32",
    "--batch_size",
    "2",
    "--num_val_images",
    "4",
    "--network_def#stem_channels",
    "8",
    "--network_def#encoder_channels",
    "[8,16]",
    "--discriminator_def#channels",
    "[8,16,16]",
    "--classifier_weights",
    CLASSIFIER,
    "--log_interval",
    "1",
    "--warmup_iterations",
    "0",  # the CPU recipe's warm start would fill these few iterations
]
ONE_THREAD = {"OMP_NUM_THREADS": "1"}

#: Appended to the run list by a test-only config: each rank saves what the test compares across ranks.
DUMP_RUN_STATE = (
    "$torch.save({"
    "'generator': dict(monai_exaggeration.distributed.unwrap(@generator).named_parameters()), "
    "'discriminator': dict(monai_exaggeration.distributed.unwrap(@discriminator).named_parameters()), "
    "'discriminator_buffers': dict(monai_exaggeration.distributed.unwrap(@discriminator).named_buffers()), "
    "'samples': list(@train#sampler), 'sampler_epoch': @train#sampler.epoch, "
    "'iteration': @train#trainer.state.iteration}, "
    "os.path.join(@bundle_root, 'rank' + os.environ['RANK'] + '.pt'))"
)


@pytest.fixture(autouse=True)
def _no_launcher_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The in-process tests run as a plain single process, whatever launched pytest."""
    for name in (*distributed.LAUNCH_VARIABLES, "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)


def torchrun(args: list[str], log_dir: Path, timeout: int = 240) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node=2 ARGS``; each rank's output goes to ``log_dir``."""
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "--log-dir",
        str(log_dir),
        "--redirects",
        "3",
        *args,
    ]
    env = {**os.environ, **ONE_THREAD, "PYTHONUNBUFFERED": "1", "CUDA_VISIBLE_DEVICES": ""}  # CPU processes, Gloo
    for name in (*distributed.LAUNCH_VARIABLES, "LOCAL_RANK"):
        env.pop(name, None)
    return subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def rank_log(log_dir: Path, rank: int) -> str:
    """stdout + stderr of one rank of a torchrun run."""
    (folder,) = log_dir.glob(f"*/attempt_0/{rank}")
    return (folder / "stdout.log").read_text() + (folder / "stderr.log").read_text()


def failure_report(result: subprocess.CompletedProcess, log_dir: Path) -> str:
    ranks = [r for r in (0, 1) if list(log_dir.glob(f"*/attempt_0/{r}"))]
    logs = "".join(f"\n--- rank {r} ---\n" + rank_log(log_dir, r)[-2500:] for r in ranks)
    return result.stderr[-2000:] + logs


# ----------------------------------------------------------------------------------- helpers, one process


def test_single_process_answers_without_torchrun(tmp_path: Path) -> None:
    module = nn.Linear(2, 2)
    assert not distributed.launched_by_torchrun() and not distributed.is_distributed()
    assert (distributed.get_rank(), distributed.get_world_size(), distributed.get_local_rank()) == (0, 1, 0)
    assert distributed.is_main_process()
    assert distributed.ddp(module) is module and distributed.unwrap(module) is module
    assert distributed.gather_objects({"a": 1}) == [{"a": 1}] and distributed.broadcast_object(3) == 3
    calls = []
    assert distributed.main_process_first(lambda: calls.append(1) or "done") == "done" and calls == [1]
    distributed.barrier()
    distributed.cleanup_distributed()
    if not torch.cuda.is_available():
        assert distributed.default_backend() == "gloo" and distributed.local_device() == torch.device("cpu")


def test_init_without_torchrun_says_how_to_launch() -> None:
    with pytest.raises(RuntimeError, match=r"torchrun --nproc_per_node=2 .*multi_gpu_train.json.*docs/scaling.md"):
        distributed.init_distributed()
    assert not distributed.is_distributed()


def test_backend_must_be_nccl_or_gloo(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(free_port()))
    with pytest.raises(ValueError, match="'nccl' or 'gloo'"):
        distributed.init_distributed(backend="mpi")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="NCCL backend needs CUDA GPUs"):
            distributed.init_distributed(backend="nccl")
    assert not distributed.is_distributed()


def test_rank_comes_from_the_launcher_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert (distributed.get_rank(), distributed.get_world_size(), distributed.get_local_rank()) == (3, 4, 1)
    assert not distributed.is_main_process()
    monkeypatch.setenv("RANK", "two")
    with pytest.raises(ValueError, match="RANK must be an integer"):
        distributed.get_rank()


@pytest.mark.parametrize("world", [1, 2, 3, 5])
def test_shards_cover_every_item_exactly_once(world: int) -> None:
    items = [f"image_{i:02d}.png" for i in range(13)]
    shards = [distributed.shard(items, rank, world) for rank in range(world)]
    assert sorted(sum(shards, [])) == items
    assert max(map(len, shards)) - min(map(len, shards)) <= 1
    with pytest.raises(ValueError, match="rank must be in"):
        distributed.shard(items, world, world)


def test_summary_writer_only_on_rank_0(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RANK", "1")
    writer = distributed.main_process_summary_writer(str(tmp_path / "rank1"))
    assert isinstance(writer, distributed.NullSummaryWriter)
    writer.add_scalar("loss", 1.0, 1)
    writer.add_image("series", torch.zeros(1, 4, 4), 1)
    writer.flush()
    assert not (tmp_path / "rank1").exists()
    monkeypatch.setenv("RANK", "0")
    writer = distributed.main_process_summary_writer(str(tmp_path / "rank0"))
    writer.add_scalar("loss", 1.0, 1)
    writer.close()
    assert list((tmp_path / "rank0").glob("events.out.tfevents.*"))


def test_merge_of_partial_logs_keeps_input_order(tmp_path: Path) -> None:
    """Rank 0's merge: partial logs concatenated in input order, text kept as written, partials removed."""
    from monai_exaggeration.inference.sharding import log_paths as _log_paths
    from monai_exaggeration.inference.sharding import merge_logs as _merge_logs

    sources = [f"/in/s{i}.png" for i in range(5)]
    order = {source: index for index, source in enumerate(sources)}
    for rank in range(2):
        paths = _log_paths(tmp_path, rank, 2)
        mine = sources[rank::2]
        frames = [
            dict.fromkeys(FRAME_COLUMNS, "") | {"source": s, "step": step, "score": "0.1234567890123"}
            for s in mine
            for step in range(3)
        ]
        pd.DataFrame(frames, columns=FRAME_COLUMNS).to_csv(paths["frames"], index=False)
        rows = [dict.fromkeys(SOURCE_COLUMNS, "") | {"source": s, "monotone": True} for s in mine]
        pd.DataFrame(rows, columns=SOURCE_COLUMNS).to_csv(paths["sources"], index=False)
        pd.DataFrame(columns=ERROR_COLUMNS).to_csv(paths["errors"], index=False)
    _merge_logs(tmp_path, 2, order)
    frames = pd.read_csv(tmp_path / "frames.csv", dtype=str, keep_default_na=False)
    assert list(frames.columns) == FRAME_COLUMNS
    assert list(zip(frames["source"], frames["step"], strict=True)) == [(s, str(i)) for s in sources for i in range(3)]
    assert set(frames["score"]) == {"0.1234567890123"}
    sources_csv = pd.read_csv(tmp_path / "sources.csv", dtype=str, keep_default_na=False)
    assert sources_csv["source"].tolist() == sources and set(sources_csv["monotone"]) == {"True"}
    assert not (tmp_path / "errors.csv").exists()  # no failure: no errors.csv, as in a single process
    assert sorted(p.name for p in tmp_path.iterdir()) == ["frames.csv", "sources.csv"]


def test_merge_names_the_missing_partial_logs(tmp_path: Path) -> None:
    from monai_exaggeration.inference.sharding import merge_logs as _merge_logs

    with pytest.raises(FileNotFoundError, match=r"frames.rank1-of-2.partial.csv.*folder that all nodes share"):
        _merge_logs(tmp_path, 2, {})


# ----------------------------------------------------------------------------------- helpers, 2 processes


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _two_rank_worker(rank: int, port: int, folder: str) -> None:
    """One of 2 spawned Gloo processes: cache-first computation, error propagation, DDP gradient averaging."""
    os.environ.update(
        RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    torch.set_num_threads(1)
    distributed.init_distributed(backend="gloo", timeout_minutes=2)
    out: dict = {"backend": torch.distributed.get_backend()}
    cache = Path(folder) / "cache.txt"

    def fill_or_read() -> str:
        if cache.is_file():
            return f"rank {rank} read " + cache.read_text()
        cache.write_text("posteriors")
        return f"rank {rank} computed"

    out["cache"] = distributed.main_process_first(fill_or_read)

    def fails_on_rank_0() -> None:
        raise OSError("disk full")

    try:
        distributed.main_process_first(fails_on_rank_0, what="the test cache")
    except Exception as error:  # noqa: BLE001 - recorded for the test
        out["error"] = f"{type(error).__name__}: {error}"

    try:
        distributed.ddp(nn.Linear(3, 1).requires_grad_(False))
    except ValueError as error:
        out["frozen"] = str(error)
    torch.manual_seed(rank)  # different initial weights: DDP must start from rank 0's
    model = distributed.ddp(nn.Linear(3, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for step in range(3):
        x = torch.randn(4, 3, generator=torch.Generator().manual_seed(10 * rank + step))  # different data per rank
        optimizer.zero_grad()
        model(x).pow(2).mean().backward()
        optimizer.step()
    out["weights"] = distributed.gather_objects(distributed.unwrap(model).weight.detach().clone())
    out["buffers"] = []
    for older_torch in (False, True):  # older torch's DDP has no forward_sync_buffers: the buffers are copied by hand
        norm = nn.BatchNorm1d(3)
        norm.running_mean.fill_(float(rank + 1))  # rank-specific buffers: copied from rank 0 once when wrapped
        real_inspect = distributed.inspect
        if older_torch:
            distributed.inspect = SimpleNamespace(signature=lambda _: inspect.Signature())
        try:
            distributed.ddp(norm, sync_buffers_every_forward=False)
        finally:
            distributed.inspect = real_inspect
        out["buffers"].append(norm.running_mean.clone())
    out["shard"] = distributed.shard(list(range(7)))
    torch.save(out, Path(folder) / f"rank{rank}.pt")
    distributed.cleanup_distributed()
    # Leave without running destructors: freeing the DDP wrappers here can deadlock inside torch (the
    # Gloo group's destructor joins its worker thread while that thread waits for the GIL to release a
    # finished broadcast's tensors; seen about one run in three with torch 2.13).
    os._exit(0)


@pytest.mark.slow
def test_two_processes_cache_first_errors_and_ddp(tmp_path: Path) -> None:
    context = mp.start_processes(
        _two_rank_worker, args=(free_port(), str(tmp_path)), nprocs=2, join=False, start_method="spawn"
    )
    deadline = time.monotonic() + 240
    while not context.join(timeout=5):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail("the two Gloo processes did not finish in 240 s")
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1))
    assert rank0["backend"] == rank1["backend"] == "gloo"
    assert (rank0["cache"], rank1["cache"]) == ("rank 0 computed", "rank 1 read posteriors")
    assert rank0["error"] == "OSError: disk full"
    assert rank1["error"] == "RuntimeError: the test cache failed on rank 0 (OSError: disk full); see rank 0's log"
    assert "frozen networks must not be wrapped in DDP" in rank0["frozen"]
    weights0, weights1 = rank0["weights"]
    assert torch.equal(weights0, weights1) and torch.equal(rank1["weights"][0], weights0)
    assert (rank0["shard"], rank1["shard"]) == ([0, 2, 4, 6], [1, 3, 5])
    for buffer in rank0["buffers"] + rank1["buffers"]:
        assert torch.equal(buffer, torch.ones(3))


# ----------------------------------------------------------------------------------- DDP training (bundle)


def write_dump_config(folder: Path) -> str:
    path = folder / "dump_ranks.json"
    path.write_text(json.dumps({"+run": [DUMP_RUN_STATE]}))
    return str(path)


def assert_ranks_in_sync(root: Path, iteration: int) -> None:
    """G and D parameters equal on both ranks; the ranks saw disjoint halves of the (reshuffled) data."""
    rank0, rank1 = (torch.load(root / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert rank0["iteration"] == rank1["iteration"] == iteration
    # D's spectral-norm vectors are not broadcast at every step (see multi_gpu_train.json) but stay
    # equal: same weights, same updates
    for network in ("generator", "discriminator", "discriminator_buffers"):
        assert rank0[network].keys() == rank1[network].keys() and len(rank0[network]) > 10
        different = [name for name in rank0[network] if not torch.equal(rank0[network][name], rank1[network][name])]
        assert not different, f"{network} parameters differ across ranks: {different[:5]}"
    assert not set(rank0["samples"]) & set(rank1["samples"]), "both ranks trained on the same images"
    assert len(rank0["samples"]) == len(rank1["samples"]) > 0
    assert rank0["sampler_epoch"] == rank1["sampler_epoch"] >= 2, "DistributedSampler.set_epoch was not called"


@pytest.fixture(scope="module")
def ddp_training(
    tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, Path, subprocess.CompletedProcess]:
    """4 iterations of the explainer on 2 CPU processes: validation and one checkpoint at iteration 4."""
    work = tmp_path_factory.mktemp("ddp_training")
    root, logs = work / "bundle", work / "logs"
    config = TRAIN + [write_dump_config(work)]
    result = torchrun(
        [
            "-m",
            "monai.bundle",
            "run",
            "training",
            "--config_file",
            config_arg(config),
            "--bundle_root",
            str(root),
            "--dataset_dir",
            str(tiny_dataset),
            *TINY,
            "--max_iterations",
            "4",
            "--val_interval",
            "4",
            "--checkpoint_interval",
            "4",
        ],
        logs,
    )
    assert result.returncode == 0, failure_report(result, logs)
    return root, logs, result


@pytest.mark.slow
def test_ddp_training_keeps_ranks_in_sync_and_checkpoints_once(ddp_training) -> None:
    root, logs, _ = ddp_training
    assert_ranks_in_sync(root, 4)
    models = root / "models"
    expected = ["explainer_best.pt", "explainer_checkpoint_iteration=4.pt", "explainer_final.pt"]
    assert sorted(p.name for p in models.iterdir()) == expected
    final = torch.load(models / "explainer_final.pt", map_location="cpu", weights_only=True)
    assert final["trainer"]["iteration"] == 4
    assert not [key for key in final["generator"] if key.startswith("module.")], "DDP wrapper saved in the checkpoint"
    rank0 = torch.load(root / "rank0.pt", weights_only=True)
    for name, value in rank0["generator"].items():
        assert torch.equal(final["generator"][name], value), name
    out = root / "eval" / "explainer"
    assert len(list(out.glob("events.out.tfevents.*"))) == 1 and (out / "series_latest.png").is_file()
    log0, log1 = rank_log(logs, 0), rank_log(logs, 1)
    assert "process group ready: rank 0 of 2" in log0 and "backend gloo" in log0
    assert log0.count("Saved checkpoint at iteration: 4") == 1 and "val_validity" in log0 and "d_loss" in log0
    assert log0.count("computing source posteriors") == 1
    # rank 1 trains silently (logging, validation and checkpoints are rank 0's); that it reads rank 0's
    # posterior cache rather than computing its own is checked in test_two_processes_cache_first_errors_and_ddp
    for term in ("Saved checkpoint", "val_validity", "d_loss", "computing source posteriors", "Epoch"):
        assert term not in log1, term


@pytest.mark.slow
def test_ddp_training_resumes_from_its_checkpoint(ddp_training, tiny_dataset: Path, tmp_path: Path) -> None:
    first, _, _ = ddp_training
    root, logs = tmp_path / "bundle", tmp_path / "logs"
    shutil.copytree(first, root)
    config = TRAIN + [write_dump_config(tmp_path)]
    result = torchrun(
        [
            "-m",
            "monai.bundle",
            "run",
            "training",
            "--config_file",
            config_arg(config),
            "--bundle_root",
            str(root),
            "--dataset_dir",
            str(tiny_dataset),
            *TINY,
            "--max_iterations",
            "6",
            "--val_interval",
            "100",
            "--checkpoint_interval",
            "100",
        ],
        logs,
    )
    assert result.returncode == 0, failure_report(result, logs)
    log0 = rank_log(logs, 0)
    assert "resuming training from" in log0 and "(iteration 4)" in log0
    assert "computing source posteriors" not in log0  # the cache of the first run is reused
    assert_ranks_in_sync(root, 6)
    final = torch.load(root / "models" / "explainer_final.pt", map_location="cpu", weights_only=True)
    assert final["trainer"]["iteration"] == 6


@pytest.mark.slow
def test_ddp_classifier_training(tiny_dataset: Path, tmp_path: Path) -> None:
    """The classifier bundle's multi_gpu_train.json: sharded training and validation, one checkpoint, logs on rank 0."""
    root, logs = tmp_path / "bundle", tmp_path / "logs"
    config = [
        str(CLASSIFIER_CONFIGS / "train.json"),
        str(CLASSIFIER_CONFIGS / "classifier_cpu.json"),
        str(CLASSIFIER_CONFIGS / "multi_gpu_train.json"),
    ]
    result = torchrun(
        [
            "-m",
            "monai.bundle",
            "run",
            "training",
            "--config_file",
            config_arg(config),
            "--bundle_root",
            str(root),
            "--dataset_dir",
            str(tiny_dataset),
            "--image_size",
            "32",
            "--batch_size",
            "4",
            "--train#trainer#max_epochs",
            "2",
        ],
        logs,
    )
    assert result.returncode == 0, failure_report(result, logs)
    assert [p.name for p in (root / "models").iterdir()] == ["classifier.pt"]
    state = torch.load(root / "models" / "classifier.pt", map_location="cpu", weights_only=True)
    assert not [key for key in state if key.startswith("module.")]
    log0, log1 = rank_log(logs, 0), rank_log(logs, 1)
    assert "val_auc" in log0 and "train_loss" in log0
    assert "val_auc" not in log1 and "train_loss" not in log1
    # rank 0's two TensorBoard writers (training and validation) as in one process; none from rank 1
    assert len(list((root / "eval" / "classifier").glob("events.out.tfevents.*"))) == 2


# ----------------------------------------------------------------------------------- sharded inference


@pytest.mark.slow
def test_sharded_inference_writes_each_source_once_and_merges_the_logs(tiny_dataset: Path, tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    for index in range(5):
        shutil.copy(tiny_dataset / "images" / f"chest_{index:02d}.png", inbox / f"chest_{index:02d}.png")
    (inbox / "chest_02b.dcm").write_text("not an image\n")  # fails on one of the ranks
    sources = sorted(str(p.resolve()) for p in inbox.iterdir())
    common = [
        "--config_file",
        str(CONFIGS / "inference.json"),
        "--bundle_root",
        str(BUNDLE),
        "--input",
        str(inbox),
        "--quicklook",
        "false",
    ]
    out, logs = tmp_path / "out", tmp_path / "logs"
    result = torchrun(["-m", "monai.bundle", "run", "inference", *common, "--output_dir", str(out)], logs)
    log0, log1 = rank_log(logs, 0), rank_log(logs, 1)
    assert result.returncode == 1, failure_report(result, logs)  # one input failed: that rank exits 1
    assert "rank 0 of 2: explaining 3 input(s)" in log0 and "rank 1 of 2: explaining 3 input(s)" in log1
    assert "6 input(s): 5 series written (50 DICOM files), 1 failed" in log0  # rank 0 prints the whole run
    assert "series written (" not in log1

    frames = pd.read_csv(out / "frames.csv", keep_default_na=False)
    sources_csv = pd.read_csv(out / "sources.csv", keep_default_na=False)
    errors = pd.read_csv(out / "errors.csv", keep_default_na=False)
    assert list(frames.columns) == FRAME_COLUMNS and list(sources_csv.columns) == SOURCE_COLUMNS
    assert list(errors.columns) == ERROR_COLUMNS
    good = [s for s in sources if s.endswith(".png")]
    assert sources_csv["source"].tolist() == good  # each source once, in input order
    assert errors["source"].tolist() == [s for s in sources if s.endswith(".dcm")]
    assert frames.groupby("source", sort=False)["step"].apply(list).to_dict() == {s: list(range(10)) for s in good}
    assert len(set(sources_csv["series_instance_uid"])) == 5
    series = sorted(p.name for p in (out / "dicom").iterdir())
    assert series == sorted(sources_csv["series_instance_uid"])
    assert sorted(str(p) for p in (out / "dicom").rglob("*.dcm")) == sorted(frames["output_file"])
    assert not [p.name for p in out.iterdir() if "partial" in p.name or ".tmp" in p.name], "partial logs left behind"

    # the same outputs as one process: same series UIDs and scores (only the timings differ)
    single = tmp_path / "single"
    run_bundle(["run", "inference", *common, "--output_dir", str(single)], env=ONE_THREAD)
    alone = pd.read_csv(single / "sources.csv", keep_default_na=False)
    columns = ["source", "series_instance_uid", "source_score", "first_score", "last_score", "num_frames"]
    # the same series; scores equal up to float rounding (the shards batch other sources together)
    pd.testing.assert_frame_equal(alone[columns], sources_csv[columns], check_exact=False, atol=1e-5, rtol=0)
    alone_frames = pd.read_csv(single / "frames.csv", keep_default_na=False)
    assert alone_frames["sop_instance_uid"].tolist() == frames["sop_instance_uid"].tolist()
    np.testing.assert_allclose(alone_frames["score"], frames["score"], atol=1e-5, rtol=0)

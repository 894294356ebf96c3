"""Multi-process (``torchrun``) helpers: process group set-up, ranks, devices, DDP wrapping, sharding.

Everything here is a no-op or returns the single-process answer when the program was not started
by ``torchrun`` (or another launcher that sets ``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and
``MASTER_PORT``), so library code can call these helpers unconditionally.

* Backend: NCCL when CUDA is available, Gloo otherwise (:func:`default_backend`).
* Device: ``cuda:<LOCAL_RANK>`` on GPU machines, else the CPU (:func:`local_device`).
* Only rank 0 logs, validates and checkpoints; :func:`main_process_first` lets rank 0 compute a
  shared on-disk cache while the other ranks wait, then read it.
"""

from __future__ import annotations

import inspect
import logging
import os
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn

__all__ = [
    "LAUNCH_VARIABLES",
    "NullSummaryWriter",
    "barrier",
    "broadcast_object",
    "cleanup_distributed",
    "ddp",
    "default_backend",
    "gather_objects",
    "get_local_rank",
    "get_rank",
    "get_world_size",
    "init_distributed",
    "is_distributed",
    "is_main_process",
    "launched_by_torchrun",
    "local_device",
    "log_on_main_process_only",
    "main_process_first",
    "main_process_summary_writer",
    "on_main_process",
    "shard",
    "unwrap",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: Environment variables a ``torchrun`` worker gets (``env://`` rendezvous).
LAUNCH_VARIABLES = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")

_TORCHRUN_HINT = (
    "start it with torchrun, e.g. torchrun --nproc_per_node=2 -m monai.bundle run training --config_file "
    "\"['bundles/cxr/configs/train.json','bundles/cxr/configs/multi_gpu_train.json']\" --bundle_root bundles/cxr "
    "(see docs/scaling.md)"
)


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    try:
        return int(value) if value.strip() else default
    except ValueError:
        raise ValueError(f"environment variable {name} must be an integer, got {value!r}") from None


def launched_by_torchrun() -> bool:
    """True when ``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT`` are all set."""
    return all(os.environ.get(name) for name in LAUNCH_VARIABLES)


def is_distributed() -> bool:
    """True when a ``torch.distributed`` process group is initialised."""
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    """This process's global rank: from the process group, else ``$RANK``, else 0."""
    return dist.get_rank() if is_distributed() else _env_int("RANK", 0)


def get_world_size() -> int:
    """Number of processes: from the process group, else ``$WORLD_SIZE``, else 1."""
    return dist.get_world_size() if is_distributed() else _env_int("WORLD_SIZE", 1)


def get_local_rank() -> int:
    """This process's rank on its node (``$LOCAL_RANK``, else 0): selects its GPU."""
    return _env_int("LOCAL_RANK", 0)


def is_main_process() -> bool:
    """True on global rank 0 (the only rank that logs, validates and writes checkpoints)."""
    return get_rank() == 0


def default_backend() -> str:
    """``"nccl"`` when CUDA (and NCCL) is available, else ``"gloo"``."""
    if torch.cuda.is_available() and dist.is_nccl_available():
        return "nccl"
    return "gloo"


def local_device() -> torch.device:
    """``cuda:<LOCAL_RANK>`` when CUDA is available, else the CPU.

    Raises ``RuntimeError`` when the node has fewer visible GPUs than ``LOCAL_RANK + 1``.
    """
    if not torch.cuda.is_available():
        return torch.device("cpu")
    local_rank, count = get_local_rank(), torch.cuda.device_count()
    if local_rank >= count:
        raise RuntimeError(
            f"LOCAL_RANK {local_rank} needs GPU {local_rank} but only {count} GPU(s) are visible on this node: "
            "set torchrun --nproc_per_node to at most the number of GPUs (or check CUDA_VISIBLE_DEVICES)"
        )
    return torch.device("cuda", local_rank)


def init_distributed(backend: str | None = None, timeout_minutes: float = 30.0) -> bool:
    """Join the ``torchrun`` process group (idempotent); returns True once it is initialised.

    ``backend`` None picks :func:`default_backend`. On CUDA the current device becomes
    ``cuda:<LOCAL_RANK>``. ``timeout_minutes`` bounds how long a rank waits for the others (rank 0
    validates and checkpoints while the others wait in their next collective).
    Raises ``RuntimeError`` when the process was not started by ``torchrun``.
    """
    if is_distributed():
        return True
    if not dist.is_available():
        raise RuntimeError("this PyTorch build has no torch.distributed support: multi-process runs are impossible")
    if not launched_by_torchrun():
        missing = [name for name in LAUNCH_VARIABLES if not os.environ.get(name)]
        raise RuntimeError(
            f"a multi-process config needs the torchrun environment ({', '.join(missing)} not set): {_TORCHRUN_HINT}"
        )
    backend = (backend or default_backend()).lower()
    if backend not in ("nccl", "gloo"):
        raise ValueError(f"distributed backend must be 'nccl' or 'gloo' (or None for automatic), got {backend!r}")
    if backend == "nccl" and not torch.cuda.is_available():
        raise RuntimeError("the NCCL backend needs CUDA GPUs; use backend 'gloo' (or None) on CPU-only machines")
    if torch.cuda.is_available():  # so that plain "cuda" (models, NCCL collectives) means this rank's GPU
        torch.cuda.set_device(local_device())
    dist.init_process_group(backend=backend, timeout=timedelta(minutes=float(timeout_minutes)))
    _sync_ignite()
    logger.info(
        "process group ready: rank %d of %d (local rank %d), backend %s, device %s",
        dist.get_rank(),
        dist.get_world_size(),
        get_local_rank(),
        backend,
        local_device(),
    )
    return True


def log_on_main_process_only(level: int = logging.WARNING) -> None:
    """On ranks other than 0, raise the root logger's level to ``level`` (warnings and errors still show)."""
    if not is_main_process():
        logging.getLogger().setLevel(level)


def barrier() -> None:
    """Wait for every rank (no-op without a process group)."""
    if is_distributed():
        dist.barrier()


def cleanup_distributed(wait: bool = True) -> None:
    """Leave the process group (no-op without one), first waiting for every rank when ``wait``.

    Use ``wait=False`` on error paths, where the other ranks may never reach the barrier.
    """
    if is_distributed():
        if wait:
            dist.barrier()
        dist.destroy_process_group()
        _sync_ignite()


def _sync_ignite() -> None:
    """Make ignite's ``idist`` pick up the process group now, on every rank at once.

    ignite's first look at a new process group is itself collective (it builds a Gloo group to count
    processes per node). Left to happen lazily, it runs inside whichever handler first asks for the
    rank (e.g. a checkpoint saver that only rank 0 has) and the ranks deadlock.
    """
    try:
        import ignite.distributed as idist
    except ImportError:  # ignite is optional for the helpers here
        return
    idist.sync()


def broadcast_object(obj: T, src: int = 0) -> T:
    """Rank ``src``'s ``obj`` on every rank (``obj`` itself without a process group); waits for rank ``src``."""
    if not is_distributed():
        return obj
    box: list[Any] = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def gather_objects(obj: T) -> list[T]:
    """``[obj of rank 0, obj of rank 1, ...]`` on every rank (``[obj]`` without a process group)."""
    if not is_distributed():
        return [obj]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def shard(items: Sequence[T], rank: int | None = None, world_size: int | None = None) -> list[T]:
    """Every ``world_size``-th item starting at ``rank``: the shards of all ranks cover ``items`` once.

    MONAI's :func:`~monai.data.partition_dataset` (in order, not padded); a rank beyond the items gets none.
    """
    from monai.data import partition_dataset

    rank = get_rank() if rank is None else rank
    world_size = get_world_size() if world_size is None else world_size
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, world_size), got rank {rank} of {world_size}")
    if rank >= len(items):  # partition_dataset refuses fewer items than partitions
        return []
    return partition_dataset(list(items), num_partitions=min(world_size, len(items)), even_divisible=False)[rank]


def ddp(
    module: nn.Module,
    device: torch.device | str | None = None,
    sync_buffers_every_forward: bool = True,
    **kwargs: Any,
) -> nn.Module:
    """``module`` wrapped in ``DistributedDataParallel`` when a process group is up, else ``module``.

    ``device`` is where ``module`` lives (``cuda:<LOCAL_RANK>`` gives ``device_ids=[LOCAL_RANK]``;
    CPU modules get no ``device_ids``). Wrap only trained networks: a frozen module (such as the
    black-box classifier) raises ``ValueError``. ``kwargs`` go to ``DistributedDataParallel``.

    Parameters and buffers start as rank 0's. ``sync_buffers_every_forward`` False skips DDP's
    broadcast of rank 0's buffers before every forward pass (a synchronisation point each time):
    spectral-norm vectors then stay equal across ranks by themselves (same weights, same updates)
    and batch-norm running statistics become per rank (rank 0's are the ones saved).
    """
    if not is_distributed():
        return module
    if not any(parameter.requires_grad for parameter in module.parameters()):
        raise ValueError(
            f"{type(module).__name__} has no trainable parameter: frozen networks must not be wrapped in DDP"
        )
    device = torch.device(device) if device is not None else next(module.parameters()).device
    if device.type == "cuda":
        index = torch.cuda.current_device() if device.index is None else device.index
        kwargs.setdefault("device_ids", [index])
        kwargs.setdefault("output_device", index)
    copy_buffers_once = False
    if not sync_buffers_every_forward:
        if "forward_sync_buffers" in inspect.signature(nn.parallel.DistributedDataParallel).parameters:
            kwargs["forward_sync_buffers"] = False  # torch >= 2.13: still copies rank 0's buffers at init
        else:
            kwargs["broadcast_buffers"] = False  # older torch: no copy at init either, done below
            copy_buffers_once = True
    wrapped = nn.parallel.DistributedDataParallel(module, **kwargs)
    if copy_buffers_once:
        with torch.no_grad():
            for buffer in module.buffers():
                dist.broadcast(buffer, src=0)
    return wrapped


def unwrap(module: nn.Module) -> nn.Module:
    """The network inside a ``DistributedDataParallel``/``DataParallel`` wrapper (else ``module``)."""
    while isinstance(module, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        module = module.module
    return module


def on_main_process(compute: Callable[[], T], what: str = "the shared computation") -> T | None:
    """Run ``compute`` on rank 0 only while the other ranks wait; rank 0 gets its result, the others None.

    If ``compute`` fails on rank 0 its error is raised there and the other ranks raise
    ``RuntimeError`` instead of waiting forever. Without a process group this is ``compute()``.
    """
    if not is_distributed() or dist.get_world_size() == 1:
        return compute()
    result: Any = None
    error: BaseException | None = None
    if dist.get_rank() == 0:
        try:
            result = compute()
        except BaseException as caught:  # noqa: BLE001 - re-raised below, after telling the others
            error = caught
    # The other ranks wait here until rank 0 is done (or has failed).
    status = broadcast_object(None if error is None else f"{type(error).__name__}: {error}")
    if error is not None:
        raise error
    if status is not None:
        raise RuntimeError(f"{what} failed on rank 0 ({status}); see rank 0's log")
    return result


def main_process_first(compute: Callable[[], T], what: str = "the shared computation") -> T:
    """Run ``compute`` on rank 0 first; the other ranks wait for it, then run ``compute`` themselves.

    Meant for on-disk caches: rank 0 fills the cache, the others then only read it. Errors as in
    :func:`on_main_process`. Without a process group this is ``compute()``.
    """
    result = on_main_process(compute, what)
    return result if is_main_process() else compute()


class NullSummaryWriter:
    """Stands in for TensorBoard's ``SummaryWriter`` on ranks other than 0: every method does nothing."""

    def __init__(self, log_dir: str | None = None, **kwargs: Any) -> None:
        self.log_dir = log_dir

    def __getattr__(self, name: str) -> Callable[..., None]:
        if name.startswith("__"):
            raise AttributeError(name)
        return lambda *args, **kwargs: None


def main_process_summary_writer(log_dir: str | None = None, **kwargs: Any) -> Any:
    """A TensorBoard ``SummaryWriter`` on rank 0, a :class:`NullSummaryWriter` elsewhere (no event files)."""
    if not is_main_process():
        return NullSummaryWriter(log_dir)
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(log_dir=log_dir, **kwargs)

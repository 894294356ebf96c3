"""The inference under ``torchrun``: each rank explains its shard of the inputs, rank 0 merges the logs.

Rank r takes inputs r, r + W, r + 2W, ... of the sorted input list (:func:`shard`), writes its own
series and its own partial logs (``frames.rank<r>-of-<W>.partial.csv``, ...: :func:`log_paths`);
when every rank is done, rank 0 merges them into ``frames.csv``, ``sources.csv`` and ``errors.csv``
in input order and removes the partials (:func:`merge_shards`). The ranks only exchange small
Python objects (their summaries), so the process group uses Gloo even on GPU machines.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from monai_exaggeration import distributed
from monai_exaggeration.inference.logs import RUN_LOGS, earlier_logs, logs_lock, others_then
from monai_exaggeration.inference.results import STAGES, InferenceSummary
from monai_exaggeration.utils import write_csv_atomic

__all__ = ["join_process_group", "leave_process_group", "log_paths", "merge_shards", "rank_and_world", "shard"]

logger = logging.getLogger("monai_exaggeration.inference")


def join_process_group() -> bool:
    """Under ``torchrun`` with several processes, join the process group; True when this call created it."""
    if distributed.is_distributed() or not distributed.launched_by_torchrun() or distributed.get_world_size() < 2:
        return False
    return distributed.init_distributed(backend="gloo")


def leave_process_group() -> None:
    """Leave the process group without a barrier (this may be an error path other ranks never reach)."""
    distributed.cleanup_distributed(wait=False)


def rank_and_world() -> tuple[int, int]:
    """(rank, world size) of the process group; (0, 1) without one."""
    if not distributed.is_distributed():
        return 0, 1
    return distributed.get_rank(), distributed.get_world_size()


def shard(records: Sequence[dict]) -> list[dict]:
    """This rank's inputs: every W-th record from position r (all of them in a single process)."""
    return distributed.shard(records, *rank_and_world())


def log_paths(output_dir: Path, rank: int, world: int) -> dict[str, Path]:
    """Where a rank writes its logs: the final names in a single process, else ``<stem>.rank<r>-of-<W>.partial.csv``."""
    if world == 1:
        return {key: output_dir / name for key, (name, _) in RUN_LOGS.items()}
    return {
        key: output_dir / f"{Path(name).stem}.rank{rank}-of-{world}.partial.csv" for key, (name, _) in RUN_LOGS.items()
    }


def input_order(records: Sequence[dict]) -> dict[str, int]:
    """Position of each source (first occurrence) in the run's input list."""
    order: dict[str, int] = {}
    for index, record in enumerate(records):
        order.setdefault(str(record["image"]), index)
    return order


def merge_logs(output_dir: Path, world: int, order: dict[str, int]) -> None:
    """Concatenate every rank's partial logs in input order, write the run's logs atomically, remove the partials.

    The partial files are read as text and written back unchanged (no float or boolean reformatting).
    ``errors.csv`` is written only when some input failed, as in a single-process run.
    """
    partials = [log_paths(output_dir, rank, world) for rank in range(world)]
    missing = [str(paths[key]) for paths in partials for key in RUN_LOGS if not paths[key].is_file()]
    if missing:
        raise FileNotFoundError(
            f"partial logs of some ranks are missing ({', '.join(missing)}): with several nodes, "
            "output_dir must be a folder that all nodes share"
        )
    with logs_lock(output_dir):  # another run may write into the same folder: keep its rows too
        earlier = earlier_logs(output_dir)  # earlier runs' rows, as in a single-process run
        for key, (name, columns) in RUN_LOGS.items():
            table = pd.concat(
                [pd.read_csv(paths[key], dtype=str, keep_default_na=False) for paths in partials], ignore_index=True
            ).reindex(columns=columns)
            position = np.asarray([order.get(source, len(order)) for source in table["source"]], dtype=np.int64)
            table = table.iloc[np.argsort(position, kind="stable")]
            if key in earlier:
                table = others_then(earlier[key], table)
            if key != "errors" or len(table):
                write_csv_atomic(table, output_dir / name)
    for paths in partials:
        for path in paths.values():
            path.unlink(missing_ok=True)


def merge_shards(
    summary: InferenceSummary, records: Sequence[dict], output_dir: Path, start: float
) -> InferenceSummary:
    """Wait for every rank; rank 0 merges the partial logs and returns the whole run's summary.

    Other ranks return their own ``summary`` once the merged logs exist. If the merge fails, rank 0
    raises its error and the other ranks a ``RuntimeError`` (none of them waits forever).
    """
    rank, world = rank_and_world()
    shards = distributed.gather_objects(summary)  # after this every rank has finished its shard
    order = input_order(records)
    distributed.on_main_process(lambda: merge_logs(output_dir, world, order), what="merging the shards' logs")
    if rank != 0:
        return summary
    failures = sorted(
        (failure for one in shards for failure in one.failures),
        key=lambda failure: order.get(str(failure["source"]), len(order)),
    )
    merged = InferenceSummary(
        output_dir=output_dir,
        num_inputs=sum(one.num_inputs for one in shards),
        num_series=sum(one.num_series for one in shards),
        num_files=sum(one.num_files for one in shards),
        failures=failures,
        series_dirs=[folder for one in shards for folder in one.series_dirs],
        quicklook_dirs=[folder for one in shards for folder in one.quicklook_dirs],
        seconds=time.perf_counter() - start,
        stage_seconds={stage: sum(one.stage_seconds.get(stage, 0.0) for one in shards) for stage in STAGES},
    )
    logger.info("merged the logs of %d ranks: %d series, %d failed", world, merged.num_series, len(failures))
    return merged

"""Resuming an interrupted training from its latest checkpoint."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import torch
from ignite.engine import Engine
from monai.handlers import CheckpointLoader

__all__ = ["latest_checkpoint", "attach_resume"]

logger = logging.getLogger(__name__)


def _checkpoints(ckpt_dir: str | os.PathLike, prefix: str) -> list[tuple[int, Path]]:
    """(iteration, path) of MONAI/ignite checkpoints ``<prefix>_checkpoint_[iteration=]<n>.pt``."""
    pattern = re.compile(rf"^{re.escape(prefix)}_checkpoint_(?:iteration=)?(\d+)\.pt$")
    found = []
    for path in Path(ckpt_dir).glob(f"{prefix}_checkpoint_*.pt"):
        match = pattern.match(path.name)
        if match:
            found.append((int(match.group(1)), path))
    return sorted(found)


def latest_checkpoint(ckpt_dir: str | os.PathLike, prefix: str = "explainer") -> Path | None:
    """The ``<prefix>_checkpoint_*.pt`` file with the highest iteration in ``ckpt_dir``, if any."""
    found = _checkpoints(ckpt_dir, prefix)
    return found[-1][1] if found else None


def attach_resume(
    trainer: Engine,
    ckpt_dir: str | os.PathLike,
    load_dict: dict,
    prefix: str = "explainer",
    map_location: str | torch.device | None = None,
) -> Path | None:
    """If a checkpoint exists, attach a MONAI ``CheckpointLoader`` so ``trainer.run()`` resumes from it.

    Restores every object of ``load_dict`` (networks, optimisers, the trainer's iteration and epoch)
    and logs where training resumes. Returns the checkpoint used, or None for a fresh start.
    """
    found = _checkpoints(ckpt_dir, prefix)
    if not found:
        logger.info("no checkpoint in %s: training starts from scratch", ckpt_dir)
        return None
    iteration, path = found[-1]
    logger.info("resuming training from %s (iteration %d)", path, iteration)
    CheckpointLoader(load_path=str(path), load_dict=load_dict, map_location=map_location).attach(trainer)
    return path

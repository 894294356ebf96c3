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
    and logs where training resumes. The newest readable checkpoint is used (keep ``n_saved >= 2``
    so that a run killed while writing one still has the previous). Returns it, or None.
    """
    for iteration, path in reversed(_checkpoints(ckpt_dir, prefix)):
        try:  # MONAI writes checkpoints in place: one killed mid-save is damaged, so fall back to an older one
            torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # noqa: BLE001 - any unreadable file is skipped
            logger.warning("skipping damaged checkpoint %s (%s)", path, error)
            continue
        break
    else:
        logger.info("no usable checkpoint in %s: training starts from scratch", ckpt_dir)
        return None
    logger.info("resuming training from %s (iteration %d)", path, iteration)
    CheckpointLoader(load_path=str(path), load_dict=load_dict, map_location=map_location).attach(trainer)
    return path

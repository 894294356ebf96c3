"""What the report handlers share: files are written by the main process only."""

from __future__ import annotations

import logging

from monai_exaggeration import distributed

logger = logging.getLogger("monai_exaggeration.handlers")


def writes_files(what: str) -> bool:
    """True on the process that writes the report files (global rank 0, or the only process).

    Under ``torchrun`` each process has evaluated its own share of the data: the other ranks write
    nothing, and rank 0 says that its files hold its own share only.
    """
    if not distributed.is_main_process():
        return False
    world = distributed.get_world_size()
    if world > 1:
        logger.warning(
            "%s: %d processes ran; these files hold rank 0's share only (run it in one process for every image)",
            what,
            world,
        )
    return True

"""Source posteriors f(x) of the training images: computed once per classifier and cached on disk."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from monai.data import DataLoader, Dataset

from monai_exaggeration.binning import posterior_to_bin
from monai_exaggeration.distributed import main_process_first
from monai_exaggeration.handlers import Progress
from monai_exaggeration.networks.classifier import classifier_fingerprint
from monai_exaggeration.utils import write_csv_atomic

__all__ = ["compute_posteriors", "with_source_posteriors"]


logger = logging.getLogger(__name__)


def _batches(
    classifier: torch.nn.Module, records: Sequence[dict], preprocessing: Callable, batch_size: int, num_workers: int
) -> Iterator[np.ndarray]:
    """f(x) of the records' images, one array per batch of ``batch_size``, in record order."""
    device = next(classifier.parameters(), torch.empty(0)).device
    loader = DataLoader(
        Dataset(list(records), transform=preprocessing), batch_size=batch_size, num_workers=num_workers, shuffle=False
    )
    with torch.no_grad():
        for batch in loader:
            yield classifier(batch["image"].to(device)).float().cpu().reshape(-1).numpy()


def compute_posteriors(
    classifier: torch.nn.Module,
    records: Sequence[dict],
    preprocessing: Callable,
    batch_size: int = 64,
    num_workers: int = 0,
) -> np.ndarray:
    """f(x) of every record's image, in record order, scored in batches of ``batch_size``."""
    progress = Progress(len(records), "source posteriors", unit="images")
    scores = []
    for values in _batches(classifier, records, preprocessing, batch_size, num_workers):
        scores.append(values)
        progress.update(len(values))
    progress.close()
    return np.concatenate(scores).astype(np.float32) if scores else np.zeros(0, dtype=np.float32)


def with_source_posteriors(
    records: Sequence[dict],
    classifier: torch.nn.Module,
    preprocessing: Callable,
    cache_file: str | os.PathLike,
    num_bins: int,
    batch_size: int = 64,
    save_every: int = 512,
    num_workers: int = 0,
) -> list[dict]:
    """Records with ``source_posterior`` (float) and ``source_bin`` (int) added.

    Posteriors come from ``cache_file`` (CSV: image, posterior, classifier) for the images it holds
    for this classifier's fingerprint; the others are scored in batches of ``batch_size`` (a progress
    bar on a terminal, otherwise a log line every ``save_every`` images or 30 s) and added to the
    cache every ``save_every`` images and at the end, each time atomically (temporary file, then
    rename). A run killed while scoring therefore keeps what it scored, and the next run scores only
    the images still missing. Under ``torchrun`` rank 0 fills the cache while the other ranks wait,
    then they read it.
    """
    return main_process_first(
        lambda: _with_source_posteriors(
            records, classifier, preprocessing, cache_file, num_bins, batch_size, save_every, num_workers
        ),
        what=f"computing the source posteriors ({cache_file})",
    )


def _write_cache(cached: dict[str, float], fingerprint: str, cache_file: Path) -> None:
    table = pd.DataFrame({"image": list(cached), "posterior": list(cached.values()), "classifier": fingerprint})
    write_csv_atomic(table, cache_file)


def _with_source_posteriors(
    records: Sequence[dict],
    classifier: torch.nn.Module,
    preprocessing: Callable,
    cache_file: str | os.PathLike,
    num_bins: int,
    batch_size: int,
    save_every: int,
    num_workers: int,
) -> list[dict]:
    fingerprint = classifier_fingerprint(classifier)
    cache_file = Path(cache_file)
    images = [str(record["image"]) for record in records]
    cached: dict[str, float] = {}
    if cache_file.is_file():
        table = pd.read_csv(cache_file, dtype={"image": str, "classifier": str})
        table = table[table["classifier"] == fingerprint]
        cached = dict(zip(table["image"], table["posterior"].astype(float)))
    missing = [record for record, image in zip(records, images) if image not in cached]
    if missing:
        logger.info(
            "computing source posteriors of %d images (%d cached in %s); saved as they are scored, "
            "so an interrupted run continues where it stopped",
            len(missing),
            len(records) - len(missing),
            cache_file,
        )
        progress = Progress(len(missing), "source posteriors", unit="images", every=save_every)
        names = [str(record["image"]) for record in missing]
        done = unsaved = 0
        for values in _batches(classifier, missing, preprocessing, batch_size, num_workers):
            cached.update(zip(names[done : done + len(values)], values.tolist()))
            done += len(values)
            unsaved += len(values)
            progress.update(len(values))
            if unsaved >= save_every:
                _write_cache(cached, fingerprint, cache_file)
                unsaved = 0
        progress.close()
        _write_cache(cached, fingerprint, cache_file)
    else:
        logger.info("source posteriors of %d images read from %s", len(records), cache_file)
    posteriors = torch.tensor([cached[image] for image in images], dtype=torch.float32)
    bins = posterior_to_bin(posteriors, num_bins).tolist()
    return [
        dict(record, source_posterior=float(p), source_bin=int(b))
        for record, p, b in zip(records, posteriors.tolist(), bins)
    ]

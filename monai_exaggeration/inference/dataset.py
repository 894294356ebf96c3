"""The inference's input side: preprocessing, dataset and data loader (MONAI's inference pattern).

* :class:`SourcePreprocessing` reads one file (``read_cxr`` conventions, input limits checked from
  the header) and resizes it to the model size with invertible transforms: ``path -> (source,
  model input)``. The model size is bound when the models are loaded (:meth:`SourcePreprocessing.bind`).
* :class:`SourceDataset` holds the inputs of a file, folder or CSV manifest (this rank's shard under
  ``torchrun``, see :mod:`.sharding`); an item is ``(record, (source, model input))``, or
  ``(record, LoadFailure)`` for a file that cannot be read, so one bad file never fails a batch.
* :func:`source_loader` is the MONAI ``DataLoader`` over it: reader processes, prefetching, batches
  of sources in input order.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

from monai.data import DataLoader, Dataset, MetaTensor

from monai_exaggeration.data import collect_inputs, default_input
from monai_exaggeration.data.streaming import LoadFailure, reader_options
from monai_exaggeration.inference.sharding import shard
from monai_exaggeration.transforms import ASPECT_POLICIES, InputLimits, LoadCXR, cxr_preprocessing

__all__ = ["SourceDataset", "SourcePreprocessing", "source_loader"]


class SourcePreprocessing:
    """``path -> (source (1, rows, columns) in [0, 1], model input (1, S, S) in [-1, 1])`` (picklable).

    ``aspect`` is how a non-square image becomes square (``pad``, ``crop``, ``stretch``);
    ``input_limits`` overrides :meth:`InputLimits.for_sources` (``min_size``, ``max_aspect``,
    ``max_megapixels``, ``max_file_mb``); ``image_size`` S is usually bound later from the model.
    """

    def __init__(self, aspect: str = "pad", input_limits: dict | None = None, image_size: int | None = None) -> None:
        if aspect not in ASPECT_POLICIES:
            raise ValueError(f"aspect must be one of {ASPECT_POLICIES}, got {aspect!r}")
        try:
            limits = InputLimits.for_sources(**dict(input_limits or {}))
        except TypeError:
            raise ValueError(
                f"input_limits accepts min_size, max_aspect, max_megapixels and max_file_mb, got {dict(input_limits)}"
            ) from None
        self.aspect = aspect
        self.loader = LoadCXR(limits)
        self.image_size: int | None = None
        self.transform: Any = None
        if image_size is not None:
            self.bind(image_size)

    def bind(self, image_size: int) -> SourcePreprocessing:
        """Preprocess to ``image_size`` (the model's input size)."""
        self.image_size = int(image_size)
        self.transform = cxr_preprocessing("image", self.image_size, self.aspect, load=False)
        return self

    def model_input(self, image: MetaTensor) -> MetaTensor:
        """A loaded image (or a stack of frames on its grid) preprocessed as the model input."""
        if self.transform is None:
            raise RuntimeError("the model size is not known yet: load the models first (SeriesInferer.prepare)")
        return self.transform({"image": image})["image"]

    def __call__(self, path: str | os.PathLike) -> tuple[MetaTensor, MetaTensor]:
        source = self.loader(path)
        return source, self.model_input(source)


class SourceDataset(Dataset):
    """The inputs of a run: ``data`` is a file, folder or CSV manifest (None or "": the embedded default
    RG1_UNCR.dcm), or a list of records with an ``image`` path. ``all_records`` keeps the whole input
    list in order; the dataset itself holds this rank's shard (all of it in a single process).
    ``transform`` is a :class:`SourcePreprocessing` or a factory of one (bound to the model size before
    the first item).
    """

    def __init__(self, data: Any, transform: SourcePreprocessing | Callable[[], SourcePreprocessing]) -> None:
        if isinstance(data, Sequence) and not isinstance(data, str):
            records = [dict(record) for record in data]
        else:
            records = collect_inputs(data if data not in (None, "") else default_input())
        self.all_records = records
        self.reading = transform if isinstance(transform, SourcePreprocessing) else transform()
        super().__init__(shard(records), transform=self.reading)

    def use(self, reading: SourcePreprocessing) -> SourceDataset:
        """Read with the inferer's own preprocessing: its inverse carries the frames back to the source grid,
        and MONAI inverts only with the transform objects that were applied."""
        self.reading = self.transform = reading
        return self

    def _transform(self, index: int) -> tuple[dict, Any]:
        record = self.data[index]
        try:
            return record, self.reading(record["image"])
        except Exception as error:  # noqa: BLE001 - one bad file must not stop the batch
            return record, LoadFailure.from_exception(error)


def _as_list(items: list) -> list:
    return items


def source_loader(
    dataset: SourceDataset, batch_size: int, num_workers: int | None = None, prefetch: int = 2
) -> DataLoader:
    """Batches of ``batch_size`` dataset items, in order, read by ``num_workers`` reader processes
    (None: :func:`~monai_exaggeration.data.streaming.default_workers`; 0 reads in this process)."""
    return DataLoader(dataset, batch_size=int(batch_size), collate_fn=_as_list, **reader_options(num_workers, prefetch))

"""MONAI transforms that load a chest X-ray into a normalised 1-channel tensor at the model size.

Aspect policy (``aspect``):

* ``"pad"`` (default): resize so the longer side equals the model size, then pad the shorter side
  symmetrically with black (-1) to a square. Nothing of the image is lost.
* ``"crop"``: take the centred square of side min(rows, columns), then resize. Loses the edges.
* ``"stretch"``: resize rows and columns independently (distorts anatomy; only for pre-squared data).

All three are MONAI invertible transforms, so ``Compose.inverse`` (or ``Invertd``) maps a model-size
result back to the source pixel grid (see :func:`cxr_preprocessing`).
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping, Sequence
from typing import Any, Literal, get_args

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import (
    BorderPad,
    CenterSpatialCrop,
    Compose,
    InvertibleTransform,
    MapTransform,
    Resize,
    ScaleIntensityRanged,
    SpatialPadd,
    Transform,
)
from monai.utils import TraceKeys

from monai_exaggeration.transforms.readers import InputLimits, read_cxr
from monai_exaggeration.transforms.resize import AntiAliasedResized, anti_aliased_resize

__all__ = [
    "Aspect",
    "ASPECT_POLICIES",
    "LoadCXR",
    "LoadCXRd",
    "CropToSquared",
    "cxr_preprocessing",
    "load_cxr",
    "model_input",
    "model_region",
    "model_scale",
    "to_unit_range",
    "to_model_range",
]

Aspect = Literal["pad", "crop", "stretch"]
ASPECT_POLICIES: tuple[str, ...] = get_args(Aspect)


def to_model_range(unit: torch.Tensor | np.ndarray) -> torch.Tensor | np.ndarray:
    """Map display intensities in [0, 1] to the model range [-1, 1]."""
    return unit * 2.0 - 1.0


def to_unit_range(model: torch.Tensor | np.ndarray) -> torch.Tensor | np.ndarray:
    """Map model intensities in [-1, 1] back to display intensities in [0, 1]."""
    return (model + 1.0) / 2.0


class LoadCXR(Transform):
    """Load a chest X-ray file as a ``MetaTensor`` of shape (1, rows, columns), values in [0, 1].

    The metadata keeps the source path, format, shape, pixel spacing, polarity and (for DICOM) the
    patient/study/series/instance attributes listed in :data:`~.readers.DICOM_KEYWORDS`.
    """

    def __init__(self, limits: InputLimits | None = None) -> None:
        self.limits = limits

    def __call__(self, path: str | os.PathLike) -> MetaTensor:
        image = read_cxr(path, self.limits)
        row_spacing, column_spacing = image.meta["pixel_spacing"]
        affine = torch.diag(torch.tensor([row_spacing, column_spacing, 1.0], dtype=torch.float64))
        return MetaTensor(torch.from_numpy(image.pixels)[None], affine=affine, meta=image.meta)


class LoadCXRd(MapTransform):
    """Dictionary version of :class:`LoadCXR`."""

    def __init__(self, keys: KeysCollection = "image", allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.loader = LoadCXR()

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        result = dict(data)
        for key in self.key_iterator(result):
            result[key] = self.loader(result[key])
        return result


class CropToSquared(MapTransform, InvertibleTransform):
    """Centre-crop each image to a square of side min(rows, columns); invertible (pads back)."""

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        result = dict(data)
        for key in self.key_iterator(result):
            side = int(min(result[key].shape[1:]))
            result[key] = CenterSpatialCrop(roi_size=(side, side))(result[key])
        return result

    def inverse(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        result = dict(data)
        for key in self.key_iterator(result):
            # The crop was recorded by a per-image cropper instance: skip MONAI's instance-id check.
            record = CenterSpatialCrop(roi_size=(1, 1)).pop_transform(result[key], check=False)
            pad_back = BorderPad(record[TraceKeys.EXTRA_INFO]["cropped"])  # zeros where the crop cut
            with pad_back.trace_transform(False):
                result[key] = pad_back(result[key])
        return result


def _aspect_transforms(keys: KeysCollection, spatial_size: int, aspect: str) -> list[Transform]:
    # MONAI's Resized(mode="bilinear", anti_aliasing=True), computed with bounded memory (see .resize)
    if aspect == "pad":
        return [
            AntiAliasedResized(keys, spatial_size=spatial_size, size_mode="longest"),
            SpatialPadd(keys, spatial_size=(spatial_size, spatial_size), mode="constant", value=-1.0),
        ]
    if aspect == "crop":
        return [CropToSquared(keys), AntiAliasedResized(keys, spatial_size=(spatial_size, spatial_size))]
    if aspect == "stretch":
        return [AntiAliasedResized(keys, spatial_size=(spatial_size, spatial_size))]
    raise ValueError(f"aspect must be one of {ASPECT_POLICIES}, got {aspect!r}")


def cxr_preprocessing(
    keys: KeysCollection = "image",
    spatial_size: int = 128,
    aspect: Aspect = "pad",
    load: bool = True,
    extra: Sequence[Transform] = (),
) -> Compose:
    """The project's CXR loader: file -> (1, size, size) float tensor in [-1, 1] with metadata.

    ``load=False`` starts from already-loaded [0, 1] tensors. ``extra`` transforms (augmentation)
    are appended. ``Compose.inverse`` maps outputs back to the source grid (intensity stays in
    [-1, 1]; use :func:`to_unit_range` for display values).
    """
    if spatial_size < 8:
        raise ValueError(f"spatial_size must be at least 8 pixels, got {spatial_size}")
    transforms: list[Transform] = [LoadCXRd(keys)] if load else []
    transforms.append(ScaleIntensityRanged(keys, a_min=0.0, a_max=1.0, b_min=-1.0, b_max=1.0, clip=True))
    transforms.extend(_aspect_transforms(keys, spatial_size, aspect))
    transforms.extend(extra)
    return Compose(transforms)


def load_cxr(
    path: str | os.PathLike, spatial_size: int = 128, aspect: Aspect = "pad", limits: InputLimits | None = None
) -> MetaTensor:
    """Load one file ready for the model: (1, size, size) in [-1, 1]. Errors are :class:`CXRInputError`."""
    image = LoadCXR(limits)(path)  # called directly so that input errors are not wrapped by Compose
    return cxr_preprocessing("image", spatial_size, aspect, load=False)({"image": image})["image"]


def _model_size(shape: tuple[int, int], spatial_size: int, aspect: str) -> tuple[int, int]:
    """The resized (rows, columns) of ``aspect``'s resize, computed as MONAI's ``Resize`` computes it."""
    if aspect == "pad":  # Resize(size_mode="longest")
        scale = spatial_size / max(shape)
        return int(round(shape[0] * scale)), int(round(shape[1] * scale))
    return spatial_size, spatial_size


def model_region(
    shape: tuple[int, int], spatial_size: int, aspect: str
) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int], tuple[int, int]]:
    """Where a source of ``shape`` (rows, columns) sits on the model grid, as the preprocessing places it:
    ``(source start, source extent, model start, model extent)``, each (rows, columns). The source region
    ``start .. start + extent`` (all of it, or the centred square that ``crop`` keeps) is resized onto the
    model region ``model start .. model start + model extent`` (all of the grid, or the part that ``pad``
    does not pad)."""
    if aspect not in ASPECT_POLICIES:
        raise ValueError(f"aspect must be one of {ASPECT_POLICIES}, got {aspect!r}")
    rows, columns = (int(v) for v in shape)
    if aspect == "crop":  # MONAI's CenterSpatialCrop: start = centre - half of the kept side
        side = min(rows, columns)
        return (rows // 2 - side // 2, columns // 2 - side // 2), (side, side), (0, 0), (spatial_size, spatial_size)
    resized = _model_size((rows, columns), spatial_size, aspect)
    before = ((spatial_size - resized[0]) // 2, (spatial_size - resized[1]) // 2)  # SpatialPad, symmetric
    return (0, 0), (rows, columns), before, resized


def model_scale(shape: tuple[int, int], spatial_size: int, aspect: str) -> tuple[float, float]:
    """Model pixels per source pixel along rows and columns for a source of ``shape`` (rows, columns):
    how a displacement measured on the model grid is carried to the source grid (divide by it)."""
    if aspect not in ASPECT_POLICIES:
        raise ValueError(f"aspect must be one of {ASPECT_POLICIES}, got {aspect!r}")
    rows, columns = (int(v) for v in shape)
    if aspect == "crop":
        side = min(rows, columns)
        return spatial_size / side, spatial_size / side
    resized = _model_size((rows, columns), spatial_size, aspect)
    return resized[0] / rows, resized[1] / columns


def model_input(pixels: np.ndarray | torch.Tensor, spatial_size: int = 128, aspect: Aspect = "pad") -> torch.Tensor:
    """:func:`cxr_preprocessing` (``load=False``) of one (rows, columns) image in [0, 1], on plain tensors.

    The same operations in the same order (intensity to [-1, 1], crop, anti-aliased bilinear resize,
    symmetric pad with -1), hence the same numbers (tested against the MONAI chain), without the
    metadata and invertible trace that a score does not need: for a 128 px image this takes 0.1 ms
    instead of 1.6 ms, which is what lets ``classify`` keep its batched classifier busy.
    """
    if spatial_size < 8:
        raise ValueError(f"spatial_size must be at least 8 pixels, got {spatial_size}")
    if aspect not in ASPECT_POLICIES:
        raise ValueError(f"aspect must be one of {ASPECT_POLICIES}, got {aspect!r}")
    image = torch.as_tensor(pixels, dtype=torch.float32).reshape(1, *pixels.shape[-2:])
    image = torch.clamp(image * 2.0 - 1.0, -1.0, 1.0)  # ScaleIntensityRange(0, 1 -> -1, 1, clip)
    if aspect == "crop":
        image = CenterSpatialCrop(roi_size=(min(image.shape[1:]),) * 2)(image)
        image = image.as_tensor() if isinstance(image, MetaTensor) else image
    shape_in = tuple(int(v) for v in image.shape[1:])
    shape_out = _model_size(shape_in, spatial_size, aspect)
    if all(o < i for o, i in zip(shape_out, shape_in)):  # AntiAliasedResized's own path
        image = anti_aliased_resize(image, shape_out)
    elif any(o < i for o, i in zip(shape_out, shape_in)):  # shrinks one axis only: MONAI's anti-aliased resize
        resized = Resize(shape_out, mode="bilinear", anti_aliasing=True)(image)
        image = resized.as_tensor() if isinstance(resized, MetaTensor) else resized
    elif shape_out != shape_in:  # enlarging: plain bilinear interpolation
        image = torch.nn.functional.interpolate(image[None], size=shape_out, mode="bilinear")[0]
    image = image.float()
    if aspect == "pad" and shape_out != (spatial_size, spatial_size):  # SpatialPad(method="symmetric", value=-1)
        rows, columns = spatial_size - shape_out[0], spatial_size - shape_out[1]
        padding = (columns // 2, columns - columns // 2, rows // 2, rows - rows // 2)
        image = torch.nn.functional.pad(image, padding, mode="constant", value=-1.0)
    return image.contiguous()

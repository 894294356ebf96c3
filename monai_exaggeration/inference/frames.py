"""From generator outputs at model resolution to the frames a radiologist sees.

* :func:`select_bins`: which target bins a series shows (all N by default, a range, or K of them).
* :func:`to_source_grid`: model-size maps back onto the source's pixel grid through the inverse of
  the preprocessing (:func:`monai_exaggeration.transforms.cxr_preprocessing`), so the same geometry
  (resize, pad or crop) is undone that was applied.
* :func:`full_resolution_frames`: the source image plus the *counterfactual change* carried to the
  source grid, ``x + up(G(x, b) - G(x, b_src))``: the generator's reconstruction error (blur at model
  resolution) cancels, and the radiologist keeps the original detail everywhere the explainer did
  not change anything.
* :func:`warped_frame`: for a deformation explainer, the full-resolution source *warped* by the
  displacement carried to the source grid (its vectors rescaled to source pixels), plus the
  intensity term carried as above: as sharp as the source at any size.
"""

from __future__ import annotations

from typing import Literal, get_args

import numpy as np
import torch
import torch.nn.functional as F
from monai.data import MetaTensor
from monai.transforms import Compose

from monai_exaggeration.binning import check_num_bins
from monai_exaggeration.transforms.cxr import model_region, model_scale

__all__ = [
    "RESOLUTIONS",
    "Resolution",
    "full_resolution_frames",
    "select_bins",
    "source_field",
    "to_source_grid",
    "warped_frame",
]

#: ``source``: frames on the source's pixel matrix; ``model``: the generator's frames as they are.
Resolution = Literal["source", "model"]
RESOLUTIONS: tuple[str, ...] = get_args(Resolution)


def select_bins(num_bins: int, first: int = 0, last: int | None = None, num_frames: int | None = None) -> list[int]:
    """Target bins of a series: ``first..last`` (default all ``0..N-1``), or ``num_frames`` of them evenly spaced.

    Bins are integers, so at most ``last - first + 1`` frames exist; both ends are always included.
    """
    check_num_bins(num_bins)
    last = num_bins - 1 if last is None else int(last)
    first = int(first)
    if not 0 <= first < last <= num_bins - 1:
        raise ValueError(
            f"bin range {first}..{last} is invalid for {num_bins} bins: need 0 <= first < last <= {num_bins - 1}"
        )
    available = last - first + 1
    if num_frames is None:
        return list(range(first, last + 1))
    if (
        isinstance(num_frames, bool)
        or not isinstance(num_frames, (int, np.integer))
        or not 2 <= num_frames <= available
    ):
        raise ValueError(
            f"num_frames must be an integer from 2 to {available} (the bins {first}..{last}), got {num_frames!r}"
        )
    return [int(b) for b in np.rint(np.linspace(first, last, int(num_frames))).astype(int)]


def to_source_grid(maps: torch.Tensor, reference: MetaTensor, preprocessing: Compose) -> torch.Tensor:
    """Map model-size ``maps`` (K, S, S) onto the source grid of ``reference``: (K, rows, columns).

    ``reference`` is the output of ``preprocessing`` for the source image (it records the applied
    spatial transforms); the K maps are carried as K channels through ``preprocessing.inverse``.
    Values are interpolated, not rescaled (intensity transforms are not inverted).
    """
    if maps.ndim != 3 or tuple(maps.shape[1:]) != tuple(reference.shape[1:]):
        raise ValueError(f"maps must be (K, {reference.shape[1]}, {reference.shape[2]}), got {tuple(maps.shape)}")
    carried = MetaTensor(maps.detach().float().cpu(), meta=dict(reference.meta))
    carried.applied_operations = [dict(op) for op in reference.applied_operations]
    restored = preprocessing.inverse({"image": carried})["image"]
    return torch.as_tensor(restored.as_tensor() if isinstance(restored, MetaTensor) else restored).float()


def full_resolution_frames(
    source: np.ndarray,
    frames: torch.Tensor,
    reconstruction: torch.Tensor,
    reference: MetaTensor,
    preprocessing: Compose,
) -> np.ndarray:
    """``clip(source + up((frames - reconstruction) / 2), 0, 1)`` as (K, rows, columns) float32.

    ``source`` is the [0, 1] source image (rows, columns); ``frames`` (K, S, S) and ``reconstruction``
    (S, S) are generator outputs in the model range [-1, 1] (hence the division by 2 into display
    units).
    """
    change = (frames.float() - reconstruction.float()[None]) / 2.0
    result = to_source_grid(change, reference, preprocessing).numpy()  # float32, owned: computed in place
    if result.shape[1:] != source.shape:
        raise ValueError(f"inverse preprocessing gave {result.shape[1:]}, the source is {source.shape}")
    result += source[None]
    return np.clip(result, 0.0, 1.0, out=result)


def source_field(maps: torch.Tensor, shape: tuple[int, int], aspect: str, rows: slice) -> torch.Tensor:
    """Model-grid ``maps`` (C, S, S) interpolated (bilinear, edges held) at the pixels of source ``rows`` of a
    source of ``shape``, as the inverse preprocessing carries them (:func:`to_source_grid`), without
    building the whole source grid: (C, len(rows), columns). Pixels that the ``crop`` policy cut away get 0."""
    size = maps.shape[-1]
    (start_r, start_c), (extent_r, extent_c), (model_r, model_c), (content_r, content_c) = model_region(
        shape, size, aspect
    )
    content = maps[None, :, model_r : model_r + content_r, model_c : model_c + content_c].float()
    first, last, _ = rows.indices(shape[0])
    source_rows = torch.arange(first, last, dtype=torch.float32)
    source_columns = torch.arange(shape[1], dtype=torch.float32)
    # centre of source pixel p in the region -> model pixel (p + 0.5) * content / extent - 0.5; normalised
    # for grid_sample (align_corners=False): (2 m + 1) / content - 1 = 2 (p + 0.5) / extent - 1
    y = 2.0 * (source_rows - start_r + 0.5) / extent_r - 1.0
    x = 2.0 * (source_columns - start_c + 0.5) / extent_c - 1.0
    grid = torch.stack(torch.meshgrid(y, x, indexing="ij")[::-1], dim=-1)[None]  # (1, h, W, 2) as (x, y)
    values = F.grid_sample(content, grid, mode="bilinear", padding_mode="border", align_corners=False)[0]
    if aspect == "crop":  # outside the kept square: nothing was carried there
        inside = ((source_rows >= start_r) & (source_rows < start_r + extent_r))[:, None] & (
            (source_columns >= start_c) & (source_columns < start_c + extent_c)
        )[None, :]
        values = values * inside
    return values


def warped_frame(
    source: np.ndarray,
    displacement: torch.Tensor,
    intensity: torch.Tensor | None,
    aspect: str,
    strip_rows: int = 512,
) -> np.ndarray:
    """One frame of a deformation explainer at source resolution, (rows, columns) float32 in [0, 1].

    ``source`` (rows, columns) in [0, 1]; ``displacement`` (2, S, S) in model pixels (rows, columns);
    ``intensity`` (S, S) in the model range or None; ``aspect`` the preprocessing's policy. The
    displacement is interpolated onto the source grid as the inverse preprocessing would carry it,
    rescaled to source pixels, and the full-resolution pixels are resampled as MONAI's ``Warp`` does
    (bilinear, border; pixel coordinates normalised with ``align_corners=True``), ``strip_rows`` output
    rows at a time so that memory stays bounded on a very large film. The intensity term is added in
    display units.
    """
    if not displacement.any() and (intensity is None or not intensity.any()):
        return np.array(source, dtype=np.float32)  # no change (the source's own bin): the source, bit for bit
    shape = tuple(source.shape)
    scale = model_scale(shape, displacement.shape[-1], aspect)
    maps = displacement if intensity is None else torch.cat([displacement, intensity[None]])
    image = torch.from_numpy(np.ascontiguousarray(source, dtype=np.float32))[None, None]
    frame = np.empty(shape, dtype=np.float32)
    columns = torch.arange(shape[1], dtype=torch.float32)
    for first in range(0, shape[0], strip_rows):
        rows = slice(first, min(shape[0], first + strip_rows))
        field = source_field(maps, shape, aspect, rows)  # (2 or 3, h, W)
        y = torch.arange(rows.start, rows.stop, dtype=torch.float32)[:, None] + field[0] / scale[0]
        x = columns[None, :] + field[1] / scale[1]
        grid = torch.stack([x * 2.0 / max(shape[1] - 1, 1) - 1.0, y * 2.0 / max(shape[0] - 1, 1) - 1.0], dim=-1)[None]
        strip = F.grid_sample(image, grid, mode="bilinear", padding_mode="border", align_corners=True)[0, 0]
        if intensity is not None:
            strip = strip + field[2] / 2.0  # model range -> display units
        frame[rows] = strip.clamp_(0.0, 1.0).numpy()
    return frame

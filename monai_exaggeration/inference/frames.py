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
from monai.data import MetaTensor
from monai.networks.blocks import Warp
from monai.transforms import Compose

from monai_exaggeration.binning import check_num_bins

__all__ = ["Resolution", "RESOLUTIONS", "select_bins", "to_source_grid", "full_resolution_frames", "warped_frame"]

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


def warped_frame(
    source: np.ndarray,
    displacement: torch.Tensor,
    intensity: torch.Tensor | None,
    reference: MetaTensor,
    preprocessing: Compose,
    scale: tuple[float, float],
) -> np.ndarray:
    """One frame of a deformation explainer at source resolution, (rows, columns) float32 in [0, 1].

    ``source`` (rows, columns) in [0, 1]; ``displacement`` (2, S, S) in model pixels (rows,
    columns); ``intensity`` (S, S) in the model range or None; ``scale``: model pixels per source
    pixel along rows and columns (:func:`~monai_exaggeration.transforms.cxr.model_scale`). The
    displacement is interpolated onto the source grid through the inverse preprocessing, divided by
    ``scale`` and applied to the full-resolution pixels with MONAI's ``Warp`` (bilinear, border).
    """
    if not displacement.any() and (intensity is None or not intensity.any()):
        return np.array(source, dtype=np.float32)  # no change (the source's own bin): the source, bit for bit
    maps = displacement if intensity is None else torch.cat([displacement, intensity[None]])
    carried = to_source_grid(maps, reference, preprocessing)  # (2 or 3, rows, columns)
    if tuple(carried.shape[1:]) != tuple(source.shape):
        raise ValueError(f"inverse preprocessing gave {tuple(carried.shape[1:])}, the source is {source.shape}")
    ddf = carried[None, :2]
    ddf[:, 0] /= float(scale[0])
    ddf[:, 1] /= float(scale[1])
    image = torch.from_numpy(np.ascontiguousarray(source, dtype=np.float32))[None, None]
    frame = Warp(mode="bilinear", padding_mode="border")(image, ddf)[0, 0]
    del ddf
    if intensity is not None:
        frame += carried[2] / 2.0  # model range -> display units
    return frame.clamp_(0.0, 1.0).numpy()

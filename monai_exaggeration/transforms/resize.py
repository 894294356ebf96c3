"""MONAI's anti-aliased ``Resized``, computed only where the interpolation reads: same numbers, bounded memory.

Shrinking a 7000 x 7000 radiograph to the classifier's 128 x 128 with ``Resized(anti_aliasing=True)``
first blurs the *whole* image with a Gaussian of sigma (factor - 1) / 2 (about 27 pixels, a
215-tap kernel; MONAI's ``GaussianSmooth``) and then samples it bilinearly. On one CPU core that
takes about 21 s and 4 GB of extra memory, and the inference does it for the source and for every
frame. The bilinear interpolation reads only two rows and two columns of the blurred image per
output row and column, and the Gaussian is separable, so :class:`AntiAliasedResized` computes the
blurred image at those rows and columns only (a banded matrix product per axis, the same kernel,
the same zero padding), then interpolates them exactly as ``torch.nn.functional.interpolate``
does. The geometry and the invertible trace come from MONAI's ``Resized`` itself (run without
anti-aliasing), so ``Compose.inverse`` is unchanged. Equality with MONAI's result to float rounding
is tested (``tests/test_transforms.py``).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import torch
from monai.data import MetaTensor
from monai.networks.layers.convutils import gaussian_1d
from monai.transforms import Resize, Resized

__all__ = ["AntiAliasedResized", "anti_aliased_resize"]


def _blur_rows(image: torch.Tensor, kernel: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """``image`` (C, H, W) blurred along H with ``kernel`` (zero padding), at the given ``rows`` only: (C, R, W)."""
    height = image.shape[1]
    tail = (kernel.numel() - 1) // 2
    out = torch.empty((image.shape[0], rows.numel(), image.shape[2]), dtype=image.dtype)
    for index, row in enumerate(rows.tolist()):
        low, high = row - tail, row + tail + 1  # the kernel's window, clipped to the image (zeros outside)
        weights = kernel[max(0, -low) : kernel.numel() - max(0, high - height)]
        out[:, index] = torch.einsum("k,ckw->cw", weights, image[:, max(0, low) : min(height, high)])
    return out


def _sample_positions(size_in: int, size_out: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """torch's bilinear (``align_corners=False``) source indices i0, i1 and weight of i1 for each output index."""
    scale = size_in / size_out
    position = ((torch.arange(size_out, dtype=torch.float64) + 0.5) * scale - 0.5).clamp(min=0.0)
    first = position.floor().long().clamp(max=size_in - 1)
    second = (first + 1).clamp(max=size_in - 1)
    return first, second, (position - first).float()


def anti_aliased_resize(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Gaussian anti-aliasing (sigma = (factor - 1) / 2, MONAI's erf kernel truncated at 4 sigma) then
    bilinear interpolation of a (C, H, W) image to ``size``, shrinking both axes. Float32, (C, h, w)."""
    image = torch.as_tensor(image).float()
    (height, width), (rows_out, cols_out) = image.shape[1:], size
    factors = (height / rows_out, width / cols_out)
    kernels = [gaussian_1d(torch.tensor((f - 1.0) / 2.0), truncated=4.0, approx="erf").float() for f in factors]
    r0, r1, wr = _sample_positions(height, rows_out)
    c0, c1, wc = _sample_positions(width, cols_out)
    rows, row_index = torch.unique(torch.cat([r0, r1]), return_inverse=True)
    cols, col_index = torch.unique(torch.cat([c0, c1]), return_inverse=True)
    blurred = _blur_rows(image, kernels[0], rows)  # (C, R, W)
    blurred = _blur_rows(blurred.transpose(1, 2), kernels[1], cols).transpose(1, 2)  # (C, R, C')
    top, bottom = row_index[:rows_out], row_index[rows_out:]
    left, right = col_index[:cols_out], col_index[cols_out:]
    wr, wc = wr[None, :, None], wc[None, None, :]
    upper = blurred[:, top][:, :, left] * (1 - wc) + blurred[:, top][:, :, right] * wc
    lower = blurred[:, bottom][:, :, left] * (1 - wc) + blurred[:, bottom][:, :, right] * wc
    return upper * (1 - wr) + lower * wr


class AntiAliasedResized(Resized):
    """``Resized(mode="bilinear", anti_aliasing=True)`` with the anti-aliasing computed by
    :func:`anti_aliased_resize` when a 2-D image shrinks along both axes (otherwise MONAI's own)."""

    def __init__(self, keys, spatial_size, size_mode: str = "all", allow_missing_keys: bool = False) -> None:
        super().__init__(
            keys,
            spatial_size=spatial_size,
            size_mode=size_mode,
            mode="bilinear",
            anti_aliasing=False,
            allow_missing_keys=allow_missing_keys,
        )

    def __call__(self, data: Mapping[Hashable, Any], lazy: bool | None = None) -> dict[Hashable, Any]:
        originals = {key: data[key] for key in self.key_iterator(data)}
        result = super().__call__(data, lazy=lazy)  # geometry, metadata and the invertible trace
        for key, original in originals.items():
            out = result[key]
            shape_in, shape_out = tuple(original.shape[1:]), tuple(out.shape[1:])
            plain = original.as_tensor() if isinstance(original, MetaTensor) else torch.as_tensor(original)
            if len(shape_in) == 2 and all(o < i for o, i in zip(shape_out, shape_in)):
                values = anti_aliased_resize(plain, shape_out)
            elif any(o < i for o, i in zip(shape_out, shape_in)):  # shrinks one axis only: MONAI's own
                values = Resize(shape_out, mode="bilinear", anti_aliasing=True)(plain)
            else:
                continue  # enlarging: no anti-aliasing, the plain resize is already MONAI's result
            with torch.no_grad():
                out.copy_(torch.as_tensor(values).to(out.dtype))
        return result

"""The deformation explainer: a generator whose output moves what is in the image instead of painting.

G(x, b) predicts a stationary velocity field v(x, b) on a coarse grid (one grid point every
``grid_factor`` model pixels) and, optionally, an intensity term i(x, b) bounded by ``intensity``
(ε · tanh). The frame for target bin b_t of a source whose own bin is b_src is

    frame = Warp(x, φ) + α · up(i(x, b_t) − i(x, b_src)),
    φ = up(DVF2DDF(α · (v(x, b_t) − v(x, b_src))))

(MONAI's ``DVF2DDF`` scaling and squaring makes the displacement smooth and invertible, MONAI's
``Warp`` applies it; ``up`` is a bilinear upsampling whose vectors are scaled to the new grid.) At
b_t = b_src the velocity difference is zero, so the frame is the source; callers replace that frame
by the source itself, bit for bit. α = 1 is the generator's own frame; the calibrated series scales
it (:mod:`monai_exaggeration.methods.calibration`). Because the source is *warped*, a frame can be
made at any resolution from the same field: the inference warps the full-resolution source.

The bin enters only through the conditional batch norms, as in :class:`ExaggerationGenerator`. Two
things differ from the image generator, both needed because a frame is a *difference* of two
bins' outputs: the conditional tables start with noise (``bin_init_std``), so the bins differ from
the first step, and the output layer is not zero-initialised; otherwise the gradients of the two
bins cancel and training never starts.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.networks.blocks import DVF2DDF, Warp
from torch import nn

from monai_exaggeration.binning import check_num_bins
from monai_exaggeration.networks.conditional import as_bin_tensor
from monai_exaggeration.networks.explainer import (
    _check_size,
    _check_widths,
    _GeneratorBlock,
    decode_features,
    encode_images,
)

__all__ = [
    "DeformationGenerator",
    "folding_fraction",
    "jacobian_determinant",
    "upsample_displacement",
]


def upsample_displacement(ddf: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """A displacement field (B, 2, h, w) in pixels of its grid, resampled (bilinear) onto a (H, W)
    grid covering the same image, its vectors scaled to pixels of the new grid: (B, 2, H, W)."""
    size = (int(size[0]), int(size[1]))
    if tuple(ddf.shape[-2:]) == size:
        return ddf
    scale = torch.tensor([size[0] / ddf.shape[-2], size[1] / ddf.shape[-1]], dtype=ddf.dtype, device=ddf.device)
    return F.interpolate(ddf, size=size, mode="bilinear", align_corners=False) * scale.view(1, 2, 1, 1)


def jacobian_determinant(ddf: torch.Tensor) -> torch.Tensor:
    """det(I + ∇u) of a 2-D displacement field u (B, 2, H, W) in pixels (central differences): (B, H, W).

    Where it is ≤ 0 the mapping folds (neighbouring pixels swap order)."""
    d_rows, d_cols = torch.gradient(ddf, dim=(2, 3))
    return (1.0 + d_rows[:, 0]) * (1.0 + d_cols[:, 1]) - d_cols[:, 0] * d_rows[:, 1]


def folding_fraction(ddf: torch.Tensor) -> float:
    """Share of pixels whose Jacobian determinant is ≤ 0."""
    return float((jacobian_determinant(ddf.float()) <= 0).float().mean())


class DeformationGenerator(nn.Module):
    """G(x, b) of the deformation explainer: fields (velocity, optional intensity) on a coarse grid.

    Layout: stem conv3x3; K encoder residual blocks (avg-pool by 2, conditional batch norms, or plain
    ones with ``conditional_encoder=False`` so that one encoding serves every bin); M = K − log2
    (``grid_factor``) decoder blocks (nearest upsampling by 2, conditional batch norms); BN → ReLU →
    conv3x3 to 2 velocity channels (rows, columns) and, when ``intensity`` > 0, one intensity channel.
    Velocities are bounded by ``max_velocity`` × the image side (tanh), intensities by ``intensity``
    in the model range [-1, 1].

    Args:
        in_channels: image channels, 1 for CXR.
        num_bins: number of condition bins N.
        stem_channels: width of the stem conv.
        encoder_channels: output widths of the K encoder blocks.
        decoder_channels: output widths of the M decoder blocks; None mirrors the encoder.
        grid_factor: model pixels per grid point of the fields (a power of 2, at most 2**K).
        image_size: optional; only validated (a multiple of 2**K).
        max_velocity: bound of one bin's velocity, as a fraction of the image side.
        intensity: bound ε of the intensity term (model range); 0 = deformation only.
        integration_steps: scaling-and-squaring steps of ``DVF2DDF``.
        conditional_encoder: False: the encoder ignores the bin (encode once, decode per bin).
        bin_init_std: noise on the initial conditional tables (see the module docstring).
    """

    output = "deformation"

    def __init__(
        self,
        in_channels: int = 1,
        num_bins: int = 10,
        stem_channels: int = 16,
        encoder_channels: Sequence[int] = (32, 64, 128, 256, 256),
        decoder_channels: Sequence[int] | None = None,
        grid_factor: int = 4,
        image_size: int | None = None,
        max_velocity: float = 0.1,
        intensity: float = 0.0,
        integration_steps: int = 7,
        conditional_encoder: bool = True,
        bin_init_std: float = 0.1,
    ) -> None:
        super().__init__()
        self.in_channels = int(in_channels)
        self.num_bins = check_num_bins(num_bins)
        self.stem_channels = int(stem_channels)
        self.encoder_channels = _check_widths("encoder_channels", encoder_channels)
        depth = len(self.encoder_channels)
        grid_factor = int(grid_factor)
        if grid_factor < 1 or grid_factor & (grid_factor - 1) or grid_factor > 2**depth:
            raise ValueError(f"grid_factor must be a power of 2 from 1 to {2**depth}, got {grid_factor}")
        self.grid_factor = grid_factor
        num_up = depth - int(math.log2(grid_factor))
        if decoder_channels is None:
            decoder_channels = tuple(reversed((self.stem_channels, *self.encoder_channels[:-1])))[:num_up]
        self.decoder_channels = tuple(int(w) for w in decoder_channels)
        if len(self.decoder_channels) != num_up or any(w < 1 for w in self.decoder_channels):
            raise ValueError(
                f"decoder_channels needs {num_up} positive widths (grid_factor {grid_factor} with {depth} encoder "
                f"blocks), got {self.decoder_channels}"
            )
        if not 0 < max_velocity <= 1:
            raise ValueError(f"max_velocity must be a fraction of the image side in (0, 1], got {max_velocity}")
        if not 0 <= intensity <= 1:
            raise ValueError(f"intensity must be a bound in [0, 1] (model range), got {intensity}")
        if image_size is not None:
            _check_size(int(image_size), 2**depth, "image_size")
        self.image_size = image_size
        self.max_velocity = float(max_velocity)
        self.intensity = float(intensity)
        self.integration_steps = int(integration_steps)
        self.conditional_encoder = bool(conditional_encoder)
        self.bin_init_std = float(bin_init_std)

        self.stem = nn.Conv2d(self.in_channels, self.stem_channels, 3, padding=1)
        widths = (self.stem_channels, *self.encoder_channels)
        self.encoder = nn.ModuleList(
            _GeneratorBlock(c_in, c_out, self.num_bins, "down", bin_init_std, self.conditional_encoder)
            for c_in, c_out in zip(widths[:-1], widths[1:])
        )
        widths = (self.encoder_channels[-1], *self.decoder_channels)
        self.decoder = nn.ModuleList(
            _GeneratorBlock(c_in, c_out, self.num_bins, "up", bin_init_std)
            for c_in, c_out in zip(widths[:-1], widths[1:])
        )
        self.head_norm = nn.BatchNorm2d(widths[-1])
        self.head = nn.Conv2d(widths[-1], self.field_channels, 3, padding=1)
        nn.init.normal_(self.head.weight, std=0.01)  # small fields at the start, but not zero (see above)
        nn.init.zeros_(self.head.bias)
        self.integrate = DVF2DDF(num_steps=self.integration_steps, mode="bilinear", padding_mode="zeros")
        self.warp = Warp(mode="bilinear", padding_mode="border")

    @property
    def field_channels(self) -> int:
        """2 velocity channels (rows, columns), plus 1 intensity channel when ``intensity`` > 0."""
        return 3 if self.intensity > 0 else 2

    @property
    def scale_factor(self) -> int:
        """Total down-sampling 2**K of the encoder; image sides must be multiples of it."""
        return 2 ** len(self.encoder_channels)

    def config(self) -> dict:
        """Constructor arguments that rebuild this architecture (recorded in explainer files)."""
        return {
            "in_channels": self.in_channels,
            "num_bins": self.num_bins,
            "stem_channels": self.stem_channels,
            "encoder_channels": list(self.encoder_channels),
            "decoder_channels": list(self.decoder_channels),
            "grid_factor": self.grid_factor,
            "image_size": None if self.image_size is None else int(self.image_size),
            "max_velocity": self.max_velocity,
            "intensity": self.intensity,
            "integration_steps": self.integration_steps,
            "conditional_encoder": self.conditional_encoder,
            "bin_init_std": self.bin_init_std,
        }

    # ------------------------------------------------------------------------------------- fields
    def encode(self, x: torch.Tensor, bins: torch.Tensor | int) -> torch.Tensor:
        """Bottleneck features of ``x`` (the bins are ignored with ``conditional_encoder=False``)."""
        return encode_images(self, x, bins)

    def decode(self, h: torch.Tensor, bins: torch.Tensor | int) -> torch.Tensor:
        """Fields (B, C, h, w) from bottleneck features: bounded velocities (grid units), intensities."""
        raw = decode_features(self, h, bins)
        side = torch.tensor(raw.shape[-2:], dtype=raw.dtype, device=raw.device).view(1, 2, 1, 1)
        velocity = torch.tanh(raw[:, :2]) * (self.max_velocity * side)
        if self.intensity > 0:
            return torch.cat([velocity, torch.tanh(raw[:, 2:]) * self.intensity], dim=1)
        return velocity

    def forward(
        self, x: torch.Tensor, bins: torch.Tensor | int, second_bins: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Fields of ``x`` for ``bins``: (B, 2 [+1], H / grid_factor, W / grid_factor).

        With ``second_bins`` (B,): the fields for ``bins`` and for ``second_bins`` concatenated (2B, ...),
        computed in one batch, so they share batch statistics as the frames of a series do; with an
        unconditional encoder ``x`` is encoded once for both."""
        if second_bins is None:
            return self.decode(self.encode(x, bins), bins)
        bins = as_bin_tensor(bins, x.shape[0], self.num_bins, x.device)
        both = torch.cat([bins, as_bin_tensor(second_bins, x.shape[0], self.num_bins, x.device)])
        if self.conditional_encoder:
            return self(torch.cat([x, x]), both)
        h = self.encode(x, bins)
        return self.decode(torch.cat([h, h]), both)

    def field_pair(
        self, x: torch.Tensor, bins_a: torch.Tensor, bins_b: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``self(x, bins_a, bins_b)`` split into the fields for ``bins_a`` and for ``bins_b``."""
        return self(x, bins_a, bins_b).chunk(2)

    # ----------------------------------------------------------------------------------- frames
    def displacement(
        self, fields_target: torch.Tensor, fields_source: torch.Tensor, alpha: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The displacement (B, 2, h, w), in grid pixels, from the source bin's field to the target's,
        its velocity scaled by ``alpha`` (B,) when given."""
        velocity = fields_target[:, :2] - fields_source[:, :2]
        if alpha is not None:
            velocity = velocity * alpha.to(velocity).view(-1, 1, 1, 1)
        return self.integrate(velocity)

    def intensity_change(
        self, fields_target: torch.Tensor, fields_source: torch.Tensor, alpha: torch.Tensor | None = None
    ) -> torch.Tensor | None:
        """The intensity term of the frame (B, 1, h, w) in the model range, or None without one."""
        if fields_target.shape[1] < 3:
            return None
        change = fields_target[:, 2:3] - fields_source[:, 2:3]
        return change if alpha is None else change * alpha.to(change).view(-1, 1, 1, 1)

    def apply(self, image: torch.Tensor, ddf: torch.Tensor, intensity: torch.Tensor | None = None) -> torch.Tensor:
        """``image`` (B, C, H, W) warped by a grid displacement ``ddf`` (carried to the image's grid), plus
        the upsampled ``intensity`` term; clamped to the model range."""
        frame = self.warp(image, upsample_displacement(ddf, image.shape[-2:]))
        if intensity is not None:
            frame = frame + F.interpolate(intensity, size=image.shape[-2:], mode="bilinear", align_corners=False)
        return frame.clamp(-1.0, 1.0)

    def compose(
        self,
        x: torch.Tensor,
        fields_target: torch.Tensor,
        fields_source: torch.Tensor,
        alpha: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(frame, grid displacement): ``x`` moved from the source bin's field to the target bin's."""
        ddf = self.displacement(fields_target, fields_source, alpha)
        return self.apply(x, ddf, self.intensity_change(fields_target, fields_source, alpha)), ddf

    def reconstruct(self, x: torch.Tensor, fields: torch.Tensor) -> torch.Tensor:
        """``x`` under one bin's own field (from the identity): what "reconstruction at b_src" compares to x."""
        return self.apply(x, self.integrate(fields[:, :2]), fields[:, 2:3] if fields.shape[1] > 2 else None)

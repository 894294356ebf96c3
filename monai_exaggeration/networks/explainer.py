"""The explainer GAN: a bin-conditioned encoder-decoder generator and an ordinal projection discriminator.

Both follow the design notes ("The method"), after Singla et al., ICLR 2020 / MedIA 2023; widths,
depth and resolution are configurable so that a small CPU profile uses the same code.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from monai_exaggeration.binning import check_num_bins
from monai_exaggeration.networks.conditional import (
    ConditionalBatchNorm2d,
    as_bin_tensor,
)

__all__ = ["ExaggerationDiscriminator", "ExaggerationGenerator", "count_parameters"]


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameter elements of ``module`` (spectral-norm power-iteration buffers excluded)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def _check_widths(name: str, widths: Sequence[int], minimum: int = 1) -> tuple[int, ...]:
    widths = tuple(int(w) for w in widths)
    if len(widths) < minimum or any(w < 1 for w in widths):
        raise ValueError(f"{name} must hold at least {minimum} positive widths, got {widths}")
    return widths


def _check_size(size: int, factor: int, what: str) -> None:
    if size < factor or size % factor:
        raise ValueError(f"{what} must be a positive multiple of {factor}, got {size}")


# ----------------------------------------------------------------------------------------- generator
def encode_images(generator: nn.Module, x: torch.Tensor, bins: torch.Tensor | int) -> torch.Tensor:
    """Stem and encoder blocks of a conditional generator (``stem``, ``encoder``, ``in_channels``,
    ``scale_factor``, ``num_bins``), with the input checked: bottleneck features of ``x`` under ``bins``."""
    if x.ndim != 4 or x.shape[1] != generator.in_channels:
        raise ValueError(f"expected images of shape (B, {generator.in_channels}, H, W), got {tuple(x.shape)}")
    _check_size(x.shape[-2], generator.scale_factor, "image height")
    _check_size(x.shape[-1], generator.scale_factor, "image width")
    bins = as_bin_tensor(bins, x.shape[0], generator.num_bins, x.device)
    h = generator.stem(x)
    for block in generator.encoder:
        h = block(h, bins)
    return h


def decode_features(generator: nn.Module, h: torch.Tensor, bins: torch.Tensor | int) -> torch.Tensor:
    """Decoder blocks and head (BN -> ReLU -> conv) of a conditional generator, before its output activation."""
    bins = as_bin_tensor(bins, h.shape[0], generator.num_bins, h.device)
    for block in generator.decoder:
        h = block(h, bins)
    return generator.head(F.relu(generator.head_norm(h)))


class _UnconditionalBatchNorm2d(nn.Module):
    """A plain batch norm with the conditional norm's call signature (the bins are ignored). It wraps the
    ``BatchNorm2d`` (as the conditional norm does), so the series' grouped statistics apply to it alike."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(num_features)

    def forward(self, x: torch.Tensor, bins: torch.Tensor | None = None) -> torch.Tensor:
        return self.norm(x)


def _norm(channels: int, num_bins: int, init_std: float, conditional: bool) -> nn.Module:
    if conditional:
        return ConditionalBatchNorm2d(channels, num_bins, init_std=init_std)
    return _UnconditionalBatchNorm2d(channels)


class _GeneratorBlock(nn.Module):
    """Pre-activation residual block with conditional BN, resampling by 2 (``"down"`` or ``"up"``).

    main: CBN -> ReLU -> resample -> conv3x3 -> CBN -> ReLU -> conv3x3;
    shortcut: resample -> conv1x1. ``conditional=False`` uses plain batch norms (the bins are ignored);
    ``init_std`` is passed to the conditional norms.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        num_bins: int,
        resample: str,
        init_std: float = 0.0,
        conditional: bool = True,
    ) -> None:
        super().__init__()
        if resample not in ("down", "up"):
            raise ValueError(f"resample must be 'down' or 'up', got {resample!r}")
        self.resample = resample
        self.norm1 = _norm(in_channels, num_bins, init_std, conditional)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)  # bias cancelled by norm2
        self.norm2 = _norm(out_channels, num_bins, init_std, conditional)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.shortcut = nn.Conv2d(in_channels, out_channels, 1)

    def _resample(self, x: torch.Tensor) -> torch.Tensor:
        if self.resample == "down":
            return F.avg_pool2d(x, 2)
        return F.interpolate(x, scale_factor=2.0, mode="nearest")

    def forward(self, x: torch.Tensor, bins: torch.Tensor) -> torch.Tensor:
        h = self.conv1(self._resample(F.relu(self.norm1(x, bins))))
        h = self.conv2(F.relu(self.norm2(h, bins)))
        return h + self.shortcut(self._resample(x))


class ExaggerationGenerator(nn.Module):
    """Encoder-decoder generator G(x, b): an image and a target bin give the exaggerated image.

    Layout: stem conv3x3 (``in_channels`` -> ``stem_channels``); K encoder residual blocks (avg-pool
    by 2); K decoder residual blocks (nearest-neighbour upsampling by 2); BN -> ReLU -> conv3x3 ->
    tanh back to ``in_channels``. The bin enters *only* through the conditional batch norms of the
    2K residual blocks (two per block). No spectral norm.

    Interpretations of the design notes:
      * Stem: the notes write "BN -> ReLU -> conv3x3". A BN -> ReLU in front of the first conv would
        act on the raw 1-channel image and zero every pixel below the batch mean, so the stem is the
        conv alone; its normalisation and activation are the (conditional) pre-activation of the
        first encoder block, which gives the same BN -> ReLU -> conv chain from there on.
      * Decoder widths (mirror): decoder block i undoes encoder block K+1-i, i.e. the default
        encoder 64 -> 128 -> 256 -> 512 -> 1024 -> 1024 is followed by the decoder
        1024 -> 1024 -> 512 -> 256 -> 128 -> 64 (``decoder_channels = (1024, 512, 256, 128, 64)``,
        ending at the stem width).
      * Convolutions directly followed by a batch norm have no bias (it would be cancelled).
      * ``residual=True`` (an option for short CPU runs, see docs/training.md, "CPU profile"): output =
        clamp(x + s * tanh(decoder(x, b)), -1, 1) with a learnable scalar s initialised to 0, so G
        is the exact identity at initialisation (for x in [-1, 1]). s receives gradient at once and
        the other parameters as soon as s != 0. Where x + delta leaves [-1, 1] the clamp stops the
        gradient of that pixel.

    Args:
        in_channels: image channels (input and output), 1 for CXR.
        num_bins: number of condition bins N.
        stem_channels: width of the stem conv.
        encoder_channels: output widths of the K encoder blocks (K = its length).
        decoder_channels: output widths of the K decoder blocks; ``None`` mirrors the encoder.
        image_size: optional; only validated (must be a multiple of 2**K).
        residual: predict a residual on top of ``x`` (see above) instead of the image itself.
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_bins: int = 10,
        stem_channels: int = 64,
        encoder_channels: Sequence[int] = (128, 256, 512, 1024, 1024),
        decoder_channels: Sequence[int] | None = None,
        image_size: int | None = None,
        residual: bool = False,
    ) -> None:
        super().__init__()
        self.in_channels = int(in_channels)
        self.num_bins = check_num_bins(num_bins)
        self.stem_channels = int(stem_channels)
        self.encoder_channels = _check_widths("encoder_channels", encoder_channels)
        if decoder_channels is None:
            decoder_channels = (*reversed(self.encoder_channels[:-1]), self.stem_channels)
        self.decoder_channels = _check_widths("decoder_channels", decoder_channels)
        if len(self.decoder_channels) != len(self.encoder_channels):
            raise ValueError(
                f"decoder_channels needs {len(self.encoder_channels)} widths (one per encoder block), "
                f"got {self.decoder_channels}"
            )
        self.residual = bool(residual)
        if image_size is not None:
            _check_size(int(image_size), self.scale_factor, "image_size")
        self.image_size = image_size

        self.stem = nn.Conv2d(self.in_channels, self.stem_channels, 3, padding=1)
        widths = (self.stem_channels, *self.encoder_channels)
        self.encoder = nn.ModuleList(
            _GeneratorBlock(c_in, c_out, self.num_bins, "down") for c_in, c_out in zip(widths[:-1], widths[1:])
        )
        widths = (self.encoder_channels[-1], *self.decoder_channels)
        self.decoder = nn.ModuleList(
            _GeneratorBlock(c_in, c_out, self.num_bins, "up") for c_in, c_out in zip(widths[:-1], widths[1:])
        )
        self.head_norm = nn.BatchNorm2d(self.decoder_channels[-1])
        self.head = nn.Conv2d(self.decoder_channels[-1], self.in_channels, 3, padding=1)
        if self.residual:
            self.residual_scale = nn.Parameter(torch.zeros(()))

    def config(self) -> dict:
        """Constructor arguments that rebuild this architecture (recorded in explainer checkpoints)."""
        return {
            "in_channels": self.in_channels,
            "num_bins": self.num_bins,
            "stem_channels": self.stem_channels,
            "encoder_channels": list(self.encoder_channels),
            "decoder_channels": list(self.decoder_channels),
            "image_size": None if self.image_size is None else int(self.image_size),
            "residual": self.residual,
        }

    @property
    def num_blocks(self) -> int:
        """K, the number of encoder (and decoder) blocks."""
        return len(self.encoder_channels)

    @property
    def scale_factor(self) -> int:
        """Total down-sampling 2**K; image sides must be multiples of it."""
        return 2 ** len(self.encoder_channels)

    def bottleneck_shape(self, image_size: int | Sequence[int]) -> tuple[int, int, int]:
        """(C, H, W) of the encoder output for a square side or an (H, W) image size."""
        height, width = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        _check_size(int(height), self.scale_factor, "image height")
        _check_size(int(width), self.scale_factor, "image width")
        return self.encoder_channels[-1], int(height) // self.scale_factor, int(width) // self.scale_factor

    def encode(self, x: torch.Tensor, bins: torch.Tensor | int) -> torch.Tensor:
        """Bottleneck features (B, C_K, H / 2**K, W / 2**K) of ``x`` under target ``bins``."""
        return encode_images(self, x, bins)

    def decode(self, h: torch.Tensor, bins: torch.Tensor | int) -> torch.Tensor:
        """Decoder and head up to the pre-tanh output (B, in_channels, H, W)."""
        return decode_features(self, h, bins)

    def forward(self, x: torch.Tensor, target_bins: torch.Tensor | int) -> torch.Tensor:
        """Exaggerated image in [-1, 1], same shape as ``x``; ``target_bins``: (B,) int or one int."""
        out = torch.tanh(self.decode(self.encode(x, target_bins), target_bins))
        if self.residual:
            return torch.clamp(x + self.residual_scale * out, -1.0, 1.0)
        return out


# ------------------------------------------------------------------------------------- discriminator
class _DiscriminatorBlock(nn.Module):
    """Spectral-normed residual block of the discriminator.

    Standard: ReLU -> conv3x3 -> ReLU -> conv3x3 [-> avg-pool]; shortcut [avg-pool ->] conv1x1 when the
    width changes or the block down-samples, identity otherwise.
    ``optimized`` (first block, acting on the image): conv3x3 -> ReLU -> conv3x3 -> avg-pool, shortcut
    avg-pool -> conv1x1: no pre-activation, so the raw image is never passed through a ReLU.
    """

    def __init__(self, in_channels: int, out_channels: int, downsample: bool, optimized: bool = False) -> None:
        super().__init__()
        self.downsample = downsample
        self.optimized = optimized
        self.conv1 = spectral_norm(nn.Conv2d(in_channels, out_channels, 3, padding=1))
        self.conv2 = spectral_norm(nn.Conv2d(out_channels, out_channels, 3, padding=1))
        learnable = optimized or downsample or in_channels != out_channels
        self.shortcut = spectral_norm(nn.Conv2d(in_channels, out_channels, 1)) if learnable else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x if self.optimized else F.relu(x)
        h = self.conv2(F.relu(self.conv1(h)))
        skip = x
        if self.downsample:
            h = F.avg_pool2d(h, 2)
            skip = F.avg_pool2d(skip, 2)
        return h + self.shortcut(skip)


class ExaggerationDiscriminator(nn.Module):
    """Projection discriminator D(x, b) with the ordinal (thermometer) bin embedding; returns (B,) scores.

    Residual blocks with spectral norm on every conv, linear and embedding; the first block is an
    "optimized" down block (no pre-activation), the following ones down-sample by 2 except the last,
    which keeps the resolution. Then ReLU and global *sum* pooling give the feature phi(x) (B, C).
    Score = psi(phi) + <e(b), phi> with psi a spectral-normed linear layer C -> 1 and e(b) the sum of
    the embeddings of the N - 1 thermometer entries of b (entry k is 1 if k < b) looked up in ONE
    shared spectral-normed 2-row table V, i.e. e(b) = (N - 1 - b) V0 + b V1: linear in the bin.
    Real images are scored with their source bin, generated ones with their target bin.

    Args:
        in_channels: image channels.
        num_bins: number of condition bins N.
        channels: block widths; the default has 6 blocks and 5 down-samplings (128 px -> 4x4,
            256 px -> 8x8 features). Image sides must be multiples of 2**(len(channels) - 1).
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_bins: int = 10,
        channels: Sequence[int] = (64, 128, 256, 512, 1024, 1024),
    ) -> None:
        super().__init__()
        self.in_channels = int(in_channels)
        self.num_bins = check_num_bins(num_bins)
        self.channels = _check_widths("channels", channels, minimum=2)
        blocks = [_DiscriminatorBlock(self.in_channels, self.channels[0], downsample=True, optimized=True)]
        for index, (c_in, c_out) in enumerate(zip(self.channels[:-1], self.channels[1:]), start=1):
            blocks.append(_DiscriminatorBlock(c_in, c_out, downsample=index < len(self.channels) - 1))
        self.blocks = nn.Sequential(*blocks)
        self.linear = spectral_norm(nn.Linear(self.channels[-1], 1))
        self.embedding = spectral_norm(nn.Embedding(2, self.channels[-1]))
        thresholds = torch.arange(self.num_bins - 1)
        self.register_buffer("thresholds", thresholds, persistent=False)

    @property
    def scale_factor(self) -> int:
        """Total down-sampling; image sides must be multiples of it."""
        return 2 ** (len(self.channels) - 1)

    def thermometer(self, bins: torch.Tensor) -> torch.Tensor:
        """Thermometer code (B, N - 1) of the bins: entry k is 1 if k < b."""
        return (self.thresholds[None, :] < bins[:, None]).to(torch.long)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """phi(x): ReLU then global sum pooling of the last block, shape (B, C)."""
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"expected images of shape (B, {self.in_channels}, H, W), got {tuple(x.shape)}")
        _check_size(x.shape[-2], self.scale_factor, "image height")
        _check_size(x.shape[-1], self.scale_factor, "image width")
        return F.relu(self.blocks(x)).sum(dim=(2, 3))

    def forward(self, x: torch.Tensor, bins: torch.Tensor | int) -> torch.Tensor:
        """Scores (B,) of images ``x`` conditioned on ``bins`` ((B,) int or one int)."""
        bins = as_bin_tensor(bins, x.shape[0], self.num_bins, x.device)
        phi = self.features(x)
        projection = self.embedding(self.thermometer(bins)).sum(dim=1)
        return self.linear(phi).squeeze(1) + (projection * phi).sum(dim=1)

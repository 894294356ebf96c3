"""A chest X-ray autoencoder: the latent space in which Latent Shift (Cohen et al., MIDL 2021) moves an image.

:class:`CXRAutoEncoder` is MONAI's :class:`~monai.networks.nets.AutoEncoder` with a compressive
bottleneck (the last encoder stage has few channels: 128 px -> 16 x 8 x 8 = 1,024 numbers by
default) and a ``tanh`` output in the model range [-1, 1]. :meth:`~CXRAutoEncoder.encode_latent` and
:meth:`~CXRAutoEncoder.decode_latent` expose E and D separately, which Latent Shift needs.

Files: training (``bundles/cxr_autoencoder/configs/train.json``) saves ``{"model": state dict,
"autoencoder": record}`` through MONAI's ``CheckpointSaver``, with :class:`AutoEncoderRecord` in the
``save_dict``; the record holds the constructor arguments, so :func:`load_autoencoder` rebuilds the
network from the file alone.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from monai.networks.nets import AutoEncoder
from torch import nn

__all__ = ["AutoEncoderRecord", "CXRAutoEncoder", "load_autoencoder"]

RECORD_FORMAT = 1


class CXRAutoEncoder(AutoEncoder):
    """2-D, one-channel MONAI ``AutoEncoder`` for ``image_size`` px CXRs in [-1, 1]; output through ``tanh``.

    Args:
        image_size: the side of the (square) images it was trained on (recorded, checked at use).
        channels: output channels of the encoder stages; the last one is the latent's channels.
        strides: stride of each stage (the latent side is ``image_size / prod(strides)``).
        num_res_units: residual units per stage (MONAI's ``num_res_units``).
    """

    def __init__(
        self,
        image_size: int = 128,
        channels: Sequence[int] = (16, 32, 64, 16),
        strides: Sequence[int] = (2, 2, 2, 2),
        num_res_units: int = 1,
    ) -> None:
        super().__init__(
            spatial_dims=2,
            in_channels=1,
            out_channels=1,
            channels=list(channels),
            strides=list(strides),
            num_res_units=int(num_res_units),
        )
        scale = 1
        for stride in strides:
            scale *= int(stride)
        if int(image_size) % scale:
            raise ValueError(f"image_size {image_size} is not a multiple of the total stride {scale}")
        self.image_size = int(image_size)
        self._config = {
            "image_size": int(image_size),
            "channels": [int(c) for c in channels],
            "strides": [int(s) for s in strides],
            "num_res_units": int(num_res_units),
        }
        self.latent_shape = (int(channels[-1]), self.image_size // scale, self.image_size // scale)

    def config(self) -> dict[str, Any]:
        """The constructor arguments (recorded in files)."""
        return dict(self._config)

    def encode_latent(self, images: torch.Tensor) -> torch.Tensor:
        """E(x): (B, 1, S, S) in [-1, 1] -> latent (B, *latent_shape)."""
        return self.intermediate(self.encode(images))

    def decode_latent(self, latent: torch.Tensor) -> torch.Tensor:
        """D(z): latent -> (B, 1, S, S) in (-1, 1)."""
        return torch.tanh(self.decode(latent))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.decode_latent(self.encode_latent(images))


class AutoEncoderRecord:
    """The ``autoencoder`` entry of a checkpoint (put it in the ``CheckpointSaver`` ``save_dict``):
    the network's class and constructor arguments, so the file loads with no architecture flags."""

    def __init__(self, network: nn.Module) -> None:
        self.network = network.module if hasattr(network, "module") else network

    def state_dict(self) -> dict[str, Any]:
        return {"format": RECORD_FORMAT, "class": "CXRAutoEncoder", "config": self.network.config()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if dict(state.get("config", {})) != self.network.config():
            raise ValueError(
                f"the checkpoint's autoencoder has {state.get('config')}, this network {self.network.config()}"
            )


def load_autoencoder(path: str | os.PathLike, device: str | torch.device | None = None) -> CXRAutoEncoder:
    """The autoencoder saved in ``path`` (architecture from its record), frozen, in eval mode.

    Raises ``FileNotFoundError`` or ``ValueError`` with a message saying what to do.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"autoencoder weights not found: {path}. Train them with bundles/cxr_autoencoder "
            "(see its docs/README.md) or point autoencoder_weights at a file"
        )
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unreadable file gets the same message
        raise ValueError(f"{path} is not a readable autoencoder file ({type(error).__name__}: {error})") from None
    record = content.get("autoencoder") if isinstance(content, dict) else None
    if not isinstance(record, Mapping) or "config" not in record or "model" not in content:
        raise ValueError(
            f"{path} is not an autoencoder file: it needs 'model' and 'autoencoder' entries "
            "(written by bundles/cxr_autoencoder/configs/train.json)"
        )
    network = CXRAutoEncoder(**dict(record["config"]))
    network.load_state_dict(content["model"])
    for parameter in network.parameters():
        parameter.requires_grad_(False)
    return network.to(device or "cpu").eval()

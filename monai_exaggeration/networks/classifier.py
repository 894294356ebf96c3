"""The black-box classifier being explained: frozen weights, eval-mode normalisation, differentiable input."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal, get_args

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["Activation", "BlackBoxClassifier", "ACTIVATIONS", "classifier_fingerprint", "load_state_dict_file"]

Activation = Literal["sigmoid", "softmax", "none"]
ACTIVATIONS: tuple[str, ...] = get_args(Activation)


def load_state_dict_file(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Load a state dict saved directly or inside a MONAI ``CheckpointSaver`` dict (``{"model": ...}``, ``{"generator": ...}``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"weights not found: {path} -- train them with the model's bundle (configs/train.json of "
            "bundles/cxr_classifier, cxr_segmentation, cxr_encoder or cxr) or give the path of a state dict"
        )
    state = torch.load(path, map_location=map_location, weights_only=True)
    for key in ("model", "network", "generator", "state_dict"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            return state[key]
    return state


class _CallableModule(nn.Module):
    """Wrap any Python callable (tensor -> tensor) so it composes with torch modules."""

    def __init__(self, function: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.function = function

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.function(images)


class BlackBoxClassifier(nn.Module):
    """Posterior f(x) of one finding from any classifier, usable as a frozen, differentiable black box.

    Only the output value and its gradient with respect to the input are used downstream. The
    wrapped model's weights never require gradients and its normalisation layers stay in eval mode
    even if ``.train()`` is called on a parent module.

    Args:
        model: a torch module or any callable mapping (B, C, H, W) images in [-1, 1] to logits.
        output: index of the target output, or its name (looked up in ``labels``).
        activation: ``"sigmoid"`` (multi-label), ``"softmax"`` (multi-class) or ``"none"`` (already a probability).
        labels: output names, needed when ``output`` is a name.
        input_size: if given, images are resized (bilinear, differentiable) to this square size
            before the model, so a classifier trained at one resolution can judge images of another.
    """

    def __init__(
        self,
        model: nn.Module | Callable[[torch.Tensor], torch.Tensor],
        output: int | str = 0,
        activation: Activation = "sigmoid",
        labels: Sequence[str] | None = None,
        input_size: int | None = None,
    ) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
        self.model = model if isinstance(model, nn.Module) else _CallableModule(model)
        self.activation = activation
        self.labels = list(labels) if labels is not None else None
        self.output_index = self._resolve_output(output)
        self.input_size = input_size
        for parameter in self.model.parameters():  # not requires_grad_(): ScriptModules refuse it
            parameter.requires_grad_(False)
        self.model.eval()

    def _resolve_output(self, output: int | str) -> int:
        if isinstance(output, int):
            return output
        if not self.labels or output not in self.labels:
            raise ValueError(f"output {output!r} is not among the classifier labels {self.labels}")
        return self.labels.index(output)

    def train(self, mode: bool = True) -> BlackBoxClassifier:
        """Keep the black box in eval mode whatever the caller asks (frozen BN statistics, no dropout)."""
        super().train(False)
        return self

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """All raw outputs, shape (B, K)."""
        if self.input_size is not None and tuple(images.shape[-2:]) != (self.input_size, self.input_size):
            size = (self.input_size, self.input_size)
            images = F.interpolate(images, size=size, mode="bilinear", align_corners=False, antialias=True)
        out = self.model(images)
        return out.reshape(out.shape[0], -1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Posterior of the target finding, shape (B,), in [0, 1]; differentiable w.r.t. ``images``."""
        logits = self.logits(images)
        if self.activation == "sigmoid":
            probs = torch.sigmoid(logits)
        elif self.activation == "softmax":
            probs = torch.softmax(logits, dim=1)
        else:
            probs = logits
        return probs[:, self.output_index]

    @classmethod
    def from_state_dict(
        cls, network: nn.Module, weights: str | os.PathLike, map_location: str | torch.device = "cpu", **kwargs
    ) -> BlackBoxClassifier:
        """Load ``weights`` (a state dict or a MONAI checkpoint) into ``network`` and wrap it."""
        network.load_state_dict(load_state_dict_file(weights, map_location))
        return cls(network, **kwargs)

    @classmethod
    def from_torchscript(
        cls, path: str | os.PathLike, map_location: str | torch.device = "cpu", **kwargs
    ) -> BlackBoxClassifier:
        """Wrap a TorchScript classifier file."""
        if not Path(path).is_file():
            raise FileNotFoundError(f"TorchScript classifier not found: {path}")
        return cls(torch.jit.load(str(path), map_location=map_location), **kwargs)


def classifier_fingerprint(classifier: torch.nn.Module) -> str:
    """Short hash of the classifier's weights and buffers (identifies the black box in caches)."""
    digest = hashlib.sha1()
    for name, tensor in sorted(classifier.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]

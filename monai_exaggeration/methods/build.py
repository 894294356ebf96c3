"""Build the baseline methods from the inference settings (``method``, ``method_options``, ``autoencoder_weights``)."""

from __future__ import annotations

import inspect
import os
from typing import Any

import torch
from torch import nn

from monai_exaggeration.methods.exaggeration import ProgressiveExaggeration
from monai_exaggeration.methods.gradient_ascent import PixelGradientAscent
from monai_exaggeration.methods.latent_shift import LatentShift

__all__ = ["METHOD_NAMES", "build_baseline", "check_method"]

#: Every ``method`` value the inference accepts; the first is the default.
METHOD_NAMES = (ProgressiveExaggeration.name, LatentShift.name, PixelGradientAscent.name)


def check_method(method: str, options: dict | None) -> dict[str, Any]:
    """Validate ``method`` and its ``method_options`` before anything is loaded; return the options."""
    if method not in METHOD_NAMES:
        raise ValueError(f"method must be one of {list(METHOD_NAMES)}, got {method!r}")
    options = dict(options or {})
    if method == ProgressiveExaggeration.name:
        if options:
            raise ValueError(f"method_options are for the baselines; progressive_exaggeration takes none, got {options}")
        return options
    cls = LatentShift if method == LatentShift.name else PixelGradientAscent
    accepted = [name for name in inspect.signature(cls).parameters if name not in ("autoencoder", "classifier", "weights")]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(f"method_options for {method} accept {accepted}, got unknown {unknown}")
    return options


def build_baseline(
    method: str,
    classifier: nn.Module,
    options: dict | None,
    autoencoder_weights: str | os.PathLike | None,
    device: torch.device,
    weights_id: str = "",
) -> LatentShift | PixelGradientAscent:
    """The ``latent_shift`` or ``gradient_ascent`` method against ``classifier``.

    Latent Shift loads its autoencoder from ``autoencoder_weights`` (``FileNotFoundError``/``ValueError``
    with what to do when it is missing or not an autoencoder file).
    """
    options = check_method(method, options)
    if method == PixelGradientAscent.name:
        return PixelGradientAscent(classifier, **options)
    if method != LatentShift.name:
        raise ValueError(f"{method!r} is not a baseline method")
    if not autoencoder_weights:
        raise ValueError("method latent_shift needs autoencoder_weights (bundles/cxr_autoencoder/models/autoencoder.pt)")
    from monai_exaggeration.networks.autoencoder import load_autoencoder

    autoencoder = load_autoencoder(autoencoder_weights, device)
    return LatentShift(autoencoder, classifier, weights=weights_id, **options)

"""Counterfactual methods the inference and the evaluation can run (``method`` in inference.json), by registry
(:mod:`.registry`):

* ``progressive_exaggeration`` — the trained explainer (the project's method, the default);
* ``latent_shift`` — Latent Shift (Cohen et al., MIDL 2021) in the autoencoder of ``bundles/cxr_autoencoder``;
* ``gradient_ascent`` — pixel-space gradient ascent on the classifier.

All return a :class:`MethodSeries`; the workflow writes every method's series the same way. Series
operations shared by the explainer's training and inference live in :mod:`.series`.
"""

from monai_exaggeration.methods.base import MethodSeries, SeriesMethod
from monai_exaggeration.methods.exaggeration import ProgressiveExaggeration
from monai_exaggeration.methods.gradient_ascent import PixelGradientAscent
from monai_exaggeration.methods.latent_shift import LatentShift
from monai_exaggeration.methods.registry import (
    DEFAULT_METHOD,
    METHODS,
    MethodContext,
    check_method,
    method_class,
    method_names,
    method_title,
    register_method,
)

#: The built-in methods (the registry may hold more: :func:`method_names`).
METHOD_NAMES = (ProgressiveExaggeration.name, LatentShift.name, PixelGradientAscent.name)

__all__ = [
    "DEFAULT_METHOD",
    "METHODS",
    "METHOD_NAMES",
    "LatentShift",
    "MethodContext",
    "MethodSeries",
    "PixelGradientAscent",
    "ProgressiveExaggeration",
    "SeriesMethod",
    "check_method",
    "method_class",
    "method_names",
    "method_title",
    "register_method",
]

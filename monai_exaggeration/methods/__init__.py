"""Counterfactual methods the inference and the evaluation can run (``method`` in inference.json):

* ``progressive_exaggeration`` — the trained explainer (the project's method, the default);
* ``latent_shift`` — Latent Shift (Cohen et al., MIDL 2021) in the autoencoder of ``bundles/cxr_autoencoder``;
* ``gradient_ascent`` — pixel-space gradient ascent on the classifier.

All return a :class:`MethodSeries`; the workflow writes every method's series the same way.
"""

from monai_exaggeration.methods.base import MethodSeries, SeriesMethod
from monai_exaggeration.methods.build import METHOD_NAMES, build_baseline, check_method
from monai_exaggeration.methods.exaggeration import ProgressiveExaggeration
from monai_exaggeration.methods.gradient_ascent import PixelGradientAscent
from monai_exaggeration.methods.latent_shift import LatentShift

__all__ = ["METHODS", "METHOD_NAMES", "build_baseline", "check_method", "LatentShift", "MethodSeries", "PixelGradientAscent", "ProgressiveExaggeration", "SeriesMethod"]

#: Config names of the methods, with the class that implements each.
METHODS = {
    ProgressiveExaggeration.name: ProgressiveExaggeration,
    LatentShift.name: LatentShift,
    PixelGradientAscent.name: PixelGradientAscent,
}

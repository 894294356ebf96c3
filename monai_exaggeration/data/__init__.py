"""Data: CSV manifests, deterministic splits, public-dataset adapters and user inputs."""

from . import adapters, inputs, manifest, segmentation
from .adapters import *  # noqa: F401,F403
from .inputs import *  # noqa: F401,F403
from .manifest import *  # noqa: F401,F403
from .segmentation import *  # noqa: F401,F403

__all__ = [*manifest.__all__, *adapters.__all__, *inputs.__all__, *segmentation.__all__]

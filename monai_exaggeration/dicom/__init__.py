"""DICOM output: progressive-exaggeration series as Secondary Capture images (see docs/inference.md)."""

from monai_exaggeration.dicom import secondary_capture
from monai_exaggeration.dicom.secondary_capture import *  # noqa: F401,F403

__all__ = list(secondary_capture.__all__)

"""Chest X-ray loading and normalisation transforms."""

from monai_exaggeration.transforms.contrastive import two_view_preprocessing, view_augmentation
from monai_exaggeration.transforms.cxr import (
    ASPECT_POLICIES,
    CropToSquared,
    LoadCXR,
    LoadCXRd,
    cxr_preprocessing,
    load_cxr,
    to_model_range,
    to_unit_range,
)
from monai_exaggeration.transforms.readers import DICOM_KEYWORDS, CXRImage, InputLimits, read_cxr

__all__ = [
    "ASPECT_POLICIES",
    "CXRImage",
    "CropToSquared",
    "DICOM_KEYWORDS",
    "LoadCXR",
    "LoadCXRd",
    "cxr_preprocessing",
    "load_cxr",
    "InputLimits",
    "read_cxr",
    "to_model_range",
    "to_unit_range",
    "two_view_preprocessing",
    "view_augmentation",
]

"""Two random views of each radiograph, for self-supervised (SimCLR) training of the CXR encoder."""

from __future__ import annotations

from monai.transforms import (
    Compose,
    CopyItemsd,
    RandAdjustContrastd,
    RandAffined,
    RandGaussianNoised,
    RandGaussianSmoothd,
    RandScaleIntensityd,
    Transform,
)

from monai_exaggeration.transforms.cxr import cxr_preprocessing

__all__ = ["SECOND_VIEW", "two_view_preprocessing", "view_augmentation"]

#: The key of the second view (the first stays under ``image``).
SECOND_VIEW = "image_2"


def view_augmentation(key: str) -> list[Transform]:
    """Acquisition-like changes (position, scale, exposure, sharpness, noise) applied to one view.

    No horizontal flip: the heart's side is anatomy, not acquisition.
    """
    return [
        RandAffined(
            key,
            prob=1.0,
            rotate_range=0.15,
            scale_range=0.2,
            translate_range=6,
            shear_range=0.05,
            padding_mode="border",
        ),
        RandAdjustContrastd(key, prob=0.8, gamma=(0.6, 1.6)),
        RandScaleIntensityd(key, factors=0.15, prob=0.5),
        RandGaussianSmoothd(key, sigma_x=(0.25, 1.0), sigma_y=(0.25, 1.0), prob=0.3),
        RandGaussianNoised(key, std=0.04, prob=0.5),
    ]


def two_view_preprocessing(spatial_size: int = 64, aspect: str = "pad") -> Compose:
    """Load as the classifier does, then augment ``image`` and a copy ``image_2`` independently."""
    transforms = list(cxr_preprocessing("image", spatial_size, aspect).transforms)
    transforms.append(CopyItemsd("image", times=1, names=SECOND_VIEW))
    transforms += view_augmentation("image") + view_augmentation(SECOND_VIEW)
    return Compose(transforms)

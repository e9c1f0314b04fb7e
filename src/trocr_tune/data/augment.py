"""Named augmentation policies built from Albumentations, seeded, in one registry.

A policy maps an RGB uint8 line image (H x W x 3) to another; geometry (resize/pad to the
model's input) happens after it, in the image processor. Albumentations is imported only when a
policy is built, so validating a config stays cheap.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import albumentations as A


def _none() -> list[Any]:
    return []


def _resize_pad() -> list[Any]:
    from .transforms import RescalePad

    return [RescalePad(scale=(0.6, 1.0), p=0.7)]


def _trocr_paper() -> list[Any]:
    import albumentations as A
    import cv2

    from .transforms import Underline

    # TrOCR paper, section 3.3: each image gets one of these (or stays as it is).
    return [
        A.OneOf(
            [
                A.Rotate(limit=10, border_mode=cv2.BORDER_REPLICATE, p=1.0),
                A.GaussianBlur(blur_limit=(3, 5), p=1.0),
                A.Morphological(scale=(2, 3), operation="dilation", p=1.0),
                A.Morphological(scale=(2, 3), operation="erosion", p=1.0),
                A.Downscale(scale_range=(0.4, 0.8), p=1.0),
                Underline(p=1.0),
                A.NoOp(p=1.0),
            ],
            p=1.0,
        )
    ]


def _handwriting() -> list[Any]:
    import albumentations as A
    import cv2

    from .transforms import PaperTexture

    return [
        A.OneOf(
            [
                A.ElasticTransform(alpha=8, sigma=4, border_mode=cv2.BORDER_REPLICATE, p=1.0),
                A.GridDistortion(num_steps=5, distort_limit=0.2, border_mode=cv2.BORDER_REPLICATE, p=1.0),
            ],
            p=0.4,
        ),
        A.Perspective(scale=(0.01, 0.04), fit_output=True, border_mode=cv2.BORDER_REPLICATE, p=0.3),
        A.Affine(
            shear={"x": (-15, 15), "y": (0, 0)}, fit_output=True, border_mode=cv2.BORDER_REPLICATE, p=0.5
        ),
        A.OneOf(
            [
                A.Morphological(scale=(2, 3), operation="dilation", p=1.0),
                A.Morphological(scale=(2, 3), operation="erosion", p=1.0),
            ],
            p=0.3,
        ),
        PaperTexture(p=0.3),
        A.RandomBrightnessContrast(brightness_limit=0.2, contrast_limit=0.3, p=0.5),
        A.GaussNoise(std_range=(0.02, 0.08), p=0.3),
        A.GaussianBlur(blur_limit=(3, 3), p=0.2),
    ]


POLICIES: dict[str, Callable[[], list[Any]]] = {
    "none": _none,
    "resize-pad": _resize_pad,
    "trocr-paper": _trocr_paper,
    "handwriting": _handwriting,
}


def build_policy(name: str, seed: int) -> A.Compose | None:
    """The named policy as a seeded Albumentations pipeline (None for `none`)."""
    transforms = POLICIES[name]()
    if not transforms:
        return None
    import albumentations as A

    return A.Compose(transforms, seed=seed)

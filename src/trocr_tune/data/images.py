"""Opening user images safely: a drop reason for every file that cannot be used, RGB for every mode.

Every place that opens a line or page image (reader checks, crops, the torch Dataset, predict)
goes through here, so a truncated file, a decompression bomb, a directory or a 16-bit scan gets
the same treatment and the same wording everywhere.
"""

from __future__ import annotations

import os
import stat
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
from PIL import Image, UnidentifiedImageError

MISSING_IMAGE = "image file missing"
NOT_A_FILE = "image path is not a file (a directory?)"
UNREADABLE_IMAGE = "unreadable or corrupt image"
TRUNCATED_IMAGE = "truncated image file"
TOO_LARGE = "image over Pillow's decompression-bomb pixel limit"
# Smallest line image side predict and training accept (data.min_image_side's default).
MIN_SIDE = 4


class ImageProblem(Exception):
    """An image that cannot be used; `reason` is one of the module's drop reasons."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


@contextmanager
def open_image(path: str | os.PathLike[str]) -> Iterator[Image.Image]:
    """Image.open that raises ImageProblem (with a drop reason) instead of Pillow's errors.

    Pillow only *warns* between its pixel limit and twice that; both count as too large here,
    as a 100-megapixel "line image" is a mistake, and decoding it costs gigabytes.
    """
    name = os.fspath(path)
    try:  # one stat answers "missing" and "a folder" without Pillow (Kaggle CSVs list 400,000 files)
        if stat.S_ISDIR(os.stat(name).st_mode):
            raise ImageProblem(name, NOT_A_FILE)
    except FileNotFoundError:
        raise ImageProblem(name, MISSING_IMAGE) from None
    except OSError:
        raise ImageProblem(name, UNREADABLE_IMAGE) from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(name)
    except FileNotFoundError:
        raise ImageProblem(name, MISSING_IMAGE) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageProblem(name, TOO_LARGE) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        raise ImageProblem(name, UNREADABLE_IMAGE) from None
    with im:
        yield im


def decoded(im: Image.Image) -> Image.Image:
    """`im` with its pixels loaded; a truncated or corrupt file raises ImageProblem."""
    try:
        im.load()
    except OSError as exc:
        reason = TRUNCATED_IMAGE if "truncated" in str(exc) else UNREADABLE_IMAGE
        raise ImageProblem(str(im.filename or ""), reason) from None  # type: ignore[attr-defined]
    except (ValueError, SyntaxError, EOFError):
        raise ImageProblem(str(im.filename or ""), UNREADABLE_IMAGE) from None  # type: ignore[attr-defined]
    return im


def to_rgb(im: Image.Image) -> Image.Image:
    """RGB as a reader sees the page: transparency composited on white, high bit depths scaled.

    A plain `convert("RGB")` turns a transparent background black and clips a 16-bit scan
    (values up to 65535) to white.
    """
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        pixels = np.asarray(im, dtype=np.float64)
        low, high = float(pixels.min()), float(pixels.max())
        scaled = (pixels - low) * (255.0 / (high - low)) if high > low else np.full_like(pixels, 255.0)
        im = Image.fromarray(np.round(scaled).astype(np.uint8), "L")
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return im.convert("RGB")


def load_rgb(path: str) -> np.ndarray:
    """An RGB uint8 array of the image (EXIF orientation is not applied: page XML coordinates
    and line crops refer to the stored pixels). Raises ImageProblem for an unusable file."""
    with open_image(path) as im:
        return np.asarray(to_rgb(decoded(im)))


def image_problem(path: str, min_side: int = MIN_SIDE) -> str | None:
    """The reason a line image cannot be read (fully decoded), or None when it can."""
    try:
        with open_image(path) as im:
            decoded(im)
            if min(im.size) < min_side:
                return f"image smaller than {min_side} px on a side"
    except ImageProblem as problem:
        return problem.reason
    return None

"""The one torch Dataset of line images and its collator.

Images are decoded lazily, in DataLoader workers; nothing but file paths and token ids is
held for the whole dataset, unless `cache=True` keeps each processed image after its first use.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np
import torch

from ..errors import UserError
from ..model.tokenizer import encode_label
from .augment import build_policy
from .images import ImageProblem, load_rgb
from .records import LineSample

# Smallest image side the augmentation policies get: a side of fewer than ~5 px has no grid cells.
MIN_AUGMENT_SIDE = 16


class LineDataset(torch.utils.data.Dataset):
    """(pixel_values, labels) for each sample: augment -> image processor geometry -> tensor."""

    def __init__(
        self,
        samples: Sequence[LineSample],
        image_processor: Any,
        tokenizer: Any,
        augment: str = "none",
        seed: int = 0,
        with_labels: bool = True,
        cache: bool = False,
        skip_unreadable: bool = False,
    ) -> None:
        if cache and augment != "none":
            raise ValueError("a cached image would repeat one augmentation every epoch")
        self.samples = list(samples)
        self.image_processor = image_processor
        self.policy_name = augment
        self.seed = seed
        self._policy: Any = None
        self._seeded = False
        self.labels = [encode_label(tokenizer, s.text) for s in self.samples] if with_labels else None
        # Processed images by index, filled on first use (in this process: DataLoader workers
        # would each fill a copy that dies with them).
        self._cache: list[torch.Tensor | None] | None = [None] * len(self.samples) if cache else None
        # Training: an image that fails to decode mid-epoch (data.check_images=none checked nothing
        # up front) is named once and the next readable line is used in its place, not a crash.
        self.skip_unreadable = skip_unreadable
        self.unreadable: set[int] = set()

    def __len__(self) -> int:
        return len(self.samples)

    def _augment(self, image: np.ndarray) -> np.ndarray:
        if self.policy_name == "none":
            return image
        if min(image.shape[:2]) < MIN_AUGMENT_SIDE:  # grid distortions divide each side into cells
            scale = MIN_AUGMENT_SIDE / min(image.shape[:2])
            size = (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))
            image = cv2.resize(image, size, interpolation=cv2.INTER_LINEAR)
        if not self._seeded:
            # Each worker (and each epoch, as workers are re-created) draws its own stream,
            # derived from the torch seed the Trainer set: varied yet reproducible.
            info = torch.utils.data.get_worker_info()
            base = info.seed if info is not None else torch.initial_seed()
            self._policy = build_policy(self.policy_name, (self.seed + base) % 2**32)
            self._seeded = True
        return self._policy(image=image)["image"] if self._policy is not None else image

    def pixel_values(self, index: int) -> torch.Tensor:
        if self._cache is not None and (cached := self._cache[index]) is not None:
            return cached
        image = self._augment(load_rgb(self.samples[index].image))
        out = self.image_processor(images=image, return_tensors="np")["pixel_values"][0]
        pixels = torch.from_numpy(np.ascontiguousarray(out, dtype=np.float32))
        if self._cache is not None:
            self._cache[index] = pixels
        return pixels

    def __getitem__(self, index: int) -> dict[str, Any]:
        if self.skip_unreadable:
            index, pixels = self._first_readable(index)
        else:
            pixels = self.pixel_values(index)
        item: dict[str, Any] = {"pixel_values": pixels}
        if self.labels is not None:
            item["labels"] = self.labels[index]
        return item

    def _first_readable(self, index: int) -> tuple[int, torch.Tensor]:
        """Line `index`, or the next one whose image decodes (each unreadable image named once)."""
        for step in range(len(self.samples)):
            i = (index + step) % len(self.samples)
            if i in self.unreadable:
                continue
            try:
                return i, self.pixel_values(i)
            except ImageProblem as problem:
                self.unreadable.add(i)
                print(
                    f"skipped {problem.path}: cannot be decoded ({problem.reason}); training goes on with "
                    "the next line in its place (data.check_images=header checks every image up front)",
                    file=sys.stderr,
                    flush=True,
                )
        raise UserError("no image of the training data can be decoded")

    def widths(self, height: int) -> list[int]:
        """Each image's width once scaled to `height` (for bucketing similar lines together)."""
        return [int(s.size[0] * height / max(1, s.size[1])) if s.size else height * 8 for s in self.samples]


def collate(batch: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Stack images; pad labels with -100 so padding never counts in the loss."""
    out = {"pixel_values": torch.stack([b["pixel_values"] for b in batch])}
    if "labels" in batch[0]:
        longest = max(len(b["labels"]) for b in batch)
        labels = torch.full((len(batch), longest), -100, dtype=torch.long)
        for i, b in enumerate(batch):
            labels[i, : len(b["labels"])] = torch.tensor(b["labels"], dtype=torch.long)
        out["labels"] = labels
    return out

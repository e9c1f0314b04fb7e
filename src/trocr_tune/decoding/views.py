"""Test-time views of processed line images, for rescoring beam-search hypotheses.

`eval.rescore_views` names views from VIEWS: each hypothesis's joint decoder + CTC score is then
averaged over the image as processed and these altered copies of it (the encoder runs once per
view; the hypotheses themselves still come from one beam search on the original). A reading that
stays likely when the ink is a little thicker or thinner, the line a little smaller or blurred, is
less likely an accident of one rendering. Views work on the processed tensor (batch, channels,
height, width), dark ink on light paper as every TrOCR image processor leaves it, and keep its
shape, so they fit any encoder and geometry.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F


def paper(pixels: torch.Tensor) -> torch.Tensor:
    """Per image and channel, the median of the outermost rows and columns: the paper tone."""
    edges = torch.cat([pixels[..., 0, :], pixels[..., -1, :], pixels[..., :, 0], pixels[..., :, -1]], dim=-1)
    return edges.median(dim=-1).values[..., None, None]


def shrink_and_pad(pixels: torch.Tensor, pad_y: float, pad_x: float) -> torch.Tensor:
    """The line scaled down and centred on its paper tone, as if it had `pad_y` / `pad_x` of its
    height / width more margin on each side."""
    h, w = pixels.shape[-2:]
    nh, nw = max(1, round(h / (1 + 2 * pad_y))), max(1, round(w / (1 + 2 * pad_x)))
    small = F.interpolate(pixels, size=(nh, nw), mode="bilinear", align_corners=False, antialias=True)
    out = paper(pixels).expand_as(pixels).clone()
    top, left = (h - nh) // 2, (w - nw) // 2
    out[..., top : top + nh, left : left + nw] = small
    return out


def _window_max(pixels: torch.Tensor, kh: int, kw: int) -> torch.Tensor:
    pad = ((kw - 1) // 2, kw // 2, (kh - 1) // 2, kh // 2)
    return F.max_pool2d(F.pad(pixels, pad, mode="replicate"), (kh, kw), stride=1)


def thicker(pixels: torch.Tensor) -> torch.Tensor:
    """Ink spread by one pixel right and down (a 2 x 2 minimum filter)."""
    return -_window_max(-pixels, 2, 2)


def thinner(pixels: torch.Tensor) -> torch.Tensor:
    """Ink eroded by one pixel vertically (a 2 x 1 maximum filter): thinner horizontal strokes."""
    return _window_max(pixels, 2, 1)


def blurred(pixels: torch.Tensor) -> torch.Tensor:
    """A 3 x 3 binomial blur."""
    k = torch.tensor([0.25, 0.5, 0.25], dtype=pixels.dtype, device=pixels.device)
    kernel = (k[:, None] * k[None, :]).expand(pixels.shape[1], 1, 3, 3)
    return F.conv2d(F.pad(pixels, (1, 1, 1, 1), mode="replicate"), kernel, groups=pixels.shape[1])


VIEWS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "pad-x": lambda x: shrink_and_pad(x, 0.0, 0.06),
    "pad-y": lambda x: shrink_and_pad(x, 0.10, 0.0),
    "thicker": thicker,
    "thinner": thinner,
    "blur": blurred,
}

"""Line and page transcription across the processes of `torchrun` / `accelerate launch`.

The launcher starts one process per device and sets RANK, WORLD_SIZE and LOCAL_RANK; each
process decodes one contiguous slice of the inputs and the slices are gathered back in rank
order, so the merged output keeps the input order. Only Python objects travel (gloo).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Ranks:
    """This process's place among the launched ones (rank 0 of 1 when not launched)."""

    rank: int = 0
    world: int = 1
    local: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    def part(self, items: Sequence[T]) -> list[T]:
        """This rank's contiguous, near-equal slice of `items` (the slices in rank order are `items`)."""
        n = len(items)
        return list(items[n * self.rank // self.world : n * (self.rank + 1) // self.world])

    def gather(self, value: Any) -> list[Any]:
        """Every rank's `value`, in rank order, on every rank."""
        if self.world == 1:
            return [value]
        import torch.distributed as dist

        values: list[Any] = [None] * self.world
        dist.all_gather_object(values, value)
        return values

    def device(self, name: str) -> str:
        """`auto` on a multi-GPU launch means this process's own GPU (LOCAL_RANK)."""
        import torch

        if name == "auto" and self.world > 1 and torch.cuda.is_available():
            return f"cuda:{self.local % torch.cuda.device_count()}"
        return name

    def tag(self) -> str:
        """A prefix for this rank's progress lines when there are several."""
        return f"[rank {self.rank}/{self.world}] " if self.world > 1 else ""


@contextmanager
def launched() -> Iterator[Ranks]:
    """The launcher's process group (gloo: only Python objects are exchanged), torn down at the end."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        yield Ranks()
        return
    import torch.distributed as dist

    owned = not dist.is_initialized()
    if owned:
        dist.init_process_group(backend="gloo")
    try:
        yield Ranks(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    finally:
        if owned:
            dist.destroy_process_group()

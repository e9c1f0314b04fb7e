"""The service's settings: one dataclass, one help line per field (the `serve` options use them)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields

from ..errors import UserError

API_KEY_ENV = "TROCR_TUNE_API_KEY"


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@dataclass
class ServeSettings:
    """How `trocr-tune serve` listens, batches and limits requests."""

    host: str = field(default="127.0.0.1", metadata=_help("Address to listen on (0.0.0.0: every interface)."))
    port: int = field(default=8000, metadata=_help("TCP port to listen on."))
    max_batch_size: int = field(
        default=32, metadata=_help("Most lines decoded in one call, from one or several requests.")
    )
    max_wait_ms: float = field(
        default=10.0,
        metadata=_help("How long the first line of a batch waits for more lines before decoding starts."),
    )
    queue_size: int = field(
        default=256, metadata=_help("Most lines waiting to be decoded; a request beyond it gets 429.")
    )
    max_request_bytes: int = field(
        default=32 * 2**20, metadata=_help("Largest request body in bytes (413 beyond).")
    )
    max_image_pixels: int = field(
        default=50_000_000, metadata=_help("Largest image, width x height, line or page (413 beyond).")
    )
    max_lines_per_request: int = field(
        default=256,
        metadata=_help("Most line images in one /v1/lines request, or lines read in one page (413 beyond)."),
    )
    body_timeout_s: float = field(
        default=30.0,
        metadata=_help(
            "Seconds a client has to send its whole request body (408 beyond): a stalled upload "
            "cannot hold its connection and memory."
        ),
    )
    retry_after_s: int = field(default=1, metadata=_help("Seconds a 429 answer asks the client to wait."))
    api_key: str | None = field(
        default=None,
        metadata=_help(
            f"Require this key in X-API-Key or 'Authorization: Bearer KEY' on /v1/* (env {API_KEY_ENV}); "
            "/health, /ready and /metrics stay open."
        ),
    )
    device: str = field(default="auto", metadata=_help("auto, cpu, cuda, cuda:1 ..."))

    def __post_init__(self) -> None:
        if self.api_key is None:
            self.api_key = os.environ.get(API_KEY_ENV) or None
        positive = ("max_batch_size", "queue_size", "max_request_bytes", "max_image_pixels")
        for name in (*positive, "max_lines_per_request", "retry_after_s"):
            if getattr(self, name) < (1 if name in positive or name == "max_lines_per_request" else 0):
                raise UserError(
                    f"serve: {name.replace('_', '-')} must be positive, got {getattr(self, name)}"
                )
        if self.body_timeout_s <= 0:
            raise UserError(f"serve: body-timeout-s must be positive, got {self.body_timeout_s}")
        if self.max_wait_ms < 0:
            raise UserError(f"serve: max-wait-ms must be >= 0, got {self.max_wait_ms}")
        if not 0 < self.port < 65536:
            raise UserError(f"serve: port must be within 1-65535, got {self.port}")
        if self.max_lines_per_request > self.queue_size:
            raise UserError(
                f"serve: max-lines-per-request ({self.max_lines_per_request}) cannot exceed queue-size "
                f"({self.queue_size}): such a request would never fit in the queue"
            )


def help_of(name: str) -> str:
    """The help line of one ServeSettings field."""
    return next(f.metadata["help"] for f in fields(ServeSettings) if f.name == name)

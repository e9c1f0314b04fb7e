"""The HTTP service: `trocr-tune serve MODEL` (FastAPI + uvicorn, extra [serve]).

settings.py holds the options, batching.py the queue and the worker that owns the model,
metrics.py the Prometheus metrics and app.py the endpoints; `serve` below wires them to a model.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from ..config import Config
from ..errors import UserError
from .settings import API_KEY_ENV, ServeSettings, help_of

if TYPE_CHECKING:
    from fastapi import FastAPI

    from ..decoding import Prediction
    from .batching import Decoder

__all__ = ["API_KEY_ENV", "ServeSettings", "build_app", "help_of", "model_decoder", "serve"]


def model_decoder(model: str, cfg: Config, settings: ServeSettings) -> Decoder:
    """Load `model` (checkpoint or `optimize` artifact) once; a function that decodes line files
    with cfg.eval's decoding settings, all of them in one generate call (decoding.transcribe)."""
    from ..decoding import DecodeSettings, pick_device, transcribe
    from ..decoding.settings import model_decoding
    from ..optimize import load_runner

    bundle, runner = load_runner(model, pick_device(settings.device), cfg.optimize)
    eval_cfg, note = model_decoding(cfg.eval, bundle, runner)
    if note:
        print(note, file=sys.stderr, flush=True)
    DecodeSettings.from_eval(bundle, eval_cfg)  # a missing char_lm.json fails now, not on the first request
    settings_eval = dataclasses.replace(eval_cfg, batch_size=settings.max_batch_size)

    def decode(paths: list[str]) -> Sequence[Prediction]:
        predictions, _ = transcribe(bundle, paths, settings_eval, runner=runner)
        return predictions

    return decode


def _require_extra() -> None:
    try:
        import fastapi  # noqa: F401
        import multipart  # noqa: F401
        import prometheus_client  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        raise UserError(
            f"serve needs the [serve] extra ({exc.name} is missing): pip install 'trocr-tune[serve]'"
        ) from None


def build_app(
    model: str, cfg: Config, settings: ServeSettings, on_load_error: Callable[[str], None] | None = None
) -> FastAPI:
    """The app for `model`, which loads in the background once the app starts."""
    _require_extra()
    from .app import create_app

    return create_app(settings, cfg, lambda: model_decoder(model, cfg, settings), on_load_error)


def serve(model: str, cfg: Config, settings: ServeSettings) -> None:
    """Run the service until interrupted (SIGINT/SIGTERM: queued requests are answered first).

    Raises UserError when the model fails to load (the server stops at once)."""
    _require_extra()
    import uvicorn

    failure: list[str] = []

    def stop(message: str) -> None:
        failure.append(message)
        server.should_exit = True

    app = build_app(model, cfg, settings, stop)
    server = uvicorn.Server(uvicorn.Config(app, host=settings.host, port=settings.port, log_level="info"))
    server.run()
    if failure:
        raise UserError(failure[0])

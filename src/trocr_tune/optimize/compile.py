"""compile-*: torch.compile applied to the modules decoding really calls.

Decoding never runs a compiled `model.forward` (the reference project compiled that and measured
eager code): it calls the encoder once per batch, then the decoder once per token. The encoder is
compiled in place (`nn.Module.compile`, so weights and state-dict keys stay the same). A TrOCR
decoder is decoded by the engine's own loop (decoding/search.py), which calls its layers directly
and is faster eager than a compiled decoder driven by `generate` (docs/benchmark.md); any other
decoder is compiled too and decoded by `generate`. Every call into a compiled graph is counted,
which proves compiled code ran.
"""

from __future__ import annotations

import copy
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from ..config import OptimizeConfig
from ..decoding.runners import TorchRunner
from ..model.loading import ModelBundle


@dataclass
class CompileStats:
    """Graphs compiled and calls into them, per module (encoder / decoder)."""

    graphs: Counter[str] = field(default_factory=Counter)
    calls: Counter[str] = field(default_factory=Counter)

    def as_dict(self) -> dict[str, Any]:
        breaks: dict[str, int] = dict(torch._dynamo.utils.counters.get("graph_break", {}))
        return {"graphs": dict(self.graphs), "calls": dict(self.calls), "graph_breaks": sum(breaks.values())}


def _counting_backend(stats: CompileStats, name: str, mode: str, backend: str) -> Callable[..., Any]:
    def compile_graph(gm: torch.fx.GraphModule, example_inputs: list[Any]) -> Callable[..., Any]:
        stats.graphs[name] += 1
        if backend == "inductor":
            from torch._inductor import list_mode_options
            from torch._inductor.compile_fx import compile_fx

            compiled: Any = compile_fx(gm, example_inputs, config_patches=list_mode_options(mode))
        else:  # "eager": dynamo capture without code generation (tests)
            compiled = gm.forward

        def run(*args: Any) -> Any:
            stats.calls[name] += 1
            return compiled(*args)

        return run

    return compile_graph


def compile_for_decoding(model: Any, mode: str, backend: str = "inductor") -> CompileStats:
    """Compile `model.encoder` (static shapes), and `model.decoder` (dynamic: the cache grows)
    unless the engine's own loop decodes it."""
    from ..decoding.search import TrOCRSteps

    stats = CompileStats()
    engine_decodes = TrOCRSteps.supports(model)
    model.encoder.compile(backend=_counting_backend(stats, "encoder", mode, backend), dynamic=False)
    if not engine_decodes:
        model.decoder.compile(backend=_counting_backend(stats, "decoder", mode, backend), dynamic=True)
    return stats


def apply(
    bundle: ModelBundle, cfg: OptimizeConfig, device: torch.device, mode: str, backend: str = "inductor"
) -> TorchRunner:
    model: Any = copy.deepcopy(bundle.model)
    model = model.to(device).eval()
    stats = compile_for_decoding(model, mode, backend)
    runner = TorchRunner(model, bundle.tokenizer, device)
    runner.compile_stats = stats  # type: ignore[attr-defined]
    return runner


def why_not(facts: dict[str, Any], mode: str) -> str:
    from . import at_most

    encoder = facts["encoder_share"]
    return (
        f"the compiled encoder fuses its operators, but it is {encoder:.0%} of fp32's time here "
        f"(at most {at_most(encoder):.2f}x if it cost nothing); the decoder's steps run from Python "
        "once per token"
    )

"""compile-*: torch.compile applied to the modules `generate` really calls.

`generate` never runs a compiled `model.forward` (the reference project compiled that and
measured eager code); it calls the encoder once and the decoder once per token. Both modules
are compiled in place (`nn.Module.compile`, so weights and state-dict keys stay the same) and
every call into a compiled graph is counted, which proves compiled code ran.
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


def compile_for_generate(model: Any, mode: str, backend: str = "inductor") -> CompileStats:
    """Compile `model.encoder` (static shapes) and `model.decoder` (dynamic: the cache grows)."""
    stats = CompileStats()
    model.encoder.compile(backend=_counting_backend(stats, "encoder", mode, backend), dynamic=False)
    model.decoder.compile(backend=_counting_backend(stats, "decoder", mode, backend), dynamic=True)
    return stats


def apply(
    bundle: ModelBundle, cfg: OptimizeConfig, device: torch.device, mode: str, backend: str = "inductor"
) -> TorchRunner:
    model: Any = copy.deepcopy(bundle.model)
    model = model.to(device).eval()
    stats = compile_for_generate(model, mode, backend)
    runner = TorchRunner(model, bundle.tokenizer, device)
    runner.compile_stats = stats  # type: ignore[attr-defined]
    return runner


def why_not(facts: dict[str, Any], mode: str) -> str:
    outside = 1 - facts["op_share"]
    return (
        f"compiled graphs fuse operators and cut Python overhead ({outside:.0%} of fp32's time here), "
        "but generate still calls the decoder once per token from Python"
    )

"""The ONNX Runtime runner: decoding over the graphs `optimize/onnx.py` exports.

`encoder.onnx` maps pixels to every decoder layer's cross-attention keys and values (once per
image) and to the encoder's states (for CTC rescoring); `decoder.onnx` is one step with the
self-attention past as plain tensors. Greedy decoding runs in a loop of its own; beam search, LM
fusion and rescoring run the engine's search (decoding/search.py) over `OrtSteps`, and rescore on
the torch model's heads like every runner.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..errors import UserError
from .results import Prediction, decode_predictions
from .runners import BeamSupport
from .settings import DecodeSettings

if TYPE_CHECKING:
    from ..model.loading import ModelBundle

ENCODER_FILE, DECODER_FILE = "encoder.onnx", "decoder.onnx"
ENCODER_STATES = "encoder_states"  # the encoder graph's last output: what CTC rescoring reads


def require_ort() -> Any:
    try:
        import onnxruntime
    except ImportError:
        raise UserError("the onnx variants need ONNX Runtime: pip install 'trocr-tune[onnx]'") from None
    return onnxruntime


class OrtSteps:
    """The search's decoder steps (decoding/search.py `Steps`) over the decoder graph: one row
    per beam, its past and cross-attention keys/values reordered with the beams."""

    def __init__(self, session: Any, cross: dict[str, np.ndarray], beams: int, past_names: list[str]) -> None:
        self.session, self.past_names, self.device = session, past_names, torch.device("cpu")
        self.cross = {name: np.repeat(value, beams, axis=0) for name, value in cross.items()}
        rows, heads, _, head_dim = next(iter(self.cross.values())).shape
        self.past = {name: np.zeros((rows, heads, 0, head_dim), np.float32) for name in past_names}

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        ids = tokens.view(-1, 1).numpy().astype(np.int64)
        logits, *present = self.session.run(None, {"input_ids": ids, **self.past, **self.cross})
        self.past = dict(zip(self.past_names, present, strict=True))
        return torch.from_numpy(logits)

    def keep(self, rows: torch.Tensor, images: torch.Tensor | None = None) -> None:
        index = rows.numpy()
        self.past = {name: np.ascontiguousarray(value[index]) for name, value in self.past.items()}
        if images is not None:
            self.cross = {name: np.ascontiguousarray(value[index]) for name, value in self.cross.items()}


class OnnxRunner(BeamSupport):
    """Decoding with ONNX Runtime sessions; the same outputs (texts, confidences) as TorchRunner."""

    def __init__(self, folder: Path, bundle: ModelBundle, threads: int | None = None) -> None:
        ort = require_ort()
        self.folder = folder
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        providers = ["CPUExecutionProvider"]
        self.encoder = ort.InferenceSession(str(folder / ENCODER_FILE), options, providers=providers)
        self.decoder = ort.InferenceSession(str(folder / DECODER_FILE), options, providers=providers)
        self.tokenizer = bundle.tokenizer
        self.model = bundle.model.eval()  # its heads rescore the beams (CTC), as in TorchRunner
        self._fusion = None
        cfg: Any = bundle.model.config
        dec = cfg.decoder
        self.layers, self.heads = dec.decoder_layers, dec.decoder_attention_heads
        self.head_dim = dec.d_model // self.heads
        self.start = cfg.decoder_start_token_id
        self.eos, self.pad = self.tokenizer.eos_token_id, self.tokenizer.pad_token_id
        self.device = torch.device("cpu")
        self.past_names = [i.name for i in self.decoder.get_inputs() if i.name.startswith("past_")]
        self.cross_names = [i.name for i in self.decoder.get_inputs() if i.name.startswith("cross_")]
        self.encoder_outputs = [o.name for o in self.encoder.get_outputs()]

    def generate_batch(self, pixel_values: torch.Tensor, settings: DecodeSettings) -> list[Prediction]:
        pixels = pixel_values.detach().cpu().float()
        outputs = self.encoder.run(None, {"pixel_values": pixels.numpy()})
        named = dict(zip(self.encoder_outputs, outputs, strict=True))
        cross = {name: named[name] for name in self.cross_names}
        if settings.num_beams == 1 and not settings.fused:
            return self._greedy(cross, settings.max_new_tokens)
        states = named.get(ENCODER_STATES)
        if settings.rescores and settings.rescoring.ctc_weight > 0 and states is None:
            raise UserError(
                f"{self.folder}: these graphs predate CTC rescoring in ONNX Runtime (no {ENCODER_STATES} "
                "output); re-run trocr-tune optimize for this variant"
            )
        steps = OrtSteps(self.decoder, cross, settings.num_beams, self.past_names)
        with torch.inference_mode():
            return self._read(steps, pixels, None if states is None else torch.from_numpy(states), settings)

    def _greedy(self, cross: dict[str, np.ndarray], steps: int) -> list[Prediction]:
        """Greedy decoding in ONNX Runtime alone (no torch in the loop)."""
        b = next(iter(cross.values())).shape[0]
        past = {name: np.zeros((b, self.heads, 0, self.head_dim), np.float32) for name in self.past_names}
        ids = np.full((b, 1), self.start, np.int64)
        finished = np.zeros(b, bool)
        tokens, logps = [], []
        for _ in range(steps):
            logits, *present = self.decoder.run(None, {"input_ids": ids, **past, **cross})
            shifted = logits - logits.max(axis=-1, keepdims=True)
            logprobs = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
            token = logprobs.argmax(axis=-1)
            token = np.where(finished, self.pad, token)
            tokens.append(token)
            logps.append(logprobs[np.arange(b), token])
            finished |= token == self.eos
            past = dict(zip(self.past_names, present, strict=True))
            ids = token[:, None].astype(np.int64)
            if finished.all():
                break
        generated = np.stack(tokens, axis=1).tolist()
        return decode_predictions(self.tokenizer, generated, torch.from_numpy(np.stack(logps, axis=1)))

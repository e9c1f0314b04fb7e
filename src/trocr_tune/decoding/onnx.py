"""The ONNX Runtime runner: greedy decoding over the graphs `optimize/onnx.py` exports.

`encoder.onnx` maps pixels to every decoder layer's cross-attention keys and values (once per
image); `decoder.onnx` is one step with the self-attention past as plain tensors.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..errors import UserError
from .results import Prediction, decode_predictions
from .settings import DecodeSettings

if TYPE_CHECKING:
    from ..model.loading import ModelBundle

ENCODER_FILE, DECODER_FILE = "encoder.onnx", "decoder.onnx"


def require_ort() -> Any:
    try:
        import onnxruntime
    except ImportError:
        raise UserError("the onnx variants need ONNX Runtime: pip install 'trocr-tune[onnx]'") from None
    return onnxruntime


class OnnxRunner:
    """Greedy decoding with ONNX Runtime sessions; same outputs (texts, confidences) as TorchRunner."""

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
        cfg: Any = bundle.model.config
        dec = cfg.decoder
        self.layers, self.heads = dec.decoder_layers, dec.decoder_attention_heads
        self.head_dim = dec.d_model // self.heads
        self.start = cfg.decoder_start_token_id
        self.eos, self.pad = self.tokenizer.eos_token_id, self.tokenizer.pad_token_id
        self.device = torch.device("cpu")
        self.past_names = [i.name for i in self.decoder.get_inputs() if i.name.startswith("past_")]
        self.cross_names = [i.name for i in self.decoder.get_inputs() if i.name.startswith("cross_")]

    def generate_batch(self, pixel_values: torch.Tensor, settings: DecodeSettings) -> list[Prediction]:
        if settings.num_beams != 1:
            raise UserError("the onnx variants decode greedily (eval.num_beams=1)")
        if settings.fusion_weight > 0:
            raise UserError("the onnx variants decode without a language model (eval.lm_fusion=0)")
        steps = settings.max_new_tokens
        pixels = pixel_values.detach().cpu().float().numpy()
        cross = dict(zip(self.cross_names, self.encoder.run(None, {"pixel_values": pixels}), strict=True))
        b = pixels.shape[0]
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

"""The ONNX Runtime runner: decoding over the graphs `optimize/onnx.py` exports.

`encoder.onnx` maps pixels to every decoder layer's cross-attention keys and values (once per
image) and to the encoder's states (for CTC rescoring); `decoder.onnx` is one step for `beams`
rows per image, with the self-attention past as plain tensors and the rows of it each row
continues (`beam_rows`: the beam reorder runs inside the graph). Greedy decoding runs in a loop of
its own; beam search, LM fusion and rescoring run the engine's search (decoding/search.py) over
`OrtSteps`, and rescore on the torch model's heads like every runner. `OpenVinoRunner` reads the
same graphs with the encoder compiled by OpenVINO (bf16 on CPUs with native bf16).
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..errors import UserError
from .results import Prediction, decode_predictions, written_end
from .runners import BeamSupport
from .settings import DecodeSettings

if TYPE_CHECKING:
    from ..model.loading import ModelBundle

ENCODER_FILE, DECODER_FILE = "encoder.onnx", "decoder.onnx"
ENCODER_STATES = "encoder_states"  # the encoder graph's last output: what CTC rescoring reads
BEAM_ROWS = "beam_rows"  # the decoder graph's input: which past row each row continues
CPU_PROVIDERS = ["CPUExecutionProvider"]


def require_ort() -> Any:
    try:
        import onnxruntime
    except ImportError:
        raise UserError("the onnx variants need ONNX Runtime: pip install 'trocr-tune[onnx]'") from None
    return onnxruntime


class OrtSteps:
    """The search's decoder steps (decoding/search.py `Steps`) over the decoder graph: one copy of
    each image's cross-attention keys/values; the beam reorder is the graph's gather of `beam_rows`."""

    def __init__(
        self, session: Any, cross: dict[str, np.ndarray], beams: int, past: dict[str, np.ndarray]
    ) -> None:
        self.session, self.past_names, self.device = session, list(past), torch.device("cpu")
        self.cross, self.beams, self.past = cross, beams, past
        self.rows = np.arange(next(iter(past.values())).shape[0], dtype=np.int64)

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        ids = tokens.view(-1, self.beams).numpy().astype(np.int64)
        feed = {"input_ids": ids, BEAM_ROWS: self.rows.reshape(ids.shape), **self.past, **self.cross}
        logits, *present = self.session.run(None, feed)
        self.past = dict(zip(self.past_names, present, strict=True))
        self.rows = np.arange(ids.size, dtype=np.int64)
        return torch.from_numpy(logits)

    def keep(self, rows: torch.Tensor, images: torch.Tensor | None = None) -> None:
        self.rows = rows.numpy().astype(np.int64)
        if images is not None:
            index = images.numpy()
            self.cross = {name: np.ascontiguousarray(value[index]) for name, value in self.cross.items()}


class OnnxRunner(BeamSupport):
    """Decoding with ONNX Runtime sessions; the same outputs (texts, confidences) as TorchRunner."""

    def __init__(self, folder: Path, bundle: ModelBundle, threads: int | None = None) -> None:
        self.folder, self.threads = folder, threads or torch.get_num_threads()
        self.encoder, self.decoder = self._sessions(spinning=True)
        self._searching: tuple[Any, Any] | None = None
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
        if BEAM_ROWS not in {i.name for i in self.decoder.get_inputs()}:
            raise UserError(
                f"{folder}: these graphs predate one cross-attention copy per image (no {BEAM_ROWS} "
                "input); re-run trocr-tune optimize for this variant"
            )

    def _sessions(self, spinning: bool) -> tuple[Any, Any]:
        """(encoder, decoder) sessions whose threads spin between runs or not."""
        ort = require_ort()
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
        decoder = ort.InferenceSession(str(self.folder / DECODER_FILE), options, providers=CPU_PROVIDERS)
        return self._encoder_session(options), decoder

    def _encoder_session(self, options: Any) -> Any:
        ort = require_ort()
        return ort.InferenceSession(str(self.folder / ENCODER_FILE), options, providers=CPU_PROVIDERS)

    def generate_batch(self, pixel_values: torch.Tensor, settings: DecodeSettings) -> list[Prediction]:
        pixels = pixel_values.detach().cpu().float()
        encoder, decoder = self.encoder, self.decoder
        searching = settings.num_beams > 1 or settings.fused or settings.ctc_joint > 0
        if searching:
            # torch runs the search between decoder runs: ORT threads spinning there would take its
            # cores (4 beams on the demo model: 33 -> 51-57 lines/s without spinning; greedy,
            # ORT alone, gains from it: 62-75 -> 72-90).
            if self._searching is None:
                self._searching = self._sessions(spinning=False)
            encoder, decoder = self._searching
        outputs = encoder.run(None, {"pixel_values": pixels.numpy()})
        named = dict(zip(self.encoder_outputs, outputs, strict=True))
        cross = {name: named[name] for name in self.cross_names}
        if not searching:
            return self._greedy(cross, settings.max_new_tokens)
        states = named.get(ENCODER_STATES)
        uses_ctc = (settings.rescores and settings.rescoring.ctc_weight > 0) or settings.ctc_joint > 0
        if uses_ctc and states is None:
            raise UserError(
                f"{self.folder}: these graphs predate CTC rescoring in ONNX Runtime (no {ENCODER_STATES} "
                "output); re-run trocr-tune optimize for this variant"
            )
        rows = len(pixels) * settings.num_beams
        steps = OrtSteps(decoder, cross, settings.num_beams, self._empty_past(rows))
        with torch.inference_mode():
            return self._read(steps, pixels, None if states is None else torch.from_numpy(states), settings)

    def _empty_past(self, rows: int) -> dict[str, np.ndarray]:
        """Every layer's self-attention past before the first step: `rows` rows of length 0."""
        return {name: np.zeros((rows, self.heads, 0, self.head_dim), np.float32) for name in self.past_names}

    def _greedy(self, cross: dict[str, np.ndarray], steps: int) -> list[Prediction]:
        """Greedy decoding in ONNX Runtime alone (no torch in the loop); a line leaves the batch
        (its past rows and cross keys) at its end of line."""
        b = next(iter(cross.values())).shape[0]
        past = self._empty_past(b)
        alive = np.arange(b)
        rows = alive[:, None]
        ids = np.full((b, 1), self.start, np.int64)
        tokens = np.full((b, steps), self.pad, np.int64)
        logps = np.zeros((b, steps), np.float32)
        for t in range(steps):
            logits, *present = self.decoder.run(None, {"input_ids": ids, BEAM_ROWS: rows, **past, **cross})
            logits = logits.astype(np.float32, copy=False)
            token = logits.argmax(axis=-1)
            top = logits[np.arange(len(token)), token]
            shifted = logits - top[:, None]
            tokens[alive, t] = token
            logps[alive, t] = -np.log(np.exp(shifted).sum(axis=-1))
            past = dict(zip(self.past_names, present, strict=True))
            going = np.nonzero(token != self.eos)[0]
            if len(going) == 0:
                break
            if len(going) < len(alive):
                alive, token = alive[going], token[going]
                cross = {name: np.ascontiguousarray(value[going]) for name, value in cross.items()}
            rows = going[:, None].astype(np.int64)
            ids = token[:, None].astype(np.int64)
        end = written_end(torch.from_numpy(tokens), self.pad)
        return decode_predictions(self.tokenizer, tokens[:, :end].tolist(), torch.from_numpy(logps[:, :end]))


class OpenVinoEncoder:
    """The encoder graph compiled by OpenVINO's CPU plugin, behind the two methods of an ONNX
    Runtime session the runner calls (`run`, `get_outputs`). Its precision is OpenVINO's own
    choice for the CPU: bf16 where the CPU has native bf16 (AMX, AVX512-BF16), else f32."""

    def __init__(self, path: Path, threads: int) -> None:
        try:
            import openvino
        except ImportError:
            raise UserError(
                "the openvino variant needs OpenVINO: pip install 'trocr-tune[openvino]'"
            ) from None
        compiled = openvino.Core().compile_model(
            str(path), "CPU", {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"}
        )
        self.outputs = list(compiled.outputs)
        self.request = compiled.create_infer_request()
        self.precision = compiled.get_property("INFERENCE_PRECISION_HINT").to_string()  # bf16 or f32
        self._names = [SimpleNamespace(name=o.get_any_name()) for o in self.outputs]

    def get_outputs(self) -> list[Any]:
        return self._names

    def run(self, _names: Any, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        result = self.request.infer(feed)
        # The request reuses its output buffers at the next call: the runner keeps copies.
        return [np.array(result[o], dtype=np.float32) for o in self.outputs]


class OpenVinoRunner(OnnxRunner):
    """The ONNX graphs with the encoder (most of a pass on convolutional encoders) compiled by
    OpenVINO; the decoder steps stay in ONNX Runtime (their run in OpenVINO is not measured)."""

    def __init__(self, folder: Path, bundle: ModelBundle, threads: int | None = None) -> None:
        self._openvino: OpenVinoEncoder | None = None
        super().__init__(folder, bundle, threads)

    def _encoder_session(self, options: Any) -> Any:
        if self._openvino is None:  # compiled once, shared by the spinning and quiet session pairs
            self._openvino = OpenVinoEncoder(self.folder / ENCODER_FILE, self.threads)
        return self._openvino

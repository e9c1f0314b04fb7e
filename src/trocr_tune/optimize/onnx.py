"""onnx / onnx-int8 / openvino: export to ONNX (torch.onnx, dynamo exporter) and decode in ONNX
Runtime (`openvino`: the encoder graph compiled by OpenVINO, the decoder steps in ONNX Runtime).

Optimum's exporter pins transformers < 4.58, so the graphs are exported here:
- `encoder.onnx`: pixel_values -> the cross-attention keys and values of every decoder layer
  (computed once per image, as a KV cache would), and the encoder's states (CTC rescoring);
- `decoder.onnx`: one decoding step for `beams` rows per image: token ids (images, beams), the
  rows of the past each row continues (`beam_rows`), the self-attention past and each image's
  cross keys/values -> next-token logits + the grown past. The beams of an image attend to its
  one copy of the cross keys in one product, and the beam reorder is a gather inside the graph, so
  no copy of the past is made outside it (docs/benchmark.md, "Beam search in ONNX Runtime").
The decoder step is written from the TrOCR decoder's own modules (post-LN layers, learned or
sinusoidal positions) so the graph has plain tensor inputs; parity tests check its readings
against the torch engine's.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import OptimizeConfig
from ..decoding.onnx import (
    BEAM_ROWS,
    DECODER_FILE,
    ENCODER_FILE,
    ENCODER_STATES,
    OnnxRunner,
    OpenVinoRunner,
    require_ort,
)
from ..errors import UserError
from ..model.loading import ModelBundle


class EncoderGraph(nn.Module):
    """pixel_values -> (cross_k_0, cross_v_0, ..., cross_k_{L-1}, cross_v_{L-1}, encoder_states)."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.encoder = model.encoder
        cfg = model.config
        # VisionEncoderDecoderModel has this projection exactly when its forward applies it.
        self.proj = getattr(model, "enc_to_dec_proj", None)
        self.layers = model.decoder.model.decoder.layers
        self.heads = cfg.decoder.decoder_attention_heads

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, ...]:
        states = self.encoder(pixel_values=pixel_values).last_hidden_state
        hidden = self.proj(states) if self.proj is not None else states
        b, s, _ = hidden.shape
        out = []
        for layer in self.layers:
            attn = layer.encoder_attn
            # Keys as (images, heads, head_dim, source), ready for the query product.
            out.append(attn.k_proj(hidden).view(b, s, self.heads, -1).permute(0, 2, 3, 1))
            out.append(attn.v_proj(hidden).view(b, s, self.heads, -1).transpose(1, 2))
        return (*out, states)  # the encoder's own states last: beam rescoring reads their CTC


class DecoderStep(nn.Module):
    """One decoding step of a TrOCR decoder with explicit self/cross key-value tensors."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        cfg = model.config.decoder
        decoder = model.decoder.model.decoder
        self.embed_tokens = decoder.embed_tokens
        self.embed_positions = decoder.embed_positions
        self.layernorm_embedding = decoder.layernorm_embedding
        self.layers = decoder.layers
        self.output_projection = model.decoder.output_projection
        self.heads = cfg.decoder_attention_heads
        self.learned_positions = cfg.use_learned_position_embeddings
        self.padding_idx = cfg.pad_token_id

    def _positions(self, input_ids: torch.Tensor, past_length: torch.Tensor) -> torch.Tensor:
        if self.learned_positions:  # TrOCRLearnedPositionalEmbedding: offset 2
            return self.embed_positions.weight[past_length + 2].expand(input_ids.shape[0], 1, -1)
        # Sinusoidal: position = padding_idx + 1 + past length (the step's token is never padding).
        table = self.embed_positions.weights.to(self.embed_tokens.weight.dtype)
        return table[past_length + self.padding_idx + 1].expand(input_ids.shape[0], 1, -1)

    def forward(
        self, input_ids: torch.Tensor, beam_rows: torch.Tensor, *cache: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        """input_ids (images, beams); beam_rows (images, beams): the past row each row continues."""
        n = len(self.layers)
        past, cross = cache[: 2 * n], cache[2 * n :]
        images, beams = input_ids.shape
        rows = beam_rows.reshape(-1)
        past_length = torch.tensor(past[0].shape[2], dtype=torch.long)
        ids = input_ids.reshape(-1, 1)
        x = (self.embed_tokens(ids) + self._positions(ids, past_length))[:, 0]
        if self.layernorm_embedding is not None:
            x = self.layernorm_embedding(x)
        present = []
        for i, layer in enumerate(self.layers):
            sa = layer.self_attn
            h, d = self.heads, sa.head_dim
            q = (sa.q_proj(x) * sa.scaling).view(-1, h, 1, d)
            k = torch.cat([past[2 * i].index_select(0, rows), sa.k_proj(x).view(-1, h, 1, d)], dim=2)
            v = torch.cat([past[2 * i + 1].index_select(0, rows), sa.v_proj(x).view(-1, h, 1, d)], dim=2)
            present += [k, v]
            mixed = torch.softmax(q @ k.transpose(-1, -2), dim=-1) @ v
            x = layer.self_attn_layer_norm(x + sa.out_proj(mixed.reshape(x.shape)))
            ca = layer.encoder_attn
            q = (ca.q_proj(x) * ca.scaling).view(images, beams, h, d).transpose(1, 2)
            mixed = (torch.softmax(q @ cross[2 * i], dim=-1) @ cross[2 * i + 1]).transpose(1, 2)
            x = layer.encoder_attn_layer_norm(x + ca.out_proj(mixed.reshape(x.shape)))
            x = layer.final_layer_norm(x + layer.fc2(layer.activation_fn(layer.fc1(x))))
        logits = self.output_projection(x)
        return (logits, *present)


def export(model: Any, out_dir: Path, height: int, width: int, opset: int = 18) -> tuple[Path, Path]:
    """Write encoder.onnx and decoder.onnx for `model` (fp32, eval mode, eager attention)."""
    from torch.export import Dim

    model = model.float().eval().cpu()
    with contextlib.suppress(Exception):
        model.encoder.set_attn_implementation("eager")  # plain matmul + softmax in the graph
    dec_cfg = model.config.decoder
    n, heads = dec_cfg.decoder_layers, dec_cfg.decoder_attention_heads
    head_dim = dec_cfg.d_model // heads
    batch, beams = Dim("images", min=1, max=4096), Dim("beams", min=1, max=256)
    past_rows = Dim("past_rows", min=1, max=1 << 20)
    past_len, enc_len = Dim("past", min=0, max=8192), Dim("source", min=1, max=65536)
    pixels = torch.zeros(2, 3, height, width)
    encoder, step = EncoderGraph(model).eval(), DecoderStep(model).eval()
    with torch.inference_mode():
        cross = encoder(pixels)[:-1]
    # Example sizes all different, so the exporter ties no two of them together.
    past = tuple(torch.zeros(5, heads, 4, head_dim) for _ in range(2 * n))
    ids = torch.ones(2, 3, dtype=torch.long)
    beam_rows = torch.tensor([[0, 1, 2], [3, 4, 4]])
    names_past = [f"past_{kind}_{i}" for i in range(n) for kind in ("key", "value")]
    names_cross = [f"cross_{kind}_{i}" for i in range(n) for kind in ("key", "value")]
    cross_dims = [{0: batch, 3: enc_len} if i % 2 == 0 else {0: batch, 2: enc_len} for i in range(2 * n)]
    out_dir.mkdir(parents=True, exist_ok=True)
    enc_path, dec_path = out_dir / ENCODER_FILE, out_dir / DECODER_FILE
    log = io.StringIO()
    # The exporter warns once per missing torchvision operator; torchvision is deliberately absent.
    registration = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registration.level
    registration.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(log), torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # exporter chatter (axis renames, deprecations)
            torch.onnx.export(
                encoder,
                (pixels,),
                str(enc_path),
                dynamo=True,
                opset_version=opset,
                external_data=False,
                input_names=["pixel_values"],
                output_names=[*names_cross, ENCODER_STATES],
                dynamic_shapes={"pixel_values": {0: batch}},
            )
            torch.onnx.export(
                step,
                (ids, beam_rows, *past, *cross),
                str(dec_path),
                dynamo=True,
                opset_version=opset,
                external_data=False,
                input_names=["input_ids", BEAM_ROWS, *names_past, *names_cross],
                output_names=["logits", *[n.replace("past_", "present_") for n in names_past]],
                dynamic_shapes=(
                    {0: batch, 1: beams},
                    {0: batch, 1: beams},
                    (*({0: past_rows, 2: past_len} for _ in past), *cross_dims),
                ),
            )
    finally:
        registration.setLevel(level)
    return enc_path, dec_path


def quantize_graphs(src: Path, dst: Path) -> None:
    """ONNX Runtime dynamic int8 quantization of both graphs (weights int8, activations at run time)."""
    require_ort()
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    dst.mkdir(parents=True, exist_ok=True)
    for name in (ENCODER_FILE, DECODER_FILE):
        # ONNX Runtime's recommended pre-processing (shape inference + graph optimisation)
        # lets the quantizer see every MatMul it can convert.
        prepared = src / f"prepared-{name}"
        quant_pre_process(str(src / name), str(prepared), skip_symbolic_shape=True)
        quantize_dynamic(str(prepared), str(dst / name), weight_type=QuantType.QInt8)
        prepared.unlink()


def apply(
    bundle: ModelBundle, cfg: OptimizeConfig, device: torch.device, int8: bool, runtime: str = "onnxruntime"
) -> OnnxRunner:
    """Export to a temporary folder (and quantize) and return a runner over it."""
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="trocr-tune-onnx-"))
    export_variant(bundle, folder, cfg, int8)
    return load_onnx_runner(folder, bundle, device, runtime)


def export_shared(bundle: ModelBundle, cfg: OptimizeConfig, out: Path, names: set[str]) -> dict[str, Path]:
    """The graphs of the variants `names` (onnx, onnx-int8, openvino) from one fp32 export into
    out/NAME: the benchmark builds them this way, in one process of their own."""
    fp32 = out / "onnx"
    export_variant(bundle, fp32, cfg, int8=False)
    folders: dict[str, Path] = {name: fp32 for name in ("onnx", "openvino") if name in names}  # fp32 graphs
    if "onnx-int8" in names:
        folders["onnx-int8"] = out / "onnx-int8"
        quantize_graphs(fp32, folders["onnx-int8"])
    return folders


def save(
    bundle: ModelBundle, out: Path, cfg: OptimizeConfig, int8: bool, runtime: str = "onnxruntime"
) -> None:
    """The artifact's graphs, beside its checkpoint."""
    export_variant(bundle, out, cfg, int8)


def load(
    folder: Path, bundle: ModelBundle, device: torch.device, int8: bool = False, runtime: str = "onnxruntime"
) -> OnnxRunner:
    return load_onnx_runner(folder, bundle, device, runtime)


def export_variant(bundle: ModelBundle, folder: Path, cfg: OptimizeConfig, int8: bool) -> None:
    require_ort()
    model = copy.deepcopy(bundle.model)
    if not int8:
        export(model, folder, bundle.info.image_height, bundle.info.image_width, cfg.onnx_opset)
        return
    fp32 = folder / "fp32"
    export(model, fp32, bundle.info.image_height, bundle.info.image_width, cfg.onnx_opset)
    quantize_graphs(fp32, folder)
    for name in (ENCODER_FILE, DECODER_FILE):
        (fp32 / name).unlink()
    fp32.rmdir()


def load_onnx_runner(
    folder: Path, bundle: ModelBundle, device: torch.device, runtime: str = "onnxruntime"
) -> OnnxRunner:
    if device.type != "cpu":
        raise UserError("the onnx variants run on CPU (ONNX Runtime CPU execution provider)")
    if not (folder / ENCODER_FILE).is_file():
        raise UserError(f"{folder}: {ENCODER_FILE} missing; re-run trocr-tune optimize for this variant")
    return OpenVinoRunner(folder, bundle) if runtime == "openvino" else OnnxRunner(folder, bundle)


def why_not(facts: dict[str, Any], int8: bool, runtime: str = "onnxruntime") -> str:
    """Why the ONNX Runtime graphs do not pay, from the baseline's measured time shares."""
    from . import at_most

    outside = 1 - facts["op_share"]
    parts = []
    if runtime == "openvino":
        share = facts["encoder_share"]
        return (
            f"OpenVINO runs only the encoder ({share:.0%} of fp32's time here: at most {at_most(share):.2f}x "
            "if it were free), "
            + (
                "in bf16, whose rounding can change readings"
                if facts.get("native_bf16")
                else "in f32 (this CPU has no native bf16), as fast as ONNX Runtime's"
            )
        )
    if int8:
        parts.append(
            f"ONNX Runtime's int8 covers MatMul/Gemm only ({facts['linear_share']:.0%} of fp32's time here), "
            "convolutions stay fp32 and every decoder step quantizes its activations anew"
        )
        if not facts.get("int8_dot"):
            parts.append("this CPU has no VNNI/AMX int8 instructions")
    parts.append(
        "ONNX Runtime saves the overhead around the operators, not their arithmetic: fp32 spends "
        f"{outside:.0%} of its time outside its operators here (at most {at_most(outside):.2f}x if that went)"
    )
    if facts.get("beams", 1) > 1:
        parts.append(
            "with beams, only the decoder steps run in ONNX Runtime: the search around them, LM fusion and "
            "the rescoring run in the same torch code as fp32's"
        )
    return "; ".join(parts)

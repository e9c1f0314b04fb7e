"""Optimized variants: each decodes, parity with fp32, compiled graphs run, pruning persists."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from PIL import Image
from transformers import VisionEncoderDecoderModel

from trocr_tune.config import EvalConfig, OptimizeConfig, load_config
from trocr_tune.decoding import DecodeSettings, transcribe
from trocr_tune.decoding.runners import TorchRunner
from trocr_tune.metrics import compute_metrics
from trocr_tune.model.loading import load_bundle
from trocr_tune.optimize import VARIANTS, load_runner
from trocr_tune.optimize.compile import compile_for_decoding
from trocr_tune.optimize.prune import prunable_linears, prune_l1, sparsity
from trocr_tune.optimize.run import generate_flops, optimize_model, parameter_count
from trocr_tune.optimize.structured import prune_structured
from trocr_tune.runtime import cpu_has_native_bf16

from conftest import run_cli, run_main

CPU = torch.device("cpu")
# Stated tolerance for the lossy variants (int8 / bf16) on the fixture: absolute CER difference.
LOSSY_CER_TOLERANCE = 0.02


@pytest.fixture(scope="module")
def bundle(tiny_run: Path):
    return load_bundle(tiny_run / "model")


@pytest.fixture(scope="module")
def images(words: Path) -> list[str]:
    return [json.loads(line)["image"] for line in words.read_text().splitlines()][:12]


@pytest.fixture(scope="module")
def baseline(bundle, images) -> list[str]:
    predictions, _ = transcribe(bundle, images, load_config().eval)
    return [p.text for p in predictions]


def decode(bundle, images, runner) -> list[str]:
    predictions, _ = transcribe(bundle, images, load_config(None, ["eval.batch_size=5"]).eval, runner=runner)
    assert all(isinstance(p.text, str) and p.confidence <= 0 for p in predictions)
    return [p.text for p in predictions]


def test_registry_matches_cli_choices() -> None:
    proc = run_cli("optimize", "--help")
    for name in VARIANTS:
        if name != "fp32":
            assert name in proc.stdout
    assert "re-quantized at load" in proc.stdout


@pytest.mark.parametrize("name", ["int8-dynamic", "bf16"])
def test_lossy_variants_within_tolerance(name: str, bundle, images, baseline) -> None:
    if name == "bf16" and not cpu_has_native_bf16():
        pytest.skip("this CPU has no native bf16")
    texts = decode(bundle, images, VARIANTS[name].apply(bundle, OptimizeConfig(), CPU))
    assert all(texts)
    difference = compute_metrics(texts, baseline).cer
    assert difference <= LOSSY_CER_TOLERANCE, (texts, baseline)


def test_the_generate_reference_reads_what_the_engine_reads(bundle, images, baseline) -> None:
    """`generate` (the benchmark's reference row) decodes with Transformers' plain generate and
    its own cache, and reads the same texts as fp32's engine."""
    runner = VARIANTS["generate"].apply(bundle, OptimizeConfig(), CPU)
    assert not runner.engine and not runner.fast and not runner.channels_last
    assert decode(bundle, images, runner) == baseline


def test_int8_really_quantizes(bundle) -> None:
    runner = VARIANTS["int8-dynamic"].apply(bundle, OptimizeConfig(), CPU)
    kinds = {type(m).__module__ for m in runner.model.modules()}
    assert any("quantized.dynamic" in k for k in kinds)
    assert not any(
        isinstance(m, torch.nn.Linear) and type(m) is torch.nn.Linear for m in runner.model.modules()
    )


def test_onnx_greedy_equals_pytorch_greedy(bundle, images, baseline) -> None:
    runner = VARIANTS["onnx"].apply(bundle, OptimizeConfig(), CPU)
    assert decode(bundle, images, runner) == baseline
    torch_runner = TorchRunner(bundle.model, bundle.tokenizer, CPU)
    pixels = bundle.image_processor(
        images=[Image.open(p).convert("RGB") for p in images[:3]], return_tensors="pt"
    )["pixel_values"]
    greedy = DecodeSettings(max_new_tokens=bundle.info.max_new_tokens)
    ours, theirs = runner.generate_batch(pixels, greedy), torch_runner.generate_batch(pixels, greedy)
    for a, b in zip(ours, theirs, strict=True):
        assert a.text == b.text and a.confidence == pytest.approx(b.confidence, abs=1e-4)
    # LM fusion, beam search and CTC/LM rescoring run the engine's search over the decoder graph
    # (OrtSteps), rescored on the torch model's heads: the same readings as the torch runner.
    assert bundle.char_lm is not None
    accurate = EvalConfig(
        num_beams=3, ctc_rescore=0.5, lm_weight=0.3, lm_fusion=0.3, rescore_length_bonus=1.0
    )
    for settings in (
        replace(greedy, fusion_weight=0.5, fusion_lm=bundle.char_lm),
        DecodeSettings.from_eval(bundle, accurate, bundle.info.max_new_tokens),
        # Joint CTC-attention decoding: the CTC prefix scores follow the beams of either engine.
        DecodeSettings.from_eval(bundle, EvalConfig(num_beams=3, ctc_joint=0.7), bundle.info.max_new_tokens),
        DecodeSettings.from_eval(bundle, EvalConfig(ctc_joint=0.5), bundle.info.max_new_tokens),
    ):
        ours, theirs = runner.generate_batch(pixels, settings), torch_runner.generate_batch(pixels, settings)
        for a, b in zip(ours, theirs, strict=True):
            assert a.text == b.text and a.confidence == pytest.approx(b.confidence, abs=1e-4)


def test_onnx_graphs_of_the_old_layout_are_refused_in_one_line(bundle, tmp_path: Path) -> None:
    """Graphs exported before one cross-attention copy per image (a decoder without `beam_rows`)
    cannot be read by this runner: a clear error says to re-export them."""
    import onnx
    from onnx import TensorProto, helper

    from trocr_tune.decoding.onnx import OnnxRunner
    from trocr_tune.errors import UserError

    for name, inputs in (("encoder.onnx", ["pixel_values"]), ("decoder.onnx", ["input_ids", "past_key_0"])):
        graph = helper.make_graph(
            [helper.make_node("Identity", [inputs[0]], ["out"])],
            "old",
            [helper.make_tensor_value_info(i, TensorProto.FLOAT, None) for i in inputs],
            [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)],
        )
        onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), tmp_path / name)
    expected = r"predate one cross-attention copy per image.*re-run trocr-tune optimize"
    with pytest.raises(UserError, match=expected):
        OnnxRunner(tmp_path, bundle)


def test_onnx_int8_within_tolerance(bundle, images, baseline) -> None:
    texts = decode(bundle, images, VARIANTS["onnx-int8"].apply(bundle, OptimizeConfig(), CPU))
    assert compute_metrics(texts, baseline).cer <= LOSSY_CER_TOLERANCE


def test_openvino_encoder_reads_as_onnx_runtime(
    bundle, images, baseline, tiny_run: Path, tmp_path: Path
) -> None:
    """The openvino variant compiles the exported encoder with OpenVINO (bf16 where the CPU has it
    natively, else f32) and keeps the decoder steps in ONNX Runtime: f32 reads exactly as fp32,
    bf16 within the lossy tolerance, and the encoder's outputs match ONNX Runtime's on one graph."""
    pytest.importorskip("openvino")
    import numpy as np

    from trocr_tune.decoding.onnx import OnnxRunner, OpenVinoEncoder

    runner = VARIANTS["openvino"].apply(bundle, OptimizeConfig(), CPU)
    assert isinstance(runner.encoder, OpenVinoEncoder)
    precision = runner.encoder.precision
    assert precision == ("bf16" if cpu_has_native_bf16() else "f32")
    texts = decode(bundle, images, runner)
    if precision == "f32":
        assert texts == baseline
    else:
        assert compute_metrics(texts, baseline).cer <= LOSSY_CER_TOLERANCE, (texts, baseline)
    pixels = bundle.image_processor(
        images=[Image.open(p).convert("RGB") for p in images[:4]], return_tensors="pt"
    )["pixel_values"].numpy()
    ours = runner.encoder.run(None, {"pixel_values": pixels})
    theirs = OnnxRunner(runner.folder, bundle).encoder.run(None, {"pixel_values": pixels})
    tolerance = 1e-4 if precision == "f32" else 0.05
    for a, b in zip(ours, theirs, strict=True):
        assert a.shape == b.shape
        assert np.abs(a - b).max() <= tolerance * max(1.0, float(np.abs(b).max()))
    # Saved by `optimize` and loaded back, the artifact is the same variant, read the same way.
    optimize_model(str(tiny_run / "model"), "openvino", tmp_path / "ov", load_config())
    _, loaded = load_runner(tmp_path / "ov", CPU)
    assert isinstance(loaded.encoder, OpenVinoEncoder)
    assert decode(bundle, images, loaded) == texts


def test_compiled_inference_executes_compiled_graphs(bundle, images, baseline) -> None:
    """Dynamo captures the encoder, and every batch calls into its graph; a TrOCR decoder stays
    with the engine's own loop. A decoder the loop does not take is compiled and `generate`
    calls into its graph at every step."""
    import copy

    model = copy.deepcopy(bundle.model).eval()
    stats = compile_for_decoding(model, "default", backend="eager")
    runner = TorchRunner(model, bundle.tokenizer, CPU)
    assert runner.fast
    texts = decode(bundle, images, runner)
    assert texts == baseline
    assert stats.graphs["encoder"] >= 1 and "decoder" not in stats.graphs
    assert stats.calls["encoder"] == 3  # 12 lines in batches of 5: one encoder call per batch
    # The uncompiled reference path never touches the counters.
    before = dict(stats.calls)
    transcribe(bundle, images[:2], load_config().eval)
    assert dict(stats.calls) == before

    other = copy.deepcopy(bundle.model).eval()
    other.generation_config.forced_eos_token_id = other.generation_config.eos_token_id  # not the loop's
    stats = compile_for_decoding(other, "default", backend="eager")
    runner = TorchRunner(other, bundle.tokenizer, CPU)
    assert not runner.fast
    assert decode(bundle, images, runner) == baseline
    assert stats.graphs["decoder"] >= 1 and stats.calls["decoder"] >= 3 * 2  # start + a token per batch


@pytest.mark.slow
def test_compile_default_with_inductor_matches_eager(bundle, images, baseline) -> None:
    runner = VARIANTS["compile-default"].apply(bundle, OptimizeConfig(), CPU)
    assert decode(bundle, images[:5], runner) == baseline[:5]
    calls = runner.compile_stats.as_dict()["calls"]
    assert calls["encoder"] == 1 and runner.fast  # the engine's loop decodes the TrOCR decoder


def test_prune_l1_masks_persist_through_finetune(tiny_run: Path, words: Path, tmp_path: Path) -> None:
    finetune = load_config(
        None,
        [
            "data.layout=manifest",
            f"data.root={words}",
            "train.max_steps=12",
            "train.eval_steps=6",
            "train.num_workers=0",
            "train.learning_rate=3e-3",
        ],
    )
    cfg = load_config(None, ["optimize.prune_amount=0.4"])
    report = optimize_model(str(tiny_run / "model"), "prune-l1", tmp_path / "pruned", cfg, finetune)
    assert report["sparsity_after_pruning"]["overall"] == pytest.approx(0.4, abs=1e-3)
    assert report["sparsity"]["overall"] == pytest.approx(0.4, abs=1e-3)  # after 12 fine-tuning steps
    assert report["finetune"]["train"]["optimizer_steps"] == 12
    # A plain checkpoint: Transformers loads it, zeros included.
    plain = VisionEncoderDecoderModel.from_pretrained(tmp_path / "pruned")
    modules = prunable_linears(plain, "both", False)
    assert sparsity(modules)["overall"] == pytest.approx(0.4, abs=1e-3)
    assert "decoder.output_projection" not in modules
    info = json.loads((tmp_path / "pruned" / "trocr_tune.json").read_text())
    assert info["extra"]["variant"] == "prune-l1" and info["extra"]["finetune_seconds_per_epoch"] > 0
    _, runner = load_runner(tmp_path / "pruned", CPU)
    assert isinstance(runner, TorchRunner)


def test_without_mask_keeper_pruned_weights_grow_back(tiny_run: Path, words: Path, tmp_path: Path) -> None:
    """Negative control: the reference project's bug (masks gone during fine-tuning)."""
    from dataclasses import replace

    from trocr_tune.model.loading import save_bundle
    from trocr_tune.train import train

    bundle = load_bundle(tiny_run / "model")
    prune_l1(bundle.model, OptimizeConfig(prune_amount=0.4))
    save_bundle(bundle, tmp_path / "start")
    cfg = load_config(
        None,
        [
            "data.layout=manifest",
            f"data.root={words}",
            "train.max_steps=6",
            "train.num_workers=0",
            f"model.name_or_path={tmp_path / 'start'}",
            "model.image_height=32",
            "model.image_width=128",
            f"train.output_dir={tmp_path / 'run'}",
        ],
    )
    result = train(replace(cfg))  # no MaskKeeper
    tuned = VisionEncoderDecoderModel.from_pretrained(result.model_dir)
    assert sparsity(prunable_linears(tuned, "both", False))["overall"] < 0.05


def test_prune_output_projection_unties_embeddings(bundle, tmp_path: Path) -> None:
    import copy

    model = copy.deepcopy(bundle.model)
    embeddings_before = model.decoder.get_input_embeddings().weight.detach().clone()
    report = prune_l1(
        model,
        OptimizeConfig(
            prune_amount=0.5, prune_scope="decoder", prune_output_projection=True, prune_global=False
        ),
    )
    assert report["decoder.output_projection"] == pytest.approx(0.5, abs=1e-3)
    assert torch.equal(
        model.decoder.get_input_embeddings().weight, embeddings_before
    )  # embeddings stay dense
    model.save_pretrained(tmp_path)
    again = VisionEncoderDecoderModel.from_pretrained(tmp_path)
    assert float((again.decoder.output_projection.weight == 0).float().mean()) == pytest.approx(0.5, abs=1e-3)
    assert torch.equal(again.decoder.get_input_embeddings().weight, embeddings_before)


def test_prune_structured_shrinks_params_and_flops(bundle, tmp_path: Path) -> None:
    import copy

    model = copy.deepcopy(bundle.model)
    h, w = bundle.info.image_height, bundle.info.image_width
    enc_layers = model.encoder.layers

    def block_params(m) -> int:
        enc = sum(
            p.numel()
            for layer in m.encoder.layers
            for name, p in layer.named_parameters()
            if any(k in name for k in ("q_proj", "k_proj", "v_proj", "o_proj.weight", "fc1", "fc2.weight"))
        )
        dec = sum(
            p.numel()
            for layer in m.decoder.model.decoder.layers
            for name, p in layer.named_parameters()
            if name.startswith("fc1") or name == "fc2.weight"
        )
        return enc + dec

    before_blocks, before_total = block_params(model), parameter_count(model)
    flops_before = generate_flops(model, h, w)
    report = prune_structured(model, 0.5)
    assert report["encoder_heads"] == [2, 1] and report["encoder_intermediate"] == [256, 128]
    assert block_params(model) == pytest.approx(before_blocks * 0.5, rel=0.01)
    assert parameter_count(model) < before_total
    flops_after = generate_flops(model, h, w)
    # Encoder FLOPs: the patch embedding is unchanged, the transformer blocks halve.
    assert flops_after["encoder"] < flops_before["encoder"] * 0.6
    assert flops_after["decoder"] < flops_before["decoder"]
    assert len(enc_layers) == len(model.encoder.layers)
    model.save_pretrained(tmp_path)
    plain = VisionEncoderDecoderModel.from_pretrained(tmp_path).eval()
    pixels = torch.rand(2, 3, h, w)
    with torch.inference_mode():
        assert torch.equal(plain.generate(pixels, max_length=8), model.eval().generate(pixels, max_length=8))


def test_optimize_cli_and_artifacts_load_everywhere(tiny_run: Path, words: Path, tmp_path: Path) -> None:
    model = str(tiny_run / "model")
    for variant in ("int8-dynamic", "onnx"):
        out = tmp_path / variant
        proc = run_cli("optimize", model, "--variant", variant, "--out", str(out))
        assert proc.returncode == 0, proc.stderr[-2000:]
        report = json.loads((out / "optimize.json").read_text())
        assert report["variant"] == variant and report["size_bytes"] > 0
    ev = run_cli(
        "evaluate",
        str(tmp_path / "onnx"),
        "data.layout=manifest",
        f"data.root={words}",
        "--out",
        str(tmp_path / "ev"),
    )
    assert ev.returncode == 0, ev.stderr[-2000:]
    assert json.loads((tmp_path / "ev" / "metrics.json").read_text())["n"] == 4
    pred = run_main(
        "predict", str(tmp_path / "int8-dynamic"), json.loads(words.read_text().splitlines()[0])["image"]
    )
    assert pred.returncode == 0 and pred.stdout.count("\t") == 2
    for variant in ("prune-structured", "compile-default"):  # in-process: artifacts reload as their variant
        optimize_model(model, variant, tmp_path / variant, load_config())
        _, runner = load_runner(tmp_path / variant, CPU)
        assert isinstance(runner, TorchRunner)
    assert hasattr(load_runner(tmp_path / "compile-default", CPU)[1], "compile_stats")
    assert (tmp_path / "onnx" / "encoder.onnx").is_file() and (tmp_path / "onnx" / "decoder.onnx").is_file()
    recipe = tmp_path / "ft.yaml"
    recipe.write_text(f"data:\n  layout: manifest\n  root: {words}\n")
    bad = run_main(
        "optimize",
        model,
        "--variant",
        "int8-dynamic",
        "--out",
        str(tmp_path / "x"),
        "--finetune",
        str(recipe),
    )
    assert bad.returncode == 2 and "--finetune applies to the variants that change the weights" in bad.stderr
    again = run_main(
        "optimize", str(tmp_path / "int8-dynamic"), "--variant", "onnx", "--out", str(tmp_path / "y")
    )
    assert again.returncode == 2 and "already a int8-dynamic artifact" in again.stderr

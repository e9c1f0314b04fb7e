"""The `trocr-tune` command line: thin commands that build a config and call one library function."""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import click

from .config import Config, load_config
from .errors import UserError
from .files import atomic_write_text
from .runtime import is_main_process

CONFIG_HELP = (
    "CONFIG is an optional YAML recipe (see configs/); each KEY=VALUE overrides one dotted key, "
    "e.g. data.layout=alto data.root=pages/ data.group_by=manuscript. Unknown keys fail and name the "
    "nearest valid key."
)


def split_config_args(args: Sequence[str]) -> tuple[str | None, list[str]]:
    """[CONFIG] [KEY=VALUE ...] -> (config path or None, overrides)."""
    path = None
    overrides = list(args)
    if overrides and "=" not in overrides[0]:
        path = overrides.pop(0)
    stray = [a for a in overrides if "=" not in a]
    if stray:
        raise UserError(f"expected KEY=VALUE after the config file, got {stray[0]!r}")
    return path, overrides


def only_keys(command: str, overrides: Sequence[str], allowed: tuple[str, ...]) -> None:
    """Refuse KEY=VALUE overrides outside `allowed` (prefixes such as "eval." or whole keys)."""
    for item in overrides:
        if not item.split("=", 1)[0].startswith(allowed):
            prefixes = [a + "*" for a in allowed if a.endswith(".")]
            keys = [a.removeprefix("data.") for a in allowed if not a.endswith(".")]
            raise UserError(
                f"{command} reads only {', '.join(prefixes)} and data.{' / '.join(keys)}; got {item!r}"
            )


def config_from_args(args: Sequence[str]) -> Config:
    return load_config(*split_config_args(args))


def _layouts_help() -> str:
    from .data.layouts import LAYOUTS

    return "\b\nLayouts (data.layout), and the data.group_by keys each gives:\n" + "\n".join(
        f"  {name:<15} {layout.summary}"
        + (f" [group_by: {', '.join(layout.groups)}]" if layout.groups else "")
        for name, layout in LAYOUTS.items()
    )


# data synth and data pretrain-set draw in the same fonts.
FONT_DIR_OPTION = click.option(
    "--font-dir",
    "font_dirs",
    multiple=True,
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    help="A folder of extra handwriting fonts (.ttf/.otf/.woff/.woff2, one hand per file), used "
    "beside the installed ones; repeatable. scripts/fetch_fonts.py downloads 115 handwriting "
    "fonts (OFL or Apache 2.0) into one.",
)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(package_name="trocr-tune")
def cli() -> None:
    """trocr-tune: fine-tune, evaluate, optimize and serve TrOCR handwriting recognizers.

    \b
    Commands take an optional YAML config and KEY=VALUE overrides, e.g.
      trocr-tune data check data.layout=kaggle-names data.root=DIR --manifest out.jsonl
    Bad input is reported in one line with exit code 2.
    """


@cli.group()
def data() -> None:
    """Inspect and convert datasets."""


@data.command("check", epilog=_layouts_help())
@click.argument("args", nargs=-1, metavar="[CONFIG] [KEY=VALUE]...")
@click.option(
    "--manifest",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the cleaned records as JSONL (image, text, split, id, source, meta); "
    "the resolved config is saved beside it as NAME.config.yaml.",
)
@click.option(
    "--json",
    "json_out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also write the full report as JSON.",
)
@click.option(
    "--alphabet-limit",
    default=120,
    show_default=True,
    help="Characters of each split's alphabet to print (most frequent first).",
)
def data_check(
    args: tuple[str, ...], manifest: Path | None, json_out: Path | None, alphabet_limit: int
) -> None:
    """Read a dataset, clean and split it, and report what was kept and dropped.

    Prints per split: sample counts, dropped samples by reason (with examples naming the
    file/row), the alphabet with frequencies, and text-length and image-size percentiles.
    Only image headers are read, so large datasets stream. CONFIG_HELP
    """
    from .data.check import check_dataset, print_check_report

    cfg = config_from_args(args)
    report = check_dataset(cfg, manifest)
    print_check_report(report, alphabet_limit=alphabet_limit)
    if json_out:
        atomic_write_text(json_out, report.to_json())


data_check.help = (data_check.help or "").replace("CONFIG_HELP", CONFIG_HELP)


@data.command("preview")
@click.argument("args", nargs=-1, metavar="[CONFIG] [KEY=VALUE]...")
@click.option(
    "--out", type=click.Path(dir_okay=False, path_type=Path), required=True, help="PNG file to write."
)
@click.option("-n", "--count", default=16, show_default=True, help="Number of samples to draw.")
@click.option(
    "--split",
    default="train",
    show_default=True,
    type=click.Choice(["train", "validation", "test"]),
    help="Split to draw from.",
)
def data_preview(args: tuple[str, ...], out: Path, count: int, split: str) -> None:
    """Draw augmented samples (train.augment policy) as the model sees them, with their text.

    Each tile shows the image after augmentation and the model's input geometry
    (model.geometry, model.image_height x model.image_width). CONFIG_HELP
    """
    from .preview import preview

    path = preview(config_from_args(args), out, count, split)
    click.echo(f"wrote {path}")


@data.command("synth")
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Dataset folder to write (images/ + manifest.jsonl).",
)
@click.option("--lines", type=click.IntRange(min=1), required=True, help="Number of line images.")
@click.option(
    "--seed",
    default=0,
    show_default=True,
    type=click.IntRange(min=0),
    help="Line i depends only on (seed, i).",
)
@click.option(
    "--height",
    default=64,
    show_default=True,
    type=click.IntRange(min=8),
    help="Image height in pixels (width follows the text).",
)
@click.option(
    "--test-fonts",
    default=None,
    help="Comma-separated fonts held out for the test split (default: kalam,shadows-into-light).",
)
@click.option(
    "--val-fraction",
    default=0.05,
    show_default=True,
    help="Share of lines in the validation split (training fonts).",
)
@click.option(
    "--test-fraction",
    default=0.1,
    show_default=True,
    help="Share of lines in the test split (held-out fonts, held-out digit images).",
)
@click.option(
    "--digits-fraction",
    default=0.1,
    show_default=True,
    help="Share of lines composed of real handwritten digits (scikit-learn).",
)
@click.option(
    "--kinds",
    default=None,
    help="Text kinds and weights, e.g. name=3,date=1 "
    "(kinds: name, word_es, word_en, phrase_es, phrase_en, date, amount, corpus).",
)
@click.option(
    "--print-fonts/--no-print-fonts",
    default=True,
    show_default=True,
    help="Also render training and validation lines in eight common printed fonts (fontpkg-*, "
    "OFL): more letter shapes; test lines stay handwriting.",
)
@click.option(
    "--print-share",
    default=0.36,  # synth.DEFAULT_PRINT_SHARE (a test keeps them equal; synth imports OpenCV)
    show_default=True,
    type=click.FloatRange(0, 1),
    help="Share of the training and validation font lines drawn in the printed fonts.",
)
@click.option(
    "--corpus",
    default=None,
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="UTF-8 text file, one line of text per line (e.g. your own transcriptions): adds the text "
    "kind 'corpus' and, without --kinds, draws every font line from it.",
)
@click.option(
    "--styles",
    default=None,
    help="Scan styles and weights, e.g. form=2,letter=2,parchment=1,plain=1 (form: spaced capitals, "
    "field labels and rules; letter: cursive, ruled paper, neighbouring lines; parchment: old "
    "stained paper); every styled line gets scanner noise and JPEG artefacts.",
)
@click.option(
    "--workers",
    default=None,
    type=click.IntRange(min=1),
    help="Rendering processes (default: all CPU cores); output is identical for any number.",
)
@FONT_DIR_OPTION
def data_synth(
    out: Path,
    lines: int,
    seed: int,
    height: int,
    test_fonts: str | None,
    val_fraction: float,
    test_fraction: float,
    digits_fraction: float,
    kinds: str | None,
    print_fonts: bool,
    print_share: float,
    corpus: Path | None,
    styles: str | None,
    workers: int | None,
    font_dirs: tuple[Path, ...],
) -> None:
    """Render synthetic handwriting lines in the manifest layout (offline, reproducible).

    Handwriting fonts from the fontpkg-* packages (OFL) with per-glyph jitter, slant, baseline
    wobble, stroke width, ink and paper variation, plus numbers, dates and amounts composed of
    real handwritten digits from scikit-learn; training lines also use eight printed fonts
    for --print-share of the font lines (--no-print-fonts: none). The test split uses
    handwriting fonts never seen in training.
    Read the result with data.layout=manifest data.root=OUT/manifest.jsonl.
    """
    import os

    from .data.synth import synthesize
    from .data.synth_scan import parse_styles

    weights = None
    if kinds:
        try:
            weights = {k.strip(): float(v) for k, v in (item.split("=") for item in kinds.split(","))}
        except ValueError:
            raise UserError(f"--kinds must look like name=3,date=1, got {kinds!r}") from None
    report = synthesize(
        out,
        lines,
        seed=seed,
        height=height,
        test_fonts=test_fonts.split(",") if test_fonts else None,
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        kinds=weights,
        digits_fraction=digits_fraction,
        print_fonts=print_fonts,
        print_share=print_share,
        corpus=corpus,
        styles=parse_styles(styles),
        workers=workers or os.cpu_count() or 1,
        font_dirs=font_dirs,
    )
    for row in report.summary():
        click.echo(row)


@data.command("export", epilog=_layouts_help())
@click.argument("args", nargs=-1)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Folder to write (images/ + manifest.jsonl).",
)
@click.option(
    "--height",
    default=64,
    show_default=True,
    type=click.IntRange(min=8),
    help="Scale taller line images down to this height (0 keeps them).",
)
@click.option(
    "--format",
    "image_format",
    type=click.Choice(["jpg", "png"]),
    default="jpg",
    show_default=True,
    help="Image file format of the exported lines.",
)
def data_export(args: tuple[str, ...], out: Path, height: int, image_format: str) -> None:
    """Export a dataset's cleaned, split lines as grey line images + manifest.jsonl.

    Pages are cropped into lines and every split and group key (manuscript, writer, page) is kept,
    so data.layout=manifest data.root=OUT/manifest.jsonl reads exactly the same samples. CONFIG_HELP
    """
    from .data.export import export_dataset

    cfg = config_from_args(args)
    counts = export_dataset(cfg.data, out, height or None, image_format)
    click.echo(", ".join(f"{k} {v}" for k, v in counts.items()) + f" -> {out / 'manifest.jsonl'}")


data_export.help = (data_export.help or "").replace("CONFIG_HELP", CONFIG_HELP)


@data.command("pretrain-set")
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Folder to write (real/, synth/, corpus.txt, manifest.jsonl).",
)
@click.option(
    "--real",
    "real",
    type=(click.Path(dir_okay=False, exists=True, path_type=Path), str),
    multiple=True,
    help="A real corpus: its recipe (YAML) and its data.root, e.g. "
    "--real configs/htromance-alto.yaml PATH/htromance-spain. Repeatable. Its training split is "
    "trained on, its validation split validates, its test split is never read.",
)
@click.option(
    "--synth-lines",
    default=50000,
    show_default=True,
    type=click.IntRange(min=0),
    help="Scan-style synthetic lines to render (data synth with --corpus of the real transcriptions).",
)
@click.option(
    "--real-repeat",
    default=8,
    show_default=True,
    type=click.IntRange(min=1),
    help="Copies of each real training line in the manifest (augmentation keeps them apart).",
)
@click.option(
    "--height",
    default=48,
    show_default=True,
    type=click.IntRange(min=8),
    help="Height of the written line images (real lines are scaled down to it).",
)
@click.option("--seed", default=0, show_default=True, type=click.IntRange(min=0), help="Rendering seed.")
@click.option("--workers", default=None, type=click.IntRange(min=1), help="Rendering processes.")
@FONT_DIR_OPTION
def data_pretrain_set(
    out: Path,
    real: tuple[tuple[Path, str], ...],
    synth_lines: int,
    real_repeat: int,
    height: int,
    seed: int,
    workers: int | None,
    font_dirs: tuple[Path, ...],
) -> None:
    """Build a base model's pretraining set: real training lines + scan-style synthetic lines.

    The synthetic lines draw the real training transcriptions and built-in phrases, names,
    dates and amounts in every installed font, in the form / letter / parchment scan styles.
    Train on it with configs/pretrain-base.yaml (data.root=OUT/manifest.jsonl).
    """
    import os

    from .data.pretrain_set import build_pretraining_set

    sources = []
    for recipe, root in real:
        cfg = load_config(recipe, [f"data.root={root}"])
        sources.append((recipe.stem, cfg.data))
    report = build_pretraining_set(
        out,
        sources,
        synth_lines,
        seed=seed,
        height=height,
        real_repeat=real_repeat,
        workers=workers or os.cpu_count() or 1,
        font_dirs=font_dirs,
        progress=click.echo,
    )
    for row in report.summary():
        click.echo(row)


@cli.command("train")
@click.argument("args", nargs=-1, metavar="[CONFIG] [KEY=VALUE]...")
def train_command(args: tuple[str, ...]) -> None:
    """Fine-tune a TrOCR checkpoint (model.name_or_path) or train a preset (model.preset).

    Naming neither fine-tunes the shipped base, trocr-tune/base-htr. Keys you leave unset take
    the values the checkpoint recommends (trocr_tune.json `fine_tuning`; for the base: its
    geometry, learning rate, batch size, augmentation, CTC loss and LM fusion); train prints them.

    \b
    Writes train.output_dir/: config.yaml, metrics.json, curves.png, predictions.csv (validation
    set), eval/ (full evaluation report), checkpoints/ and model/ (loadable by plain
    VisionEncoderDecoderModel.from_pretrained + TrOCRProcessor.from_pretrained; with
    train.char_lm_order > 0 it also holds char_lm.json for eval.lm_weight). The best
    checkpoint is the one with the LOWEST validation CER (generate-based, never teacher forced),
    read on at most train.eval_max_lines (500) validation lines, a fixed seeded sample.
    train.resume=true continues from the last checkpoint; Ctrl-C saves one and stops.
    train.self_training_on=test|FOLDER then reads those lines without their texts, trains
    train.self_training_minutes more on its most confident readings and keeps the self-trained
    model unless its validation CER rose by more than train.self_training_tolerance (docs/training.md).
    Multi-GPU / multi-node: launch the same command with torchrun or accelerate launch.

    \b
    Examples:
      trocr-tune train data.layout=alto data.root=pages/ data.group_by=page train.max_minutes=30
      trocr-tune train data.layout=manifest data.root=lines.jsonl model.preset=tiny \\
        train.max_steps=60 train.output_dir=RUN

    CONFIG_HELP
    """
    from .train import train

    result = train(config_from_args(args))
    if not is_main_process():
        return
    if result.interrupted is not None:
        import signal

        name = signal.Signals(result.interrupted).name
        step = result.metrics["train"]["optimizer_steps"]
        saved = result.output_dir / "checkpoints"
        click.echo(
            f"trocr-tune: {name} at step {step}: a checkpoint was saved in {saved} and no final model "
            "written; run the same command with train.resume=true to continue",
            err=True,
        )
        sys.exit(128 + result.interrupted)
    if "eval" in result.metrics:
        m = result.metrics["eval"]
        click.echo(
            f"validation CER {m['cer']:.4f}  WER {m['wer']:.4f}  similarity {m['mean_similarity']:.4f}"
        )
    click.echo(f"model: {result.model_dir}")


@cli.command("evaluate")
@click.argument("model_path", metavar="MODEL")
@click.argument("args", nargs=-1, metavar="[CONFIG] [KEY=VALUE]...")
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder for metrics.json, predictions.csv, worst.csv, confusions.csv, config.yaml.",
)
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:1 ...")
@click.option(
    "--workers", default=0, show_default=True, help="DataLoader worker processes for image decoding."
)
def evaluate_command(
    model_path: str, args: tuple[str, ...], out: Path | None, device: str, workers: int
) -> None:
    """Transcribe the data.split split (default test) with MODEL and score it.

    MODEL is a checkpoint or an artifact of `trocr-tune optimize` (the variant is re-applied).

    Reports corpus CER/WER, mean per-sample CER, mean similarity, exact match (each also
    case-insensitive), the worst 20 lines, a character confusion table, time and lines/s.
    Decoding: greedy, or beam search with eval.num_beams / eval.length_penalty /
    eval.no_repeat_ngram_size; eval.ctc_rescore=W (models trained with train.ctc_weight > 0)
    picks among the beams by (1-W) decoder + W encoder-CTC log-likelihood, averaged over
    eval.rescore_views (test-time views: pad-x, pad-y, thicker, thinner, blur) where the two best
    beams are within eval.rescore_views_margin, plus eval.lm_weight x the log-probability under
    the training transcripts' character n-gram model (MODEL/char_lm.json: train.char_lm_order or
    `trocr-tune lm`) and eval.rescore_length_bonus per token. eval.lm_fusion=W adds W x that
    model's log-probability of each next character to every step of the search (shallow fusion;
    character tokenizers). eval.ctc_joint=W weighs every candidate of the search by (1-W) decoder +
    W the encoder-CTC prefix score (joint CTC-attention decoding; the real-line recipes: 0.7).
    Decoding keys not set take the model's recorded decoding (trocr_tune.json, what its training
    validated with), as predict, transcribe and serve do.
    CONFIG_HELP
    """
    from .decoding.engine import ProgressPrinter
    from .evaluate import evaluate_model, print_report, write_report

    cfg = config_from_args(args)
    report = evaluate_model(model_path, cfg, device, workers, ProgressPrinter("evaluate", sys.stderr))
    print_report(report)
    if out:
        write_report(report, out, cfg)
        click.echo(f"report: {out}")


# Decoding flags shared by predict and transcribe; each sets the eval key of the same name
# (--length-bonus: eval.rescore_length_bonus). Unset (None), the model's recorded decoding applies.
DECODING_FLAGS = {
    "num_beams": "num_beams",
    "ctc_rescore": "ctc_rescore",
    "ctc_joint": "ctc_joint",
    "lm_weight": "lm_weight",
    "lm_fusion": "lm_fusion",
    "length_bonus": "rescore_length_bonus",
}


_DECODING_OPTIONS = [
    click.option(
        "--num-beams",
        default=None,
        type=click.IntRange(min=1),
        help="Beam width (1 = greedy). Every decoding option left out takes the model's recorded decoding "
        "(what its training validated with, e.g. 4 beams and --ctc-joint 0.7), else greedy with no extras.",
    ),
    click.option(
        "--ctc-rescore",
        default=None,
        type=click.FloatRange(0.0, 1.0),
        help="With --num-beams > 1: pick among the beams by (1-W) decoder + W encoder-CTC log-likelihood "
        "(models trained with train.ctc_weight > 0; the demo evaluates with 8 beams and 0.5).",
    ),
    click.option(
        "--ctc-joint",
        default=None,
        type=click.FloatRange(0.0, 1.0),
        help="Joint CTC-attention decoding: weigh every candidate of the search (greedy or beams) "
        "(1-W) decoder + W encoder-CTC prefix score (models trained with train.ctc_weight > 0; the "
        "real-line recipes use 4 beams and 0.7).",
    ),
    click.option(
        "--lm-weight",
        default=None,
        type=click.FloatRange(min=0.0),
        help="With --num-beams > 1: add W x log p(text) under MODEL/char_lm.json, the training "
        "transcripts' character n-gram model, to each beam's score (the demo uses 0.25).",
    ),
    click.option(
        "--lm-fusion",
        default=None,
        type=click.FloatRange(min=0.0),
        help="Add W x log p(next character | text so far) under MODEL/char_lm.json to every step of the "
        "search, greedy or beams (shallow fusion; the demo uses 0.25).",
    ),
    click.option(
        "--length-bonus",
        default=None,
        type=float,
        help="With --ctc-rescore or --lm-weight: add this per token to each beam's joint score "
        "(the demo uses 1).",
    ),
]


def decoding_options(command: Any) -> Any:
    """Add the DECODING_FLAGS options to a command."""
    for option in reversed(_DECODING_OPTIONS):
        command = option(command)
    return command


def given_decoding(flags: dict[str, Any]) -> dict[str, Any]:
    """The eval keys (without `eval.`) that the DECODING_FLAGS among `flags` set."""
    return {key: flags[flag] for flag, key in DECODING_FLAGS.items() if flags.get(flag) is not None}


@cli.command("predict")
@click.argument("model_path", metavar="MODEL")
@click.argument("inputs", nargs=-1, required=True, metavar="IMAGES|DIR|MANIFEST...")
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write .csv or .jsonl instead of printing TSV lines.",
)
@click.option("--batch-size", default=16, show_default=True, help="Lines decoded per batch.")
@decoding_options
@click.option(
    "--shard", default=None, help="i/n: transcribe only the i-th of n contiguous slices (parallel runs)."
)
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:1 ...")
@click.option(
    "--workers", default=0, show_default=True, help="DataLoader worker processes for image decoding."
)
def predict_command(
    model_path: str,
    inputs: tuple[str, ...],
    out: Path | None,
    batch_size: int,
    shard: str | None,
    device: str,
    workers: int,
    **decoding: Any,
) -> None:
    """Transcribe line images: prints one `path<TAB>text<TAB>confidence` line per image.

    MODEL is a checkpoint or an artifact of `trocr-tune optimize`. Inputs may be image files,
    folders (searched recursively) or manifests (.jsonl/.csv/.tsv with an `image` column). The
    confidence is the mean log-probability of the generated tokens (0 = certain).

    \b
    On several processes or GPUs, launch it with torchrun (or accelerate launch): each process
    reads its slice and rank 0 writes the merged output, in input order:
      torchrun --nproc_per_node 4 -m trocr_tune predict MODEL lines/ --out readings.csv
    """
    from .config import EvalConfig
    from .decoding.engine import ProgressPrinter
    from .distributed import launched
    from .predict import collect_images, manifest_images, predict_images, write_predictions
    from .predict import shard as take_shard

    warn = partial(click.echo, err=True)
    images = take_shard(collect_images(inputs, partial(manifest_images, warn=warn)), shard)
    given = given_decoding(decoding)
    cfg = EvalConfig(batch_size=batch_size, **given, given=frozenset(given))
    with launched() as ranks:
        progress = ProgressPrinter(f"{ranks.tag()}predict", sys.stderr)
        result = predict_images(model_path, images, cfg, device, workers, ranks, progress)
    if not ranks.main:  # rank 0 reports and writes the merged output
        if not result.images:
            raise SystemExit(2)
        return
    for line in result.notes:
        click.echo(line, err=True)
    for path, reason in result.skipped:
        click.echo(f"skipped {path}: {reason}", err=True)
    if not result.images:
        raise UserError(f"none of the {len(result.skipped)} images is readable (see the lines above)")
    skipped = len(result.skipped)
    if out:
        write_predictions(result.images, result.predictions, out)
        click.echo(f"wrote {len(result.images)} predictions to {out}; {skipped} images skipped", err=True)
    else:
        for path, p in zip(result.images, result.predictions, strict=True):
            click.echo(f"{path}\t{p.text}\t{p.confidence:.4f}")
        click.echo(f"{len(result.images)} predictions; {skipped} images skipped", err=True)


# Keys `transcribe` reads from KEY=VALUE arguments: decoding, the variant, and how lines are cropped.
TRANSCRIBE_KEYS = (
    "eval.",
    "optimize.",
    "data.line_types",
    "data.crop_padding",
    "data.polygon_mask",
    "data.cache_dir",
    "data.xml_glob",
)
TRANSCRIBE_FORMATS = ("alto", "page", "txt", "jsonl")  # pages.FORMATS (a test keeps them equal)


@cli.command("transcribe")
@click.argument("model_path", metavar="MODEL")
@click.argument("inputs", nargs=-1, required=True, metavar="XML|IMAGE|DIR... [KEY=VALUE]...")
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder for the results; each input keeps its path relative to the folder it was found in "
    "(a file given directly: its name).",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(TRANSCRIBE_FORMATS),
    default=None,
    help="alto / page: the filled documents (the input's own format; no conversion between the two); "
    "txt: one text file per page, a line per TextLine; jsonl: OUT/transcriptions.jsonl, a record per "
    "line (page, line, text, confidence, box). Default: each document in its own format.",
)
@click.option(
    "--in-place",
    is_flag=True,
    help="Overwrite the input XML files with the filled ones (instead of --out).",
)
@click.option(
    "--segment",
    is_flag=True,
    help="Inputs are bare page images (files, or folders searched for images): find their lines "
    "with the built-in segmenter and write each page as ALTO v4 (OUT/NAME.xml), txt or jsonl. "
    "Photos turned by their EXIF orientation are read upright, multi-page TIFFs and PDFs (extra pdf) "
    "page by page, from copies written beside the ALTO that names them (OUT/NAME.pN.tif).",
)
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="YAML recipe whose eval.* and data crop keys apply (e.g. the one the model was trained with).",
)
@click.option(
    "--line-types",
    default=None,
    help="Comma-separated line or block types to read, e.g. Handwritten (data.line_types); lines of "
    "other types are left as they were. Default: every line.",
)
@click.option(
    "--crop-padding",
    default=None,
    type=click.IntRange(min=0),
    help="Pixels added around each line box (data.crop_padding, default 4).",
)
@click.option(
    "--polygon-mask/--no-polygon-mask",
    default=None,
    help="Blank out what lies outside each line's polygon (data.polygon_mask, default off).",
)
@click.option(
    "--batch-size",
    default=None,
    type=click.IntRange(min=1),
    help="Lines decoded per batch (eval.batch_size, default 16).",
)
@decoding_options
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:1 ...")
@click.option(
    "--workers", default=0, show_default=True, help="DataLoader worker processes for the line crops."
)
def transcribe_command(
    model_path: str,
    inputs: tuple[str, ...],
    out: Path | None,
    fmt: str | None,
    in_place: bool,
    segment: bool,
    config_path: Path | None,
    line_types: str | None,
    crop_padding: int | None,
    polygon_mask: bool | None,
    batch_size: int | None,
    device: str,
    workers: int,
    **decoding: Any,
) -> None:
    """Fill ALTO (v2-v4) or PAGE (2013/2019) files with MODEL's reading of every TextLine.

    \b
    Inputs are XML files or folders (searched with data.xml_glob, default **/*.xml); other XML is
    ignored. Each page image is found as the alto/page layouts find it (fileName/imageFilename,
    else the XML's name with an image extension). Lines are cropped as in training and decoded
    as predict does. Only text changes: ALTO String@CONTENT with WC (0-1), PAGE
    TextEquiv/Unicode with @conf (0-1); every ID, other attribute and namespace is kept. A page
    without its image, or a line outside it, is skipped and reported; exit code 2 when nothing
    could be read. KEY=VALUE sets eval.*, optimize.* and data.line_types / crop_padding /
    polygon_mask / cache_dir / xml_glob. Bare page scans: --segment finds their lines with a
    built-in projection-profile segmenter (no model) and writes ALTO. See docs/transcribe.md.

    \b
    Example:
      trocr-tune transcribe RUN/model pages/ --out filled/ data.xml_glob='**/*.alto.xml'
      trocr-tune transcribe RUN/model scans/ --segment --out filled/
    On several processes or GPUs (each reads and writes its slice of the pages; the JSONL and
    the report are merged in input order on rank 0):
      torchrun --nproc_per_node 4 -m trocr_tune transcribe RUN/model pages/ --out filled/
    """
    import json

    from .distributed import launched
    from .pages import TranscribeOptions, transcribe_pages

    overrides = [a for a in inputs if re.match(r"^[A-Za-z_]+\.[A-Za-z_.]+=", a)]
    files = [a for a in inputs if a not in overrides]
    only_keys("transcribe", overrides, TRANSCRIBE_KEYS)
    if not files:
        raise UserError("no XML files or folders given")
    options = {
        "data.line_types": json.dumps([t.strip() for t in line_types.split(",") if t.strip()])
        if line_types is not None
        else None,
        "data.crop_padding": crop_padding,
        "data.polygon_mask": polygon_mask,
        "eval.batch_size": batch_size,
        **{f"eval.{key}": value for key, value in given_decoding(decoding).items()},
    }
    given = [
        f"{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in options.items() if v is not None
    ]
    cfg = load_config(config_path, [*overrides, *given])
    with launched() as ranks:
        report = transcribe_pages(
            model_path,
            files,
            cfg,
            TranscribeOptions(out, fmt, in_place, workers, segment),
            device,
            progress=lambda message: click.echo(message, err=True),
            ranks=ranks,
        )
    if ranks.main:  # every rank has the merged report; one prints it
        for row in report.summary():
            click.echo(row)


# Keys `serve` reads from CONFIG and KEY=VALUE arguments: decoding, the variant, and page crops.
SERVE_KEYS = ("eval.", "optimize.", "data.line_types", "data.crop_padding", "data.polygon_mask")


def _serve_help(name: str) -> str:
    from .serve.settings import help_of

    return help_of(name)


@cli.command("serve")
@click.argument("model_path", metavar="MODEL")
@click.argument("args", nargs=-1, metavar="[CONFIG] [KEY=VALUE]...")
@click.option("--host", default="127.0.0.1", show_default=True, help=_serve_help("host"))
@click.option(
    "--port", default=8000, show_default=True, type=click.IntRange(1, 65535), help=_serve_help("port")
)
@click.option(
    "--max-batch-size",
    default=32,
    show_default=True,
    type=click.IntRange(min=1),
    help=_serve_help("max_batch_size"),
)
@click.option(
    "--max-wait-ms",
    default=10.0,
    show_default=True,
    type=click.FloatRange(min=0),
    help=_serve_help("max_wait_ms"),
)
@click.option(
    "--queue-size", default=256, show_default=True, type=click.IntRange(min=1), help=_serve_help("queue_size")
)
@click.option(
    "--max-request-bytes",
    default=32 * 2**20,
    show_default=True,
    type=click.IntRange(min=1),
    help=_serve_help("max_request_bytes"),
)
@click.option(
    "--max-image-pixels",
    default=50_000_000,
    show_default=True,
    type=click.IntRange(min=1),
    help=_serve_help("max_image_pixels"),
)
@click.option(
    "--max-lines-per-request",
    default=256,
    show_default=True,
    type=click.IntRange(min=1),
    help=_serve_help("max_lines_per_request"),
)
@click.option(
    "--body-timeout-s",
    default=30.0,
    show_default=True,
    type=click.FloatRange(min=0.0, min_open=True),
    help=_serve_help("body_timeout_s"),
)
@click.option("--api-key", default=None, help=_serve_help("api_key"))
@click.option("--device", default="auto", show_default=True, help=_serve_help("device"))
def serve_command(
    model_path: str,
    args: tuple[str, ...],
    host: str,
    port: int,
    max_batch_size: int,
    max_wait_ms: float,
    queue_size: int,
    max_request_bytes: int,
    max_image_pixels: int,
    max_lines_per_request: int,
    body_timeout_s: float,
    api_key: str | None,
    device: str,
) -> None:
    """Serve MODEL over HTTP: line images and ALTO/PAGE pages in, text out (extra [serve]).

    \b
    MODEL is a checkpoint or an artifact of `trocr-tune optimize`; it is loaded once, in the
    background (GET /ready answers 503 until then). CONFIG and KEY=VALUE set eval.* (decoding, as
    predict), optimize.* and data.line_types / crop_padding / polygon_mask (pages, as transcribe).
    Endpoints: POST /v1/lines, POST /v1/pages, GET /health, /ready, /metrics, OpenAPI at /docs,
    and a web page at / (drop line images or a page with its XML). Lines of concurrent requests
    are decoded together (--max-batch-size, --max-wait-ms). See docs/serve.md.

    \b
    Example:
      trocr-tune serve RUN/model eval.num_beams=4 --port 8000 --api-key SECRET
    """
    from .serve import ServeSettings, serve

    path, overrides = split_config_args(args)
    only_keys("serve", overrides, SERVE_KEYS)
    cfg = load_config(path, overrides)
    settings = ServeSettings(
        host=host,
        port=port,
        max_batch_size=max_batch_size,
        max_wait_ms=max_wait_ms,
        queue_size=queue_size,
        max_request_bytes=max_request_bytes,
        max_image_pixels=max_image_pixels,
        max_lines_per_request=max_lines_per_request,
        body_timeout_s=body_timeout_s,
        api_key=api_key,
        device=device,
    )
    serve(model_path, cfg, settings)


@cli.command("lm")
@click.argument("model_path", metavar="MODEL", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("args", nargs=-1, metavar="[CONFIG] [KEY=VALUE]...")
@click.option(
    "--order", default=5, show_default=True, type=click.IntRange(1, 12), help="Characters per n-gram."
)
def lm_command(model_path: Path, args: tuple[str, ...], order: int) -> None:
    """Fit a character n-gram model on the training split's transcripts into MODEL/char_lm.json.

    For checkpoints trained without one (train.char_lm_order=0, or a hub model saved to a
    folder). eval.lm_weight (predict --lm-weight) then adds its log-probability of each beam's
    text to the beam's score. CONFIG_HELP
    """
    from .data.reader import read_dataset
    from .decoding.charlm import CHAR_LM_FILE, CharNgramLM

    cfg = config_from_args(args)
    texts = [s.text for s in read_dataset(cfg.data).split("train")]
    if not texts:
        raise UserError("the training split is empty: the language model learns from its transcripts")
    path = CharNgramLM.fit(texts, order).save(model_path / CHAR_LM_FILE)
    click.echo(f"{order}-gram character model of {len(texts)} training lines: {path}")


def _variants_help() -> str:
    from .optimize import VARIANTS

    rows = [
        f"  {v.name:<24} {v.summary}; saved as: {v.storage}" for v in VARIANTS.values() if v.name != "fp32"
    ]
    return "\b\nVariants (--variant):\n" + "\n".join(rows)


@cli.command("optimize", epilog=_variants_help())
@click.argument("model_path", metavar="MODEL")
@click.argument("args", nargs=-1, metavar="[KEY=VALUE]...")
@click.option("--variant", required=True, help="Variant to produce (list below).")
@click.option(
    "--out", type=click.Path(file_okay=False, path_type=Path), required=True, help="Artifact folder to write."
)
@click.option(
    "--finetune",
    type=click.Path(dir_okay=False, path_type=Path),
    help="YAML recipe (data + train sections) to fine-tune a pruned model; pruned weights stay zero.",
)
def optimize_command(
    model_path: str, args: tuple[str, ...], variant: str, out: Path, finetune: Path | None
) -> None:
    """Make MODEL (a trained fp32 checkpoint) cheaper; writes an artifact folder.

    \b
    The artifact loads in evaluate, predict and benchmark:
      - int8-dynamic, compile-*, bf16, fp16: the fp32 checkpoint plus a note; the variant is
        re-applied deterministically at load (dynamic quantization and compilation have no
        portable saved form);
      - prune-l1, prune-structured: a plain checkpoint (sparse / smaller) that plain
        Transformers loads too;
      - onnx, onnx-int8, openvino: encoder.onnx + decoder.onnx beside the checkpoint.
    optimize.json reports parameters and FLOPs before/after, sparsity per module (prune-l1),
    removed heads/channels (prune-structured) and the fine-tune's metrics. KEY=VALUE overrides
    the optimize.* keys (and, with --finetune, that recipe's keys too).
    """
    from .optimize.run import optimize_model

    cfg = load_config(None, list(args))
    finetune_cfg = load_config(finetune, list(args)) if finetune else None
    report = optimize_model(model_path, variant, out, cfg, finetune_cfg)
    if not is_main_process():
        return
    before, after = report["before"], report["after"]
    click.echo(
        f"{variant}: parameters {before['parameters']:,} -> {after['parameters']:,}; "
        f"size on disk {report['size_bytes'] / 2**20:.2f} MB"
    )
    if "sparsity" in report:
        click.echo(
            f"achieved sparsity {report['sparsity']['overall']:.4f} (requested {cfg.optimize.prune_amount})"
        )
    click.echo(f"artifact: {out} (report: {out / 'optimize.json'})")


@cli.command("benchmark")
@click.argument("model_path", metavar="MODEL")
@click.argument("args", nargs=-1, metavar="[CONFIG] [KEY=VALUE]...")
@click.option(
    "--variants",
    default="",
    help="Comma-separated variants applied to MODEL on the fly, or NAME=DIR / DIR for artifacts of "
    "`optimize`. The fp32 baseline always runs first.",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Folder for benchmark.md / .csv / .json / .png and config.yaml.",
)
@click.option(
    "--batch-size", default=16, show_default=True, help="Lines decoded per batch in the timed runs."
)
@click.option(
    "--runs",
    default=3,
    show_default=True,
    help="Timed full passes over the split (median and spread reported).",
)
@click.option(
    "--warmup",
    default=1,
    show_default=True,
    help="Untimed warm-up rounds per variant, each over every distinct batch shape of the timed "
    "runs (compilation happens here).",
)
@click.option(
    "--latency-lines",
    default=16,
    show_default=True,
    help="Lines decoded one by one for the batch-1 latency percentiles.",
)
@click.option(
    "--device",
    default="auto",
    show_default=True,
    help="One device per table: cpu or cuda (auto picks cuda when present).",
)
@click.option("--threads", type=int, default=None, help="torch / ONNX Runtime threads (default: torch's).")
@click.option(
    "--pays-at",
    default=1.3,
    show_default=True,
    type=click.FloatRange(min=0),
    help="A variant pays when it reads at least this many times fp32's lines/s at parity.",
)
@click.option(
    "--parity-cer",
    default=0.002,
    show_default=True,
    type=click.FloatRange(min=0),
    help="Parity: the variant's CER is within this of fp32's.",
)
@click.option(
    "--no-isolate",
    is_flag=True,
    help="Run variants in this process instead of one fresh process each (peak RSS then accumulates).",
)
def benchmark_command(
    model_path: str,
    args: tuple[str, ...],
    variants: str,
    out: Path,
    batch_size: int,
    runs: int,
    warmup: int,
    latency_lines: int,
    device: str,
    threads: int | None,
    pays_at: float,
    parity_cer: float,
    no_isolate: bool,
) -> None:
    """Run the fp32 baseline and each variant on the same split and write one table.

    Columns: CER, WER, mean similarity, exact match (one normalisation for all), test time
    (median of the timed runs, spread), lines/s, batch-1 latency p50/p95, model size on disk,
    peak RSS, training time per epoch for fine-tuned variants, and ratios to the baseline.
    Variants that cannot run on the chosen device are listed as skipped, never mixed into
    another device's table. Below the table, "Does it pay?" says for each variant whether it
    reaches --pays-at x fp32's lines/s at parity, and if not, why, from a profile of where fp32's
    time goes (encoder share, Linear layers, convolutions, framework overhead). CONFIG_HELP
    """
    from .benchmark import Settings, benchmark, markdown

    cfg = config_from_args(args)
    settings = Settings(batch_size, runs, warmup, latency_lines, device, threads, pays_at, parity_cer)
    result = benchmark(
        model_path,
        cfg,
        variants.split(","),
        out,
        settings,
        isolate=not no_isolate,
        progress=lambda label: click.echo(f"benchmarking {label} ...", err=True),
    )
    click.echo(markdown(result))
    click.echo(f"written: {', '.join(str(p) for p in result.files.values())}")


@cli.command("demo")
@click.option(
    "--minutes",
    default=15.0,
    show_default=True,
    type=click.FloatRange(min=0.5),
    help="Wall-clock budget for everything; training gets what the other stages leave.",
)
@click.option(
    "--out",
    default=Path("demo-run"),
    show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Run folder (data, model, variants, benchmark, report.md).",
)
@click.option(
    "--seed", default=0, show_default=True, type=click.IntRange(min=0), help="Data and training seed."
)
@click.option(
    "--synthetic",
    is_flag=True,
    help="The synthetic-font demo instead: render font lines and train from scratch "
    "(configs/demo-synthetic.yaml).",
)
@click.option(
    "--lines",
    default=None,
    type=click.IntRange(min=100),
    help="With --synthetic: lines to render (default: scales with --minutes, 40,000 at 15).",
)
@click.option(
    "--started",
    default=None,
    type=float,
    metavar="EPOCH",
    help="Count --minutes from this moment (Unix seconds) instead of from now: `make demo` passes its "
    "own start, so creating .venv comes out of the budget.",
)
@click.argument("overrides", nargs=-1, metavar="[KEY=VALUE]...")
def demo_command(
    minutes: float,
    out: Path,
    seed: int,
    synthetic: bool,
    lines: int | None,
    started: float | None,
    overrides: tuple[str, ...],
) -> None:
    """The whole mission offline on CPU: data -> fine-tune -> evaluate -> optimize -> benchmark -> report.

    Fine-tunes the shipped base (trocr-tune/base-htr) on real handwritten lines embedded in the
    package (Testaments de Poilus, CC-BY 4.0) with the embedded recipe (configs/demo.yaml;
    KEY=VALUE overrides it) within the budget, evaluates it on two hands that neither the base
    nor the fine-tuning saw (and the base before fine-tuning on the same lines), prunes it with a
    short fine-tune, benchmarks the CPU variants and writes OUT/report.md. Ctrl-C leaves a
    resumable run: the same command continues from the last finished stage (training from its
    last checkpoint).
    """
    from .demo import DemoSettings, run_demo

    stray = [o for o in overrides if "=" not in o]
    if stray:
        raise UserError(f"expected KEY=VALUE overrides, got {stray[0]!r}")
    if lines is not None and not synthetic:
        raise UserError("--lines sets the synthetic demo's lines: add --synthetic")
    data = "synthetic" if synthetic else "real"
    settings = DemoSettings(minutes=minutes, out=out, seed=seed, lines=lines, data=data, started=started)
    summary = run_demo(settings, list(overrides))
    click.echo("")
    click.echo(summary["table"])
    held = "held-out-font" if synthetic else "held-out-hand"
    base = (
        f" (the base before fine-tuning: {summary['base_test_cer']:.4f})"
        if "base_test_cer" in summary
        else ""
    )
    click.echo(
        f"{held} test CER {summary['test_cer']:.4f}{base} after {summary['total_seconds'] / 60:.1f} min; "
        f"report: {out / 'report.md'}"
    )


for _command in (data_preview, train_command, evaluate_command, lm_command, benchmark_command):
    _command.help = (_command.help or "").replace("CONFIG_HELP", CONFIG_HELP)


def main(argv: Sequence[str] | None = None) -> None:
    """Console-script entry point: one-line errors with exit code 2 for bad input."""
    try:
        code = cli.main(
            args=list(argv) if argv is not None else None,
            prog_name="trocr-tune",
            standalone_mode=False,
        )
    except UserError as exc:
        click.echo(f"trocr-tune: error: {exc}", err=True)
        sys.exit(2)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except (click.Abort, KeyboardInterrupt):
        click.echo("interrupted", err=True)
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()

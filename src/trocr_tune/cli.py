"""The `trocr-tune` command line: thin commands that build a config and call one library function."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import click

from .config import Config, load_config
from .errors import UserError

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


def config_from_args(args: Sequence[str]) -> Config:
    return load_config(*split_config_args(args))


def _layouts_help() -> str:
    from .data.layouts import LAYOUTS

    return "\b\nLayouts (data.layout):\n" + "\n".join(
        f"  {name:<15} {layout.summary}" for name, layout in LAYOUTS.items()
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
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(report.to_json(), encoding="utf-8")


data_check.help = (data_check.help or "").replace("CONFIG_HELP", CONFIG_HELP)


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

"""`trocr-tune data check` through the installed console script."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tracemalloc
from pathlib import Path

import pytest

from trocr_tune.cli import cli
from trocr_tune.config import load_config
from trocr_tune.data.check import check_dataset
from trocr_tune.data.layouts import LAYOUTS

from conftest import line_image, run_cli

README = Path(__file__).resolve().parents[1] / "README.md"


def test_help_describes_every_option() -> None:
    top = run_cli("--help")
    assert top.returncode == 0 and "data" in top.stdout
    check = run_cli("data", "check", "--help")
    assert check.returncode == 0
    for option in ("--manifest", "--json", "--alphabet-limit"):
        assert option in check.stdout
    for name in LAYOUTS:  # the registry and the help list the same layouts
        assert re.search(rf"^\s+{re.escape(name)}\s", check.stdout, re.M), name


def test_every_click_option_has_help_text() -> None:
    def walk(group, prefix=""):
        for name, command in getattr(group, "commands", {}).items():
            yield from walk(command, f"{prefix}{name} ")
        for param in getattr(group, "params", []):
            if param.param_type_name == "option":
                yield prefix, param

    for where, param in walk(cli):
        assert param.help, f"{where}{param.opts} has no help"


def test_readme_lists_every_layout_with_an_example() -> None:
    text = README.read_text(encoding="utf-8")
    for name in LAYOUTS:
        assert f"`{name}`" in text, name
        assert f"data.layout={name}" in text, name


def test_data_check_kaggle_on_defaults_writes_manifest(kaggle_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    proc = run_cli(
        "data",
        "check",
        "data.layout=kaggle-names",
        f"data.root={kaggle_dir}",
        "--manifest",
        str(out),
        "--json",
        str(tmp_path / "r.json"),
    )
    assert proc.returncode == 0, proc.stderr
    assert "label UNREADABLE" in proc.stdout and "image file missing" in proc.stdout
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert {r["text"] for r in rows} == {"BALTHAZAR", "SIMON", "benjamin", "LUCIE", "KEVIN"}
    for r in rows:
        assert {"image", "text", "split", "id"} <= set(r)
        assert Path(r["image"]).is_file()
    report = json.loads((tmp_path / "r.json").read_text(encoding="utf-8"))
    assert report["splits"]["train"]["samples"] == 3
    assert report["splits"]["train"]["dropped"]["label UNREADABLE"] == 1
    assert report["splits"]["train"]["alphabet"]["A"] == 3  # BALTHAZAR
    assert (tmp_path / "out.config.yaml").is_file()
    # The manifest reads back as the manifest layout.
    again = run_cli("data", "check", "data.layout=manifest", f"data.root={out}")
    assert again.returncode == 0, again.stderr


@pytest.mark.parametrize(
    "fixture_name, layout",
    [
        ("rodrigo_dir", "rodrigo"),
        ("iam_dir", "iam"),
        ("folder_dir", "folder"),
        ("notary_dir", "spanish-notary"),
        ("page_dir", "page"),
        ("alto_dir", "alto"),
    ],
)
def test_data_check_every_layout_on_defaults(
    fixture_name: str, layout: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    root = request.getfixturevalue(fixture_name)
    out = tmp_path / "m.jsonl"
    proc = run_cli(
        "data",
        "check",
        f"data.layout={layout}",
        f"data.root={root}",
        f"data.cache_dir={tmp_path / 'cache'}",
        "--manifest",
        str(out),
    )
    assert proc.returncode == 0, proc.stderr
    assert out.read_text(encoding="utf-8").strip()


def test_bad_input_is_one_line_exit_2(tmp_path: Path) -> None:
    for args in (
        ["data.layot=alto"],
        ["data.layout=kaggle-names", f"data.root={tmp_path}"],
        ["data.layout=alto", f"data.root={tmp_path / 'missing'}"],
        [str(tmp_path / "nope.yaml")],
    ):
        proc = run_cli("data", "check", *args)
        assert proc.returncode == 2, args
        assert proc.stderr.startswith("trocr-tune: error: ") and proc.stderr.count("\n") == 1, proc.stderr
        assert "Traceback" not in proc.stderr


def test_config_file_plus_overrides(tmp_path: Path, manifest_dir: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"data:\n  layout: manifest\n  root: {manifest_dir / 'lines.tsv'}\n")
    proc = run_cli("data", "check", str(cfg), "data.case=upper", "--json", str(tmp_path / "r.json"))
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / "r.json").read_text(encoding="utf-8"))
    assert set(report["splits"]["test"]["alphabet"]) == set("TRES")


def test_module_entry_point() -> None:
    proc = subprocess.run([sys.executable, "-m", "trocr_tune", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "trocr-tune" in proc.stdout


# Kaggle's train CSV has 331,000 rows; 80,000 keep the test short (tracemalloc slows Python).
ROWS = 80_000


def test_kaggle_scale_csv_streams(tmp_path: Path) -> None:
    """80,000 CSV rows: counted, never decoded, memory bounded (streamed: ~1.3 MiB traced; keeping
    ~100 bytes per row would pass 8 MiB)."""
    root = tmp_path / "k"
    images = root / "train_v2" / "train"
    for i in range(20):
        line_image(images / f"TRAIN_{i:06d}.jpg", f"N{i}")
    with (root / "written_name_train_v2.csv").open("w") as fh:
        fh.write("FILENAME,IDENTITY\n")
        for i in range(ROWS):
            fh.write(f"TRAIN_{i:06d}.jpg,NAME {i % 977}\n")
    tracemalloc.start()
    report = check_dataset(
        load_config(None, ["data.layout=kaggle-names", f"data.root={root}", "data.resplit=true"])
    )
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert sum(s.samples for s in report.splits.values()) == 20
    assert (
        sum(sum(s.dropped.values()) for s in report.splits.values())
        + sum(report.dropped_before_split.values())
        == ROWS - 20
    )
    assert peak < 8 * 2**20, f"peak traced memory {peak / 2**20:.0f} MiB"

"""Issue 18, untrusted model files and model paths: refused or explained in one line, never run."""

from __future__ import annotations

import argparse
import ast
import time
from pathlib import Path

import pytest
import torch

from trocr_tune.errors import UserError
from trocr_tune.model.loading import load_bundle

from builders import build_char_checkpoint

SRC = Path(__file__).resolve().parents[2] / "src" / "trocr_tune"


def test_row07_every_torch_load_is_weights_only() -> None:
    calls = []
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "load"
                and isinstance(node.func.value, ast.Name)
                and node.func.value.id == "torch"
            ):
                safe = any(
                    k.arg == "weights_only" and isinstance(k.value, ast.Constant) and k.value.value is True
                    for k in node.keywords
                )
                calls.append((f"{path.name}:{node.lineno}", safe))
    assert calls, "no torch.load found: the scan is broken"
    assert [where for where, safe in calls if not safe] == []


def test_row14_pickled_pytorch_model_bin_is_refused_in_one_line(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    folder = build_char_checkpoint(tmp_path / "ckpt", ["abc"])
    weights: dict[str, object] = dict(load_file(folder / "model.safetensors"))
    (folder / "model.safetensors").unlink()
    weights["payload"] = argparse.Namespace(run="anything")  # a pickled object, not a tensor
    torch.save(weights, folder / "pytorch_model.bin")
    with pytest.raises(UserError) as err:
        load_bundle(folder)
    message = str(err.value)
    assert "\n" not in message and "pickled Python objects" in message and "refused" in message


def test_row15_missing_local_model_folder_says_so_without_the_hub(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    for name in (str(tmp_path / "gone" / "model"), "./gone", "../gone/model", "runs/model", "~/no-such-x1"):
        start = time.perf_counter()
        with pytest.raises(UserError, match=r"model folder .* does not exist"):
            load_bundle(name)
        assert time.perf_counter() - start < 1.0, name  # no hub retries


BILLION_LAUGHS = """<?xml version="1.0"?>
<!DOCTYPE alto [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">
<!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;"><!ENTITY d "&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;">
<!ENTITY e "&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;"><!ENTITY f "&e;&e;&e;&e;&e;&e;&e;&e;&e;&e;">
<!ENTITY g "&f;&f;&f;&f;&f;&f;&f;&f;&f;&f;"><!ENTITY h "&g;&g;&g;&g;&g;&g;&g;&g;&g;&g;">]>
<alto><Layout><Page><PrintSpace><TextBlock><TextLine HPOS="1" VPOS="1" WIDTH="9" HEIGHT="9">
<String CONTENT="&h;"/></TextLine></TextBlock></PrintSpace></Page></Layout></alto>
"""


def test_deliver3_untrusted_files_stay_inert(tmp_path: Path) -> None:
    """No remote code, no entity expansion, safetensors written (and manifests: row 6)."""
    from trocr_tune.config import load_config
    from trocr_tune.data.reader import read_dataset
    from trocr_tune.model.loading import save_bundle

    for path in SRC.rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        assert "trust_remote_code=True" not in text.replace(" ", ""), path
    bomb = tmp_path / "laughs.xml"
    bomb.write_text(BILLION_LAUGHS, encoding="utf-8")
    start = time.perf_counter()
    with pytest.raises(UserError, match=r"XML file unreadable.*laughs.xml"):
        read_dataset(load_config(None, ["data.layout=alto", f"data.root={bomb}"]).data)
    assert time.perf_counter() - start < 5
    saved = save_bundle(load_bundle(build_char_checkpoint(tmp_path / "c", ["ab"])), tmp_path / "saved")
    assert (saved / "model.safetensors").is_file() and not list(saved.glob("*.bin"))

"""Typed config: YAML + dotted overrides, validation, nearest-key errors, shipped recipes."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from trocr_tune.config import Config, all_keys, load_config, save_config
from trocr_tune.errors import UserError

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


def test_defaults_validate() -> None:
    cfg = load_config()
    assert isinstance(cfg, Config)
    assert cfg.data.layout == "manifest" and cfg.data.split_ratios == [0.8, 0.1, 0.1]


def test_overrides_are_typed() -> None:
    cfg = load_config(
        None,
        [
            "data.layout=alto",
            "data.root=01234",
            "data.limit=10",
            "data.polygon_mask=yes",
            "data.split_ratios=[0.5, 0.25, 0.25]",
            "data.line_types=Handwritten,Print",
            'data.replacements=[["_", " "]]',
            "data.max_text_length=null",
            "data.seed=1e3",
        ],
    )
    d = cfg.data
    assert d.root == "01234"  # strings stay strings (no YAML number parsing)
    assert d.limit == 10 and d.polygon_mask is True and d.seed == 1000
    assert d.split_ratios == [0.5, 0.25, 0.25]
    assert d.line_types == ["Handwritten", "Print"]
    assert d.replacements == [["_", " "]]
    assert d.max_text_length is None


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("data.layot=alto", "unknown config key 'data.layot' (did you mean 'data.layout'?)"),
        ("layout=alto", "unknown config key 'layout' (did you mean 'data.layout'?)"),
        ("data.layout=pagexml", "data.layout='pagexml' is not one of"),
        ("data.limit=abc", "data.limit must be an integer, got 'abc'"),
        ("data.polygon_mask=maybe", "data.polygon_mask must be true or false"),
        ("data.split_ratios=[0.5, 0.5, 0.5]", "data.split_ratios must sum to 1"),
        ("data.group_by=author", "data.group_by='author' is not one of"),
        ("data.replacements=[[a]]", "data.replacements[0] must be a [from, to] pair"),
        ("data.root", "expected key=value"),
    ],
)
def test_bad_overrides_fail_in_one_line(override: str, message: str) -> None:
    with pytest.raises(UserError) as info:
        load_config(None, [override])
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_unknown_key_in_yaml_names_nearest(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("data:\n  layout: alto\n  xml_glb: '*.xml'\n")
    with pytest.raises(
        UserError, match=r"unknown config key 'data.xml_glb' \(did you mean 'data.xml_glob'\?\)"
    ):
        load_config(path)
    path.write_text("dta:\n  layout: alto\n")
    with pytest.raises(UserError, match=r"unknown config key 'dta'"):
        load_config(path)


def test_invalid_yaml_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("data:\n  layout: [alto\n")
    with pytest.raises(UserError, match=r"bad.yaml:\d+: invalid YAML"):
        load_config(path)
    with pytest.raises(UserError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")


def test_saved_config_loads_back_identically(tmp_path: Path) -> None:
    cfg = load_config(None, ["data.layout=rodrigo", 'data.replacements=[["ç", "z"]]', "data.limit=5"])
    path = save_config(cfg, tmp_path / "resolved.yaml")
    assert load_config(path) == cfg
    assert yaml.safe_load(path.read_text(encoding="utf-8"))["data"]["replacements"] == [["ç", "z"]]


def test_every_key_is_documented_by_a_dotted_name() -> None:
    keys = all_keys()
    assert "data.layout" in keys and "eval.metric_unicode_form" in keys
    assert len(keys) == len(set(keys))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_shipped_config_validates(path: Path) -> None:
    cfg = load_config(path)
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    if "inherit" in raw:  # a later pretraining stage: its parent is shipped too, and checked here
        assert (path.parent / raw["inherit"]).is_file()
    else:
        assert cfg.data.layout == raw["data"]["layout"]


def test_configs_folder_is_not_empty() -> None:
    assert len(CONFIGS) >= 3


def test_eval_records_the_keys_given_and_fills_only_the_rest(tmp_path: Path) -> None:
    """A model's recorded decoding (EvalConfig.with_decoding) never overrides a key the user set."""
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("eval:\n  num_beams: 2\n  batch_size: 8\n")
    cfg = load_config(recipe, ["eval.lm_weight=0"])
    assert cfg.eval.given == {"num_beams", "batch_size", "lm_weight"}
    assert load_config(None).eval.given == frozenset()
    merged = cfg.eval.with_decoding({"num_beams": 4, "ctc_joint": 0.7, "lm_weight": 0.3, "batch_size": 1})
    assert (merged.num_beams, merged.ctc_joint, merged.lm_weight, merged.batch_size) == (2, 0.7, 0.0, 8)
    assert merged.decoding() == {"num_beams": 2, "ctc_joint": 0.7}
    assert cfg.eval.with_decoding({}) is cfg.eval
    # Bookkeeping, not a key: neither settable nor saved.
    with pytest.raises(UserError, match=r"unknown config key 'eval\.given'"):
        load_config(None, ["eval.given=x"])
    assert "eval.given" not in all_keys()
    save_config(cfg, tmp_path / "saved.yaml")
    assert "given" not in yaml.safe_load((tmp_path / "saved.yaml").read_text())["eval"]


def test_a_recipe_inherits_another_and_overrides_it_key_by_key(tmp_path: Path) -> None:
    (tmp_path / "base.yaml").write_text(
        "model:\n  preset: tiny\n  dropout: 0.2\n"
        "train:\n  batch_size: 32\n  max_minutes: 40\n"
        "eval:\n  batch_size: 8\n"
    )
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "child.yaml").write_text(
        "inherit: ../base.yaml\nmodel:\n  dropout: 0.0\ntrain:\n  max_minutes: null\n  max_steps: 7\neval:\n"
    )
    cfg = load_config(tmp_path / "sub" / "child.yaml", ["train.batch_size=4"])
    assert (cfg.model.preset, cfg.model.dropout) == ("tiny", 0.0)
    assert (cfg.train.batch_size, cfg.train.max_minutes, cfg.train.max_steps) == (4, None, 7)
    assert cfg.eval.batch_size == 8  # an empty section keeps the inherited one
    # The shipped stages are written this way: stage 7 is stage 6 with its own model and run folder.
    root = Path(__file__).resolve().parents[1] / "configs"
    six, seven = load_config(root / "pretrain-base-6.yaml"), load_config(root / "pretrain-base-7.yaml")
    assert seven.train.output_dir == "runs/pretrain-base-7" and seven.train.max_steps == six.train.max_steps
    (tmp_path / "loop.yaml").write_text("inherit: loop2.yaml\n")
    (tmp_path / "loop2.yaml").write_text("inherit: loop.yaml\n")
    with pytest.raises(UserError, match="makes a loop of recipes"):
        load_config(tmp_path / "loop.yaml")
    (tmp_path / "orphan.yaml").write_text("inherit: missing.yaml\n")
    with pytest.raises(UserError, match=r"config file not found: .*missing\.yaml \(inherited by"):
        load_config(tmp_path / "orphan.yaml")

"""Issue 18, training under interruptions and bad files: nothing lost, resumes bit-identical.

One uninterrupted reference run (in this process) is shared; interrupted runs are resumed and
their final weights compared with it tensor by tensor.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

from trocr_tune.config import load_config
from trocr_tune.errors import UserError
from trocr_tune.train import TrainResult, train

from builders import truncated_image, word_manifest
from conftest import TINY_MODEL, run_main, trocr_tune_bin

STEPS = 24


@pytest.fixture(scope="module")
def lines(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 rendered words, all in train (no validation: no generate-based evaluation to wait for)."""
    return word_manifest(tmp_path_factory.mktemp("lines"), validation=0, test=0)


def args(lines: Path, out: Path, *extra: str) -> list[str]:
    return [
        "data.layout=manifest",
        f"data.root={lines}",
        *TINY_MODEL,
        "model.image_width=64",
        "train.batch_size=4",
        f"train.max_steps={STEPS}",
        "train.eval_steps=4",  # a checkpoint every 4 steps
        "train.char_lm_order=0",
        f"train.output_dir={out}",
        *extra,
    ]


@pytest.fixture(scope="module")
def reference(lines: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, torch.Tensor]:
    """Final weights of the uninterrupted run."""
    out = tmp_path_factory.mktemp("reference")
    result = train(load_config(None, args(lines, out)))
    assert result.metrics["train"]["optimizer_steps"] == STEPS
    return load_file(out / "model" / "model.safetensors")


def assert_same_weights(model_dir: Path, reference: dict[str, torch.Tensor]) -> None:
    weights = load_file(model_dir / "model.safetensors")
    assert weights.keys() == reference.keys()
    different = [k for k in reference if not torch.equal(weights[k], reference[k])]
    assert different == []


class SignalAt(TrainerCallback):
    """Sends this process `signum` during optimizer step `step` (as a user would, mid-step)."""

    def __init__(self, step: int, signum: int) -> None:
        self.step, self.signum = step, signum

    def on_step_begin(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
        if state.global_step == self.step - 1:
            os.kill(os.getpid(), self.signum)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_row16_sigint_and_sigterm_save_stop_and_resume_bit_identical(
    signum: int, lines: Path, tmp_path: Path, reference: dict[str, torch.Tensor]
) -> None:
    stale = tmp_path / "model"
    stale.mkdir()
    (stale / "trocr_tune.json").write_text("{}", encoding="utf-8")  # an earlier run's model/
    (tmp_path / "metrics.json").write_text('{"old": true}', encoding="utf-8")
    # Should training not handle the signal, it must fail this test, not end pytest.
    previous = signal.signal(signum, lambda signum, frame: None)
    try:
        cut: TrainResult = train(load_config(None, args(lines, tmp_path)), callbacks=[SignalAt(6, signum)])
        assert signal.getsignal(signum) is not None  # the handler before training is back
    finally:
        signal.signal(signum, previous)
    assert cut.interrupted == signum
    assert (tmp_path / "checkpoints" / "checkpoint-6" / "trainer_state.json").is_file()
    metrics = json.loads((tmp_path / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["train"]["interrupted"] is True
    assert metrics["train"]["interrupted_by"] == signal.Signals(signum).name
    assert metrics["train"]["optimizer_steps"] == 6 and "train.resume=true" in metrics["train"]["resume"]
    assert not stale.exists()  # no stale model presented as this run's result
    resumed = train(load_config(None, [*args(lines, tmp_path), "train.resume=true"]))
    assert resumed.interrupted is None and resumed.metrics["train"]["optimizer_steps"] == STEPS
    assert_same_weights(tmp_path / "model", reference)


def test_row05_resume_skips_an_incomplete_checkpoint_and_says_so(
    lines: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    from trocr_tune.train import last_complete_checkpoint

    checkpoints = tmp_path / "checkpoints"
    for step in (4, 8):
        folder = checkpoints / f"checkpoint-{step}"
        folder.mkdir(parents=True)
        (folder / "trainer_state.json").write_text("{}", encoding="utf-8")
        (folder / "config.json").write_text("{}", encoding="utf-8")
        (folder / "model.safetensors").write_bytes(b"x")
    (checkpoints / "checkpoint-8" / "config.json").write_bytes(b"")  # a save killed half-way
    (checkpoints / "checkpoint-12").mkdir()
    chosen, skipped = last_complete_checkpoint(checkpoints)
    assert chosen == str(checkpoints / "checkpoint-4")
    assert skipped == [
        "checkpoint-12 (no trainer_state.json)",
        "checkpoint-8 (config.json empty or unreadable)",
    ]
    (checkpoints / "checkpoint-4" / "trainer_state.json").unlink()
    with pytest.raises(UserError, match=r"holds no checkpoint to resume from \(incomplete: checkpoint-12"):
        train(load_config(None, [*args(lines, tmp_path), "train.resume=true"]))
    assert "resume: skipping incomplete checkpoint checkpoint-8" in capfd.readouterr().err


# Loaded by the `trocr-tune train` subprocess (PYTHONPATH) to hold its first checkpoint save
# half-way: model and optimizer written, RNG state and trainer_state.json not yet. A SIGKILL
# then hits the save itself, every time, instead of by the luck of a poll.
HOLD_THE_SAVE = """
import os, time
from transformers import Trainer

original = Trainer._save_rng_state

def held(self, output_dir):
    open(os.environ["SAVE_REACHED"], "w").close()
    time.sleep(120)
    return original(self, output_dir)

Trainer._save_rng_state = held
"""


def start_train(argv: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [trocr_tune_bin(), "train", *argv],
        env=dict(os.environ, PYTHONUNBUFFERED="1", **(env or {})),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def kill_when(proc: subprocess.Popen[bytes], ready: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 120
    while proc.poll() is None and not ready() and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(30) == -signal.SIGKILL


def test_kill_mid_training_and_mid_save_then_resume_through_the_cli(
    lines: Path, tmp_path: Path, reference: dict[str, torch.Tensor]
) -> None:
    """Deliver 2: SIGKILL of the real `trocr-tune train` process mid-training, then of the resumed
    one in the middle of a checkpoint save; resuming skips the half-written checkpoint, says so,
    and ends bit-identical to the uninterrupted reference."""

    def complete(step: int) -> bool:
        try:
            json.loads((tmp_path / "checkpoints" / f"checkpoint-{step}" / "trainer_state.json").read_text())
            return True
        except (OSError, ValueError):
            return False

    kill_when(start_train(args(lines, tmp_path)), lambda: complete(4))  # mid-training
    assert not (tmp_path / "model").exists()
    done = sorted(int(p.name.split("-")[1]) for p in (tmp_path / "checkpoints").glob("checkpoint-*"))
    assert done and done[-1] < STEPS, done

    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(HOLD_THE_SAVE, encoding="utf-8")
    reached = tmp_path / "save-reached"
    path = os.pathsep.join(p for p in (str(hook), os.environ.get("PYTHONPATH", "")) if p)
    env = {"PYTHONPATH": path, "SAVE_REACHED": str(reached)}
    resumed = start_train([*args(lines, tmp_path), "train.resume=true"], env)
    kill_when(resumed, reached.exists)  # mid-save
    half = [p for p in (tmp_path / "checkpoints").glob("checkpoint-*") if not complete(int(p.name[11:]))]
    assert len(half) == 1 and (half[0] / "model.safetensors").is_file(), half

    result = run_main("train", *args(lines, tmp_path), "train.resume=true")
    code, err = result.returncode, result.stderr
    assert code == 0, err[-2000:]
    assert f"resume: skipping incomplete checkpoint {half[0].name} (no trainer_state.json)" in err
    metrics = json.loads((tmp_path / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["train"]["optimizer_steps"] == STEPS and metrics["train"]["interrupted"] is False
    assert_same_weights(tmp_path / "model", reference)


def test_sigterm_exits_non_zero_and_says_how_to_resume(lines: Path, tmp_path: Path) -> None:
    started = tmp_path / "checkpoints" / "checkpoint-4" / "trainer_state.json"

    def send_when_training() -> None:
        deadline = time.monotonic() + 120
        while not started.is_file() and time.monotonic() < deadline:
            time.sleep(0.005)
        os.kill(os.getpid(), signal.SIGTERM)

    # Should the signal come after training, it must not end pytest: ignore it meanwhile.
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: None)
    sender = threading.Thread(target=send_when_training)
    try:
        sender.start()
        result = run_main("train", *args(lines, tmp_path))
    finally:
        sender.join()
        signal.signal(signal.SIGTERM, previous)
    code, err = result.returncode, result.stderr
    assert code == 128 + signal.SIGTERM, err[-2000:]
    assert "SIGTERM at step" in err and "run the same command with train.resume=true" in err
    metrics = json.loads((tmp_path / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["train"]["interrupted_by"] == "SIGTERM" and metrics["train"]["optimizer_steps"] < STEPS
    assert not (tmp_path / "model").exists()


def test_row09_truncated_images_are_counted_skips_not_a_crash_mid_epoch(lines: Path, tmp_path: Path) -> None:
    rows = [json.loads(x) for x in lines.read_text(encoding="utf-8").splitlines()]
    cut = truncated_image(lines.parent / "img" / "cut.png")
    rows.append({"image": str(cut), "text": "cortado", "split": "train", "id": "cut"})
    manifest = lines.parent / "with-cut.jsonl"
    manifest.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    result = train(
        load_config(None, [*args(manifest, tmp_path), "train.max_steps=4", "train.eval_steps=null"])
    )
    assert result.metrics["train"]["optimizer_steps"] == 4
    assert result.metrics["data"]["train"] == 12
    assert result.metrics["dropped"] == {"truncated image file": 1}
    note = f"1 images do not decode and were skipped: 1 truncated image file (e.g. {cut} (with-cut.jsonl:13))"
    assert note in result.metrics["notes"]


def test_row09_with_check_images_none_a_bad_image_mid_epoch_is_named_and_skipped(
    lines: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    rows = [json.loads(x) for x in lines.read_text(encoding="utf-8").splitlines()]
    cut = truncated_image(lines.parent / "img" / "cut2.png")
    rows.append({"image": str(cut), "text": "cortado", "split": "train", "id": "cut"})
    manifest = lines.parent / "with-cut-unchecked.jsonl"
    manifest.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    overrides = [*args(manifest, tmp_path), "train.max_steps=6", "train.eval_steps=null"]
    result = train(load_config(None, [*overrides, "data.check_images=none"]))
    assert result.metrics["train"]["optimizer_steps"] == 6  # 13 lines in batches of 4: every line met
    assert result.metrics["data"]["train"] == 13  # nothing checked up front
    err = capfd.readouterr().err
    assert err.count(f"skipped {cut}: cannot be decoded") == 1

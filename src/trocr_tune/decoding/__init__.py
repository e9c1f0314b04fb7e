"""The one home of inference: settings, runners, search, rescoring, language model, views.

`DecodeSettings.from_eval` turns an EvalConfig into what a runner needs; `transcribe` is the
batch loop; a runner (`TorchRunner`, `OnnxRunner`, or a variant's) decodes a batch of pixels
with greedy or beam search, shallow fusion of the character LM (`charlm`), and CTC / LM / view
rescoring of the beams (`runners`, `views`). train, evaluate, predict, transcribe, serve and
benchmark all decode through here.
"""

from __future__ import annotations

from .engine import pick_device, transcribe
from .results import Prediction, decode_predictions, sequence_end
from .settings import DecodeSettings, Rescoring

__all__ = [
    "DecodeSettings",
    "Prediction",
    "Rescoring",
    "decode_predictions",
    "pick_device",
    "sequence_end",
    "transcribe",
]

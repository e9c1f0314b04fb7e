"""DecodeSettings: everything a runner needs to decode a batch, typed, built once from EvalConfig."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..config import keys_text
from ..errors import UserError
from .charlm import CHAR_LM_FILE, CharNgramLM

if TYPE_CHECKING:
    from ..config import EvalConfig
    from ..model.loading import ModelBundle


@dataclass(frozen=True)
class Rescoring:
    """How `eval.ctc_rescore` / `eval.lm_weight` pick among the beams (see EvalConfig)."""

    ctc_weight: float = 0.0
    length_bonus: float = 0.0
    views: tuple[str, ...] = ()
    views_margin: float = float("inf")
    lm_weight: float = 0.0
    lm: CharNgramLM | None = None

    @property
    def active(self) -> bool:
        return self.ctc_weight > 0 or (self.lm is not None and self.lm_weight > 0)


@dataclass(frozen=True)
class DecodeSettings:
    """The search (`generate`'s own arguments) and what trocr-tune adds around it."""

    max_new_tokens: int
    num_beams: int = 1
    length_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    # Shallow fusion: weight x log p_LM(next character) at every step of the search.
    fusion_weight: float = 0.0
    fusion_lm: CharNgramLM | None = None
    # Joint CTC-attention decoding: weight of the CTC prefix score at every step.
    ctc_joint: float = 0.0
    # Picking among the beams once they are found (beam search only).
    rescoring: Rescoring = field(default_factory=Rescoring)

    @classmethod
    def from_eval(
        cls, bundle: ModelBundle, cfg: EvalConfig, max_new_tokens: int | None = None
    ) -> DecodeSettings:
        """The settings of `cfg` for `bundle`; a language model it asks for must be beside the checkpoint."""
        uses_lm = (cfg.lm_weight > 0 and cfg.num_beams > 1) or cfg.lm_fusion > 0
        if uses_lm and bundle.char_lm is None:
            raise UserError(
                "eval.lm_weight and eval.lm_fusion need a character language model beside the checkpoint "
                f"({CHAR_LM_FILE}): train with train.char_lm_order > 0, or build one with `trocr-tune lm`"
            )
        rescoring = Rescoring()
        if cfg.num_beams > 1 and (cfg.ctc_rescore > 0 or cfg.lm_weight > 0):
            rescoring = Rescoring(
                ctc_weight=cfg.ctc_rescore,
                length_bonus=cfg.rescore_length_bonus,
                views=tuple(cfg.rescore_views),
                views_margin=float("inf") if cfg.rescore_views_margin is None else cfg.rescore_views_margin,
                lm_weight=cfg.lm_weight,
                lm=bundle.char_lm if cfg.lm_weight > 0 else None,
            )
        return cls(
            max_new_tokens=max_new_tokens or bundle.info.max_new_tokens,
            num_beams=cfg.num_beams,
            length_penalty=cfg.length_penalty,
            no_repeat_ngram_size=cfg.no_repeat_ngram_size,
            fusion_weight=cfg.lm_fusion if cfg.lm_fusion > 0 else 0.0,
            fusion_lm=bundle.char_lm if cfg.lm_fusion > 0 else None,
            ctc_joint=cfg.ctc_joint,
            rescoring=rescoring,
        )

    @property
    def fused(self) -> bool:
        return self.fusion_lm is not None and self.fusion_weight > 0

    @property
    def rescores(self) -> bool:
        return self.rescoring.active and self.num_beams > 1

    def generate_kwargs(self) -> dict[str, Any]:
        """The arguments of Transformers' `generate` (no trocr-tune keys travel in them)."""
        kwargs: dict[str, Any] = {
            # decoder start token + the new tokens (see model.loading.set_generation_budget)
            "max_length": 1 + self.max_new_tokens,
            "num_beams": self.num_beams,
            "do_sample": False,
        }
        if self.num_beams > 1:
            kwargs["length_penalty"] = self.length_penalty
            kwargs["early_stopping"] = True
        if self.no_repeat_ngram_size:
            kwargs["no_repeat_ngram_size"] = self.no_repeat_ngram_size
        return kwargs


def model_decoding(cfg: EvalConfig, bundle: ModelBundle, runner: Any = None) -> tuple[EvalConfig, str]:
    """`cfg` with the model's recorded decoding (trocr_tune.json `decoding`, what `train` validated
    with) for every decoding key the user did not set, and a one-line note of what it took ('' for
    nothing). When that decoding cannot run here (no char_lm.json, a runner without trocr-tune's
    search), `cfg` is kept and the note says why."""
    merged = cfg.with_decoding(bundle.info.decoding)
    if merged is cfg:
        return cfg, ""
    taken = keys_text(cfg.taken_from(bundle.info.decoding))
    try:
        check = getattr(runner, "cannot_decode", None)
        reason = check(DecodeSettings.from_eval(bundle, merged)) if check else None
    except UserError as problem:
        reason = str(problem)
    if reason:
        return cfg, f"the model's recorded decoding ({taken}) cannot run here: {reason}"
    return merged, f"decoding as the model records: {taken} (set these keys to decode otherwise)"

"""Runners: what turns a batch of pixel values into predictions, for every variant alike.

Evaluation, prediction and the benchmark call `generate_batch(pixels, DecodeSettings)` and
nothing else, so every variant is decoded with the same settings and scored by the same code.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, Protocol, cast

import numpy as np
import torch
from transformers.cache_utils import DynamicCache, EncoderDecoderCache
from transformers.modeling_outputs import BaseModelOutput

from ..errors import UserError
from .charlm import END, CharNgramLM
from .ctc_prefix import CTCPrefixScorer
from .results import Prediction, decode_predictions, sequence_end
from .search import Steps, TrOCRSteps, search
from .settings import DecodeSettings, Rescoring


class Runner(Protocol):
    """Anything that can decode a batch (the Protocol of STYLE.md: `prepare(model) -> runnable`)."""

    device: torch.device

    def generate_batch(self, pixel_values: torch.Tensor, settings: DecodeSettings) -> list[Prediction]: ...


def on_device(model: Any, device: torch.device) -> Any:
    """`model` moved to `device` in eval mode (typed loosely: Transformers wraps `.to`)."""
    return model.to(device).eval()


def decoder_log_likelihood(
    model: Any,
    encoder_states: torch.Tensor,
    rows: list[list[int]],
    eos: int,
    pad: int,
    rows_per_image: int = 1,
    per_token: bool = False,
) -> torch.Tensor:
    """log p_decoder(row + eos | image) of each token row, teacher-forced in one decoder pass.

    `encoder_states` holds one image per `rows_per_image` consecutive rows (e.g. its beams).
    With `per_token`, the (rows, longest row + 1) log-probabilities of each token and the eos,
    0 beyond, instead of their sums.
    """
    longest = max(len(r) for r in rows) + 1
    targets = torch.full((len(rows), longest), pad, dtype=torch.long)
    scored = torch.zeros((len(rows), longest), dtype=torch.bool)
    for i, row in enumerate(rows):
        targets[i, : len(row) + 1] = torch.tensor([*row, eos], dtype=torch.long)
        scored[i, : len(row) + 1] = True
    decoder_input = torch.cat(
        [torch.full((len(rows), 1), model.config.decoder_start_token_id, dtype=torch.long), targets[:, :-1]],
        1,
    ).to(encoder_states.device)
    states = encoder_states.repeat_interleave(rows_per_image, dim=0)
    logits = model(
        encoder_outputs=BaseModelOutput(last_hidden_state=states), decoder_input_ids=decoder_input
    ).logits
    logp = torch.log_softmax(logits.float(), dim=-1).cpu().gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return logp * scored if per_token else (logp * scored).sum(dim=-1)


class CharLMFusion:
    """Logits processor for shallow fusion: adds weight x log p_LM(token | the text so far) to the
    decoder's log-probabilities at every step of greedy or beam search (`eval.lm_fusion`).

    The table of one (order - 1)-token history serves every beam and image that reaches it again;
    the cache is emptied when it holds `max_cached` of them.
    """

    def __init__(
        self, lm: CharNgramLM, weight: float, tokenizer: Any, start_id: int, max_cached: int = 200_000
    ) -> None:
        self.lm, self.weight, self.start, self.max_cached = lm, weight, start_id, max_cached
        specials = set(tokenizer.all_special_ids)
        # What each token writes: eos ends the line; other special tokens write nothing the
        # model knows, so they get the probability of an unseen character.
        self.pieces = [
            END if v == tokenizer.eos_token_id else (None if v in specials else tokenizer.decode([v]) or None)
            for v in range(len(tokenizer))
        ]
        self.multi = [(v, p) for v, p in enumerate(self.pieces) if p is not None and len(p) > 1]
        if len(self.multi) > len(self.pieces) // 2:
            raise UserError(
                "eval.lm_fusion needs a character tokenizer (the trocr-tune presets'); "
                "eval.lm_weight works with any"
            )
        single = [v for v, p in enumerate(self.pieces) if p is not None and len(p) == 1]
        self.single_chars = [cast(str, self.pieces[v]) for v in single]
        self.single_index = np.array(single, dtype=np.int64)
        self.cache: dict[tuple[int, ...], torch.Tensor] = {}

    def _table(self, key: tuple[int, ...], width: int) -> torch.Tensor:
        text = "".join(self.pieces[i] or "" for i in key if i != self.start and i < len(self.pieces))
        # Tokens the model has no character for (and vocabulary rows past the tokenizer) count as
        # an unseen character.
        row = np.full(width, self.lm.piece_log_prob(text, "\uffff"), dtype=np.float32)
        row[self.single_index] = self.lm.next_log_probs(text, self.single_chars)
        for v, piece in self.multi:
            row[v] = self.lm.piece_log_prob(text, piece)
        return torch.from_numpy(row * np.float32(self.weight))

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        n = self.lm.order - 1
        keys = [tuple(r) for r in input_ids[:, -n:].tolist()] if n else [()] * len(scores)
        if len(self.cache) > self.max_cached:
            self.cache.clear()
        rows = []
        for key in keys:
            row = self.cache.get(key)
            if row is None:
                row = self.cache[key] = self._table(key, scores.shape[-1])
            rows.append(row)
        return scores + torch.stack(rows).to(scores.device, scores.dtype)


class SelfAttentionReorderedCache(EncoderDecoderCache):
    """An encoder-decoder cache whose beam reordering leaves the cross-attention part in place.

    Beam search reorders the whole cache at every step. The cross-attention part holds the same
    encoder output for every beam of an image, and beams never move between images, so reordering
    it changes nothing and cost about a third of the search (`index_select`, docs/decoding.md).
    """

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self.self_attention_cache.reorder_cache(beam_idx)


def beam_cache(model: Any) -> SelfAttentionReorderedCache | None:
    """The cache for `generate`'s beam search; None where the generation config builds its own."""
    config = model.generation_config
    if config.cache_implementation is not None or config.use_cache is False:
        return None
    return SelfAttentionReorderedCache(DynamicCache(), DynamicCache())


def _beam_shared_forward(attn: Any, beams: int) -> Any:
    """A forward for one TrOCR cross-attention module during beam search: the keys and values are
    computed and kept once per image (its beams are consecutive rows with the same encoder output)
    and every beam's query attends to them, instead of `beams` copies read at every step."""
    original = attn.forward
    heads, head_dim = attn.num_heads, attn.head_dim

    def forward(
        hidden_states: torch.Tensor,
        key_value_states: torch.Tensor | None = None,
        cache: Any = None,
        attention_mask: torch.Tensor | None = None,
        output_attentions: bool | None = False,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, None]:
        rows, length, _ = hidden_states.shape
        if (
            key_value_states is None
            or attention_mask is not None
            or output_attentions
            or attn.training
            or rows % beams
            or not isinstance(cache, EncoderDecoderCache)
        ):
            return original(
                hidden_states,
                key_value_states=key_value_states,
                cache=cache,
                attention_mask=attention_mask,
                output_attentions=output_attentions,
                **kwargs,
            )
        images = rows // beams
        store = cache.cross_attention_cache
        if cache.is_updated.get(attn.layer_idx):
            keys, values = store.layers[attn.layer_idx].keys, store.layers[attn.layer_idx].values
        else:
            source = key_value_states[::beams]
            keys = attn.k_proj(source).view(images, -1, heads, head_dim).transpose(1, 2)
            values = attn.v_proj(source).view(images, -1, heads, head_dim).transpose(1, 2)
            keys, values = store.update(keys, values, attn.layer_idx)
            cache.is_updated[attn.layer_idx] = True
        query = attn.q_proj(hidden_states) * attn.scaling
        query = query.view(images, beams * length, heads, head_dim).transpose(1, 2)
        weights = torch.softmax(query @ keys.transpose(-1, -2), dim=-1)
        out = (weights @ values).transpose(1, 2).reshape(rows, length, heads * head_dim)
        return attn.out_proj(out), None

    return forward


@contextlib.contextmanager
def beams_share_cross_attention(model: Any, beams: int) -> Iterator[bool]:
    """During one beam search, the TrOCR decoder's cross-attention reads each image's keys and
    values once for all its beams (the beam cache then holds one row per image). Yields whether it
    applies: TrOCR decoders run eagerly; anything else decodes as before."""
    decoder = getattr(getattr(model.decoder, "model", None), "decoder", None)
    needed = ("num_heads", "head_dim", "scaling", "layer_idx", "k_proj", "q_proj", "v_proj", "out_proj")
    modules: list[Any] = [getattr(layer, "encoder_attn", None) for layer in getattr(decoder, "layers", [])]
    compiled = getattr(model.decoder, "_compiled_call_impl", None) is not None
    if not modules or compiled or not all(all(hasattr(m, a) for a in needed) for m in modules):
        yield False
        return
    for module in modules:
        module.forward = _beam_shared_forward(module, beams)
    try:
        yield True
    finally:
        for module in modules:
            del module.forward


def convolutional_encoder(model: Any) -> bool:
    """An encoder built of convolutions (a BiT / DPT-hybrid stem), not a ViT with one patch conv.

    On CPU such an encoder reads channels-last pixels faster (oneDNN's own layout: no reorder
    around every convolution) with the same result (measured in docs/decoding.md)."""
    encoder = getattr(model, "encoder", None)
    if encoder is None:
        return False
    return sum(isinstance(m, torch.nn.Conv2d) for m in encoder.modules()) > 1


class BeamSupport:
    """What every runner's search shares: LM fusion, picking among the beams (CTC, LM, views, on
    the torch model's heads) and the texts read off the ids. `model` is the torch model (its
    encoder's CTC head and views rescore the beams; a runner may search in another engine)."""

    model: Any
    tokenizer: Any
    device: torch.device
    _fusion: CharLMFusion | None = None

    def _fusion_for(self, lm: CharNgramLM, weight: float) -> CharLMFusion:
        """One fusion processor (and table cache) per language model and weight."""
        if self._fusion is None or self._fusion.lm is not lm or self._fusion.weight != weight:
            start = self.model.config.decoder_start_token_id
            self._fusion = CharLMFusion(lm, weight, self.tokenizer, start)
        return self._fusion

    def forget(self, settings: DecodeSettings) -> None:
        """Read the next lines as new ones: the LM fusion tables and the language models' caches,
        filled by what was read, are emptied (the benchmark's timed runs re-read the same lines)."""
        self._fusion = None
        for lm in (settings.fusion_lm, settings.rescoring.lm):
            if lm is not None:
                lm.forget()

    def _read(
        self, steps: Steps, pixels: torch.Tensor, states: torch.Tensor | None, settings: DecodeSettings
    ) -> list[Prediction]:
        """Search with `steps` (begun for the images of `pixels`), rescore (CTC on the encoder's
        `states`), and decode the texts."""
        config = self.model.generation_config
        eos = config.eos_token_id if isinstance(config.eos_token_id, int) else config.eos_token_id[0]
        start = config.decoder_start_token_id
        if start is None:
            start = self.model.config.decoder_start_token_id
        pad = config.pad_token_id if config.pad_token_id is not None else self.tokenizer.pad_token_id
        fusion: CharLMFusion | None = None
        if settings.fused:
            assert settings.fusion_lm is not None
            fusion = self._fusion_for(settings.fusion_lm, settings.fusion_weight)
        ctc = None
        if settings.ctc_joint > 0:
            ctc = self._prefix_scorer(states, settings, eos)
        generated, logprobs = search(
            steps,
            len(pixels),
            beams=settings.num_beams,
            max_new_tokens=settings.max_new_tokens,
            start=start,
            eos=eos,
            pad=pad,
            length_penalty=settings.length_penalty,
            fusion=fusion,
            fusion_order=fusion.lm.order - 1 if fusion is not None else 0,
            all_beams=settings.rescores,
            ctc=ctc,
        )
        if settings.rescores:
            generated, logprobs = self._rescore(
                pixels, states, generated, logprobs, settings.num_beams, settings.rescoring
            )
        return decode_predictions(self.tokenizer, generated, logprobs)

    def _prefix_scorer(
        self, states: torch.Tensor | None, settings: DecodeSettings, eos: int
    ) -> CTCPrefixScorer:
        """The CTC prefix scorer of joint decoding, on the encoder's `states` of each image."""
        from ..model.ctc import ctc_log_probs

        if states is None:
            raise UserError("eval.ctc_joint reads the encoder's states, which this runner does not return")
        specials = [int(i) for i in self.tokenizer.all_special_ids]
        return CTCPrefixScorer(
            ctc_log_probs(self.model, states.to(self.model.device)).to(self.device),
            beams=settings.num_beams,
            blank=self.tokenizer.pad_token_id,
            eos=eos,
            weight=settings.ctc_joint,
            forbidden=specials,
        )

    def _rescore(
        self,
        pixels: torch.Tensor,
        states: torch.Tensor | None,
        rows: list[list[int]],
        logprobs: torch.Tensor,
        beams: int,
        how: Rescoring,
    ) -> tuple[list[list[int]], torch.Tensor]:
        """Of each image's `beams` hypotheses, the best by (1 - w) log p_decoder + w log p_CTC
        (averaged over the image and its `how.views` where the two best are within
        `how.views_margin`) + lm_weight x log p_LM(text) + bonus x length."""
        eos, pad = self.tokenizer.eos_token_id, self.tokenizer.pad_token_id
        tokens, decoder_logp = [], []
        for ids, logp in zip(rows, logprobs, strict=True):
            n_text, n_scored = sequence_end(ids, eos, pad)
            tokens.append(ids[:n_text])
            decoder_logp.append(float(logp[:n_scored].sum()))
        plain = self._optical(states, torch.tensor(decoder_logp), tokens, beams, how).view(-1, beams)
        # The terms that do not look at the image: length bonus and language model.
        prior = how.length_bonus * torch.tensor([len(t) for t in tokens], dtype=torch.float32).view(-1, beams)
        if how.lm is not None and how.lm_weight > 0:
            texts = self.tokenizer.batch_decode(tokens, skip_special_tokens=True)
            lm = torch.tensor([how.lm.log_prob(t.strip()) for t in texts], dtype=torch.float32)
            prior = prior + how.lm_weight * lm.view(-1, beams)
        if how.views:
            # Only images whose two best beams are within `views_margin` of each other: where one
            # reading is far ahead the views rarely change it, and each costs two passes.
            top2 = (plain + prior).topk(min(2, beams), dim=1).values
            unsure = torch.nonzero(top2[:, 0] - top2[:, -1] < how.views_margin).flatten()
            if len(unsure):
                plain[unsure] = self._view_scores(pixels[unsure], plain[unsure], tokens, unsure, beams, how)
        joint = plain + prior
        best = [g * beams + int(joint[g].argmax()) for g in range(joint.shape[0])]
        return [rows[i] for i in best], logprobs[best]

    def _optical(
        self,
        states: torch.Tensor | None,
        decoder_logp: torch.Tensor,
        rows: list[list[int]],
        beams: int,
        how: Rescoring,
    ) -> torch.Tensor:
        """(1 - w) log p_decoder + w log p_CTC of each row (`beams` rows per image in `states`)."""
        w = how.ctc_weight
        if w == 0:
            return decoder_logp
        from ..model.ctc import ctc_log_likelihood

        assert states is not None, "CTC rescoring reads the encoder's states"

        ctc = ctc_log_likelihood(self.model, states, rows, self.tokenizer.pad_token_id, rows_per_image=beams)
        return (1 - w) * decoder_logp + w * ctc

    def _view_scores(
        self,
        pixels: torch.Tensor,
        joint: torch.Tensor,
        tokens: list[list[int]],
        images: torch.Tensor,
        beams: int,
        how: Rescoring,
    ) -> torch.Tensor:
        """The optical scores (images, beams) of `images` averaged with those on each view."""
        from .views import VIEWS

        eos, pad = self.tokenizer.eos_token_id, self.tokenizer.pad_token_id
        rows = [tokens[g * beams + k] for g in images.tolist() for k in range(beams)]
        total = joint.clone()
        for name in how.views:
            view = self.model.encoder(pixel_values=VIEWS[name](pixels)).last_hidden_state
            decoder = decoder_log_likelihood(self.model, view, rows, eos, pad, beams)
            total += self._optical(view, decoder, rows, beams, how).view(-1, beams)
        return total / (1 + len(how.views))


class TorchRunner(BeamSupport):
    """A (possibly modified) Transformers model, optionally under autocast: the encoder once, then
    decoding/search.py's loop for a TrOCR decoder, or `generate` for anything else."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        device: torch.device,
        autocast: torch.dtype | None = None,
        engine: bool = True,
    ) -> None:
        """`engine=False` decodes with Transformers' plain `generate` and its own cache: the
        reference the engine's speed is measured against (the `generate` variant)."""
        self.model = model
        self.tokenizer = tokenizer
        self.device = device
        self.autocast = autocast
        self.engine = engine
        self._fusion = None
        self.channels_last = engine and device.type == "cpu" and convolutional_encoder(model)
        # A TrOCR decoder decodes in decoding/search.py's loop; anything else through `generate`.
        self.fast = engine and TrOCRSteps.supports(model)

    @contextlib.contextmanager
    def _precision(self) -> Iterator[None]:
        if self.autocast is None:
            yield
            return
        with torch.autocast(device_type=self.device.type, dtype=self.autocast):
            yield

    def _pixels(self, pixel_values: torch.Tensor) -> torch.Tensor:
        pixels = pixel_values.to(self.device)
        return pixels.contiguous(memory_format=torch.channels_last) if self.channels_last else pixels

    def cannot_decode(self, settings: DecodeSettings) -> str | None:
        """Why this runner cannot decode with `settings`, or None."""
        if settings.ctc_joint > 0 and not (self.fast and not settings.no_repeat_ngram_size):
            return (
                "eval.ctc_joint needs trocr-tune's own search: a TrOCR decoder, not compiled, "
                "without eval.no_repeat_ngram_size"
            )
        return None

    def generate_batch(self, pixel_values: torch.Tensor, settings: DecodeSettings) -> list[Prediction]:
        if self.fast and not settings.no_repeat_ngram_size:
            return self._search_batch(pixel_values, settings)
        if reason := self.cannot_decode(settings):
            raise UserError(reason)
        kwargs = settings.generate_kwargs()
        rescore = settings.rescoring
        fused = settings.fused
        if fused:
            from transformers import LogitsProcessorList

            assert settings.fusion_lm is not None
            fusion = self._fusion_for(settings.fusion_lm, settings.fusion_weight)
            kwargs["logits_processor"] = LogitsProcessorList([fusion])
        beams = settings.num_beams
        rescoring = settings.rescores
        if rescoring:
            kwargs["num_return_sequences"] = beams
        cache = beam_cache(self.model) if beams > 1 and self.engine else None
        if cache is not None:
            kwargs["cache"] = cache
        with torch.inference_mode(), self._precision():
            pixels = self._pixels(pixel_values)
            if rescoring or fused:
                # The encoder runs once: generate decodes from its output and the CTC reads it.
                states = self.model.encoder(pixel_values=pixels).last_hidden_state
                inputs: dict[str, Any] = {"encoder_outputs": BaseModelOutput(last_hidden_state=states)}
            else:
                inputs = {"pixel_values": pixels}
            if fused:
                kwargs["output_logits"] = True  # the decoder's own scores, before the LM is added
            sharing = beams_share_cross_attention(self.model, beams) if cache is not None else None
            with sharing or contextlib.nullcontext():
                out = self.model.generate(
                    **inputs,
                    output_scores=True,
                    return_dict_in_generate=True,
                    **kwargs,
                )
            # With fusion the search's scores include the language model: the decoder's own
            # log-probabilities (its raw logits, followed along each beam) are put back, so
            # rescoring and confidences mean what they mean without fusion.
            scores = self.model.compute_transition_scores(
                out.sequences,
                out.logits if fused else out.scores,
                getattr(out, "beam_indices", None),
                normalize_logits=True,
            )
            generated = out.sequences[:, -scores.shape[1] :].tolist()
            logprobs = scores.float().cpu()
            if rescoring:
                generated, logprobs = self._rescore(pixels, states, generated, logprobs, beams, rescore)
        return decode_predictions(self.tokenizer, generated, logprobs)

    def _search_batch(self, pixel_values: torch.Tensor, settings: DecodeSettings) -> list[Prediction]:
        """The same readings as `generate` (tests/decoding/test_search.py), from decoding/search.py's loop."""
        with torch.inference_mode(), self._precision():
            pixels = self._pixels(pixel_values)
            states = self.model.encoder(pixel_values=pixels).last_hidden_state
            steps = TrOCRSteps(self.model)
            steps.begin(states, settings.num_beams, settings.max_new_tokens)
            return self._read(steps, pixels, states, settings)

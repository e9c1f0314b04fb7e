"""Greedy and beam search over a TrOCR decoder as a few tensor operations per step.

`generate` runs the same search (Transformers' vectorised beam search, `early_stopping=True`);
this loop reads the same beams without what a TrOCR decoder does not need at every step: the
model wrappers, a growing cache concatenated and reordered whole, one copy of the image's
cross-attention keys and values per beam, and images that finished still in the batch.
`tests/decoding/test_search.py` checks it against `generate`; docs/decoding.md has the figures.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import torch

from .ctc_prefix import CTCPrefixScorer
from .results import written_end

# Generation-config fields whose non-default values add a logits processor or stopping rule
# this search does not implement: with any of them set, `generate` decodes.
_PLAIN_GENERATION = {
    "min_length": 0,
    "min_new_tokens": None,
    "repetition_penalty": 1.0,
    "encoder_repetition_penalty": 1.0,
    "no_repeat_ngram_size": 0,
    "encoder_no_repeat_ngram_size": 0,
    "bad_words_ids": None,
    "forced_bos_token_id": None,
    "forced_eos_token_id": None,
    "suppress_tokens": None,
    "begin_suppress_tokens": None,
    "sequence_bias": None,
    "renormalize_logits": False,
    "exponential_decay_length_penalty": None,
    "stop_strings": None,
    "max_time": None,
    "cache_implementation": None,
}

Fusion = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class TrOCRSteps:
    """One decoder step at a time for a batch of rows (`beams` consecutive rows per image).

    The self-attention keys and values of every step sit in a preallocated buffer (time first, so a
    beam reorder is one `index_select` into a second buffer); the cross-attention keys and values
    are computed once per image and all its rows attend to them in one product.
    """

    def __init__(self, model: Any) -> None:
        self.decoder = model.decoder.model.decoder
        self.layers = list(self.decoder.layers)
        self.head = model.decoder.output_projection
        # VisionEncoderDecoderModel has this projection exactly when its forward applies it.
        self.project = getattr(model, "enc_to_dec_proj", None)
        first = self.layers[0].self_attn
        self.heads, self.head_dim = first.num_heads, first.head_dim
        self.width = self.heads * self.head_dim
        self.learned = bool(self.decoder.config.use_learned_position_embeddings)

    @staticmethod
    def supports(model: Any) -> bool:
        """A TrOCR decoder in eval mode, not compiled, whose generation config adds nothing to the search."""
        from transformers import TrOCRForCausalLM
        from transformers.models.trocr.modeling_trocr import TrOCRDecoder

        decoder = getattr(model, "decoder", None)
        if not isinstance(decoder, TrOCRForCausalLM) or decoder.training:
            return False
        if not isinstance(getattr(decoder.model, "decoder", None), TrOCRDecoder):
            return False
        if getattr(decoder, "_compiled_call_impl", None) is not None:
            return False
        config = model.generation_config
        eos = config.eos_token_id
        if not isinstance(eos, int) and not (isinstance(eos, list) and len(eos) == 1):
            return False
        return all(
            getattr(config, name, default) in (default, None) for name, default in _PLAIN_GENERATION.items()
        )

    def begin(self, states: torch.Tensor, beams: int, steps: int) -> None:
        """Cross-attention keys/values of each image; cache room for `steps` steps of its `beams` rows."""
        if self.project is not None:
            states = self.project(states)
        images, length, _ = states.shape
        h, d = self.heads, self.head_dim
        self.cross = []
        for layer in self.layers:
            attention = layer.encoder_attn
            keys = attention.k_proj(states).view(images, length, h, d).permute(0, 2, 3, 1).contiguous()
            values = attention.v_proj(states).view(images, length, h, d).transpose(1, 2).contiguous()
            self.cross.append((keys, values))
        self.rows, self.beams, self.length = images * beams, beams, 0
        # Room for the steps most lines need; it grows (doubling) for the long ones, so a large
        # budget (max_new_tokens) does not reserve memory no line uses.
        size = min(steps, 64) * self.rows * self.width
        like = self.cross[0][0]
        self.device = like.device
        self.cache = [[like.new_empty(size) for _ in range(4)] for _ in self.layers]

    def _view(self, flat: torch.Tensor, steps: int, rows: int) -> torch.Tensor:
        return flat[: steps * rows * self.width].view(steps, rows, self.width)

    def _room(self, steps: int) -> None:
        """Cache buffers that hold `steps` steps of the current rows (grown by doubling)."""
        per_step = self.rows * self.width
        have = self.cache[0][0].numel() // per_step
        if steps <= have:
            return
        size = max(steps, 2 * have) * per_step
        used = self.length * per_step
        for buffers in self.cache:
            for k in range(4):
                grown = buffers[k].new_empty(size)
                if k < 2:
                    grown[:used] = buffers[k][:used]
                buffers[k] = grown

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """The next-token logits (rows, vocabulary) after `tokens` (rows,)."""
        self._room(self.length + 1)
        t, rows, h, d = self.length, self.rows, self.heads, self.head_dim
        decoder = self.decoder
        x = decoder.embed_tokens(tokens)
        if self.learned:
            x = x + decoder.embed_positions.weight[t + decoder.embed_positions.offset]
        else:
            x = x + decoder.embed_positions(tokens.view(-1, 1), cache_length=t).view(rows, -1).to(x.dtype)
        if decoder.layernorm_embedding is not None:
            x = decoder.layernorm_embedding(x)
        images = rows // self.beams
        for layer, (cross_keys, cross_values), buffers in zip(
            self.layers, self.cross, self.cache, strict=True
        ):
            attention = layer.self_attn
            keys, values = self._view(buffers[0], t + 1, rows), self._view(buffers[1], t + 1, rows)
            keys[t] = attention.k_proj(x)
            values[t] = attention.v_proj(x)
            query = (attention.q_proj(x) * attention.scaling).view(rows * h, 1, d)
            weights = torch.softmax(torch.bmm(query, keys.view(t + 1, rows * h, d).permute(1, 2, 0)), dim=-1)
            mixed = torch.bmm(weights, values.view(t + 1, rows * h, d).transpose(0, 1)).view(rows, self.width)
            x = layer.self_attn_layer_norm(x + attention.out_proj(mixed))

            attention = layer.encoder_attn
            query = (attention.q_proj(x) * attention.scaling).view(images, self.beams, h, d).transpose(1, 2)
            weights = torch.softmax(query @ cross_keys, dim=-1)
            mixed = (weights @ cross_values).transpose(1, 2).reshape(rows, self.width)
            x = layer.encoder_attn_layer_norm(x + attention.out_proj(mixed))

            x = layer.final_layer_norm(x + layer.fc2(layer.activation_fn(layer.fc1(x))))
        self.length = t + 1
        return self.head(x)

    def keep(self, rows: torch.Tensor, images: torch.Tensor | None = None) -> None:
        """The cache of rows `rows` (indices into the current rows) becomes the cache of the batch;
        `images` (indices of the images kept, in order) when whole images leave it."""
        t = self.length
        for buffers in self.cache:
            for k in (0, 1):
                source = self._view(buffers[k], t, self.rows)
                torch.index_select(source, 1, rows, out=self._view(buffers[k + 2], t, len(rows)))
                buffers[k], buffers[k + 2] = buffers[k + 2], buffers[k]
        self.rows = len(rows)
        if images is not None:
            self.cross = [(k.index_select(0, images), v.index_select(0, images)) for k, v in self.cross]


class Steps(Protocol):
    """One decoder step at a time for `beams` consecutive rows per image (TrOCRSteps in torch,
    decoding/onnx.py's OrtSteps in ONNX Runtime); `begin` has been called."""

    device: torch.device

    def step(self, tokens: torch.Tensor) -> torch.Tensor: ...

    def keep(self, rows: torch.Tensor, images: torch.Tensor | None = None) -> None: ...


def search(
    steps: Steps,
    images: int,
    *,
    beams: int,
    max_new_tokens: int,
    start: int,
    eos: int,
    pad: int,
    length_penalty: float = 1.0,
    fusion: Fusion | None = None,
    fusion_order: int = 0,
    all_beams: bool = False,
    ctc: CTCPrefixScorer | None = None,
) -> tuple[list[list[int]], torch.Tensor]:
    """Beam search (greedy with `beams=1`) as `generate` does it with `early_stopping=True`.

    `steps` has begun (e.g. `TrOCRSteps.begin`) for `images` images of `beams` rows each, with
    room for `max_new_tokens` steps. Returns the generated ids of each image's best reading (of all
    its `beams` readings, best first, with `all_beams`), eos included and pad after, and the
    decoder's own log-probability of each (rows, tokens; 0 after the eos).
    `fusion(history, log_probs)` adds its scores to the search's, as a logits processor would; it
    sees the last `fusion_order` ids of each row. `ctc` (begun for the same rows) makes it joint
    CTC-attention decoding: each candidate's decoder log-probability is weighed with its CTC prefix
    score, `(1 - w) log p_decoder + w log p_CTC-prefix` (decoding/ctc_prefix.py).
    """
    device = steps.device
    total, width = max_new_tokens, 2 * beams
    history = torch.full((images, beams, total + 1), pad, dtype=torch.long, device=device)
    history[:, :, 0] = start
    own = torch.zeros((images, beams, total), device=device)  # the decoder's log p of each token
    running = torch.zeros((images, beams), device=device)
    running[:, 1:] = -1e9  # only the first beam's tokens are candidates at the first step
    done_ids = history.clone()
    done_own = torch.zeros_like(own)
    done_score = torch.full((images, beams), -1e9, device=device)
    done_full = torch.zeros((images, beams), dtype=torch.bool, device=device)
    out_ids, out_own = history.clone(), own.clone()
    alive = torch.arange(images, device=device)  # original index of each image still searching
    last = history[:, :, 0].reshape(-1)
    for t in range(total):
        n = len(alive)
        log_probs = torch.log_softmax(steps.step(last).float(), dim=-1)
        scores = log_probs
        if fusion is not None:
            seen = history[:, :, max(0, t + 1 - fusion_order) : t + 1].reshape(n * beams, -1)
            scores = fusion(seen, log_probs)
        if ctc is not None:
            scores = scores + ctc.weight * (ctc.scores(log_probs) - log_probs)
        vocabulary = scores.shape[-1]
        candidates = (scores.view(n, beams, vocabulary) + running[:, :, None]).view(n, -1)
        top_scores, top = candidates.topk(width, dim=1)
        source, token = top // vocabulary, top % vocabulary
        token_own = log_probs.view(n, -1).gather(1, top)
        ends = token == eos
        if t + 1 >= total:  # the length limit ends every candidate
            ends = torch.ones_like(ends)
        # Each candidate's history, with its token appended.
        grown = history.gather(1, source[:, :, None].expand(-1, -1, total + 1))
        grown[:, :, t + 1] = token
        grown_own = own.gather(1, source[:, :, None].expand(-1, -1, total))
        grown_own[:, :, t] = token_own

        # Of the best `beams` candidates, those that end join the finished readings (by score / length).
        finishing = ends[:, :beams]
        if bool(finishing.any()):
            ended = top_scores[:, :beams] / ((t + 1) ** length_penalty) + (~finishing).float() * -1e9
            merged = torch.cat([done_score, ended], 1)
            best = merged.topk(beams, dim=1).indices
            done_score = merged.gather(1, best)
            done_full = torch.cat([done_full, finishing], 1).gather(1, best)
            pick = best[:, :, None]
            done_ids = torch.cat([done_ids, grown[:, :beams]], 1).gather(1, pick.expand(-1, -1, total + 1))
            done_own = torch.cat([done_own, grown_own[:, :beams]], 1).gather(1, pick.expand(-1, -1, total))

        # The best `beams` candidates that did not end search on.
        kept_scores = top_scores + ends.float() * -1e9
        keep = kept_scores.topk(beams, dim=1).indices
        running = kept_scores.gather(1, keep)
        history = grown.gather(1, keep[:, :, None].expand(-1, -1, total + 1))
        own = grown_own.gather(1, keep[:, :, None].expand(-1, -1, total))
        rows = (source.gather(1, keep) + torch.arange(n, device=device)[:, None] * beams).view(-1)

        # An image is done when `beams` readings have ended (early stopping) or at the length limit.
        finished = done_full.all(1) if t + 1 < total else torch.ones(n, dtype=torch.bool, device=device)
        if bool(finished.any()):
            out_ids[alive[finished]] = done_ids[finished]
            out_own[alive[finished]] = done_own[finished]
            going = torch.nonzero(~finished).flatten()
            if len(going) == 0:
                break
            alive, running, history, own = alive[going], running[going], history[going], own[going]
            done_ids, done_own = done_ids[going], done_own[going]
            done_score, done_full = done_score[going], done_full[going]
            rows = rows.view(n, beams)[going].view(-1)
            steps.keep(rows, going)
            images_kept: torch.Tensor | None = going
        else:
            if beams > 1:
                steps.keep(rows)
            images_kept = None
        last = history[:, :, t + 1].reshape(-1)
        if ctc is not None:
            ctc.advance(rows, last, images_kept)

    picked = slice(None) if all_beams else slice(0, 1)
    ids = out_ids[:, picked, 1:].reshape(-1, total)
    logp = out_own[:, picked].reshape(-1, total)
    end = written_end(ids, pad)
    return ids[:, :end].tolist(), logp[:, :end].cpu()

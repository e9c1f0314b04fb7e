"""CTC prefix scores inside the search: joint CTC-attention decoding (`eval.ctc_joint`).

Every candidate `h + c` of a beam is scored by the encoder's CTC head as well as by the decoder:
`(1 - w) log p_decoder(c | h) + w (log psi(h + c) - log psi(h))`, where psi is the CTC probability
of all label sequences that start with the prefix (Watanabe et al. 2017, "Hybrid CTC/attention";
ESPnet's CTCPrefixScore). When the reading ends, psi(h) gives way to p_CTC(h | image), so a
finished beam's total is `(1 - w) log p_decoder + w log p_CTC`, the same sum `eval.ctc_rescore`
picks with, but beams the decoder alone would drop stay in the search. `<pad>` is the CTC blank.

The prefix probability of every extension is one matrix product per image (the frames' entry
weights of each beam against the frames' label probabilities); the forward variables, which need
the recursion over the frames, are computed only for the extensions the search keeps, by two
cumulative log-sum-exps instead of a loop (the non-blank recursion does not depend on the blank
one).
"""

from __future__ import annotations

import torch

NEG = -1e30
# Vocabularies larger than this score only the decoder's best candidates of each beam (ESPnet's
# CTC pre-beam); a character vocabulary is scored whole.
FULL_VOCABULARY = 512


class CTCPrefixScorer:
    """Per-row CTC prefix state for a search over `beams` consecutive rows per image."""

    def __init__(
        self,
        log_probs: torch.Tensor,
        beams: int,
        blank: int,
        eos: int,
        weight: float,
        forbidden: list[int] | None = None,
        pre_beam: int | None = None,
    ) -> None:
        """`log_probs`: (images, frames, vocabulary) CTC log-probabilities of each image's columns."""
        self.x = log_probs.float()
        # Probabilities in float64 for the products: a frame's label can be as unlikely as e^-300.
        self.p = log_probs.double().exp()
        device = self.device = self.x.device
        images, self.frames, _ = self.x.shape
        self.beams, self.blank, self.eos, self.weight = beams, blank, eos, weight
        self.pre_beam = pre_beam or max(16, 2 * beams)
        rows = images * beams
        # The empty prefix: no label emitted, only blanks up to each frame.
        self.r_n = torch.full((rows, self.frames), NEG, device=device)
        self.r_b = self.x[:, :, blank].cumsum(1).repeat_interleave(beams, 0)
        self.psi = torch.zeros(rows, device=device)
        self.last = torch.full((rows,), -1, dtype=torch.long, device=device)
        self.started = False
        never = sorted({blank, *(forbidden or [])} - {eos})
        self.forbidden = torch.tensor(never, dtype=torch.long, device=device)
        self._psi_ext: torch.Tensor | None = None

    def _entry(self, phi: torch.Tensor) -> torch.Tensor:
        """(rows, frames) log weight of entering a new label at each frame: phi(t - 1), and at
        frame 0 only from the empty prefix."""
        first = torch.full((len(phi), 1), NEG if self.started else 0.0, device=self.device)
        return torch.cat([first, phi[:, :-1]], 1)

    def _image_of(self, rows: int) -> torch.Tensor:
        """The image of each of `rows` rows (`beams` consecutive rows per image)."""
        return torch.arange(rows, device=self.device) // self.beams

    def _label(self, tokens: torch.Tensor) -> torch.Tensor:
        """(rows, frames) CTC log-probabilities of each row's token in its image's frames."""
        return self.x[self._image_of(len(tokens)), :, tokens]

    def scores(self, decoder: torch.Tensor) -> torch.Tensor:
        """(rows, vocabulary) CTC score of every next token: log psi(h + c) - log psi(h), and
        log p_CTC(h) - log psi(h) for the end. `decoder` (the decoder's log-probabilities) picks
        the candidates scored in a large vocabulary; the others get -inf."""
        rows, vocabulary = decoder.shape
        r_sum = torch.logaddexp(self.r_n, self.r_b)
        entry = self._entry(r_sum)
        top = entry.max(1, keepdim=True).values
        weights = (entry - top).double().exp()
        images = rows // self.beams
        if vocabulary > FULL_VOCABULARY:
            candidates = decoder.topk(min(self.pre_beam, vocabulary), dim=1).indices
            probs = self.p[self._image_of(rows)[:, None], :, candidates]  # (rows, candidates, frames)
            mass = (weights[:, None, :] * probs).sum(2)
        else:
            candidates = None
            mass = torch.bmm(weights.view(images, self.beams, self.frames), self.p).view(rows, -1)
        psi = (mass.log() + top.double()).float().clamp(min=NEG)
        # A label repeated needs a blank in between: its entry weights are the blank-ending ones.
        if self.started:
            repeat = (self._entry(self.r_b) + self._label(self.last)).logsumexp(1)
            if candidates is None:
                psi.scatter_(1, self.last[:, None], repeat[:, None])
            else:
                psi = torch.where(candidates == self.last[:, None], repeat[:, None], psi)
        if candidates is None:
            ctc = psi - self.psi[:, None]
        else:
            ctc = torch.full((rows, vocabulary), NEG, device=self.device)
            ctc.scatter_(1, candidates, psi - self.psi[:, None])
        # The end of the reading: the whole sequence's CTC probability.
        ctc[:, self.eos] = r_sum[:, -1] - self.psi
        ctc[:, self.forbidden] = NEG
        self._psi_ext = psi if candidates is None else ctc + self.psi[:, None]
        return ctc

    def advance(self, rows: torch.Tensor, tokens: torch.Tensor, images: torch.Tensor | None = None) -> None:
        """The rows searching on are `rows` (indices into the scored rows) extended by `tokens`;
        `images` (indices of the images kept, in order) when whole images leave the search."""
        assert self._psi_ext is not None, "advance follows scores"
        if images is not None:
            self.x, self.p = self.x[images], self.p[images]
        r_n, r_b, last = self.r_n[rows], self.r_b[rows], self.last[rows]
        phi = torch.where((tokens == last)[:, None], r_b, torch.logaddexp(r_n, r_b))
        label = self._label(tokens)
        blank = self._label(torch.full_like(tokens, self.blank))
        # r_n(t) = x_t(c) + logaddexp(r_n(t-1), phi(t-1)): a cumulative log-sum-exp of the entries.
        entry = self._entry(phi) + label
        cum = label.cumsum(1)
        self.r_n = cum + torch.logcumsumexp(entry - cum, dim=1)
        # r_b(t) = x_t(blank) + logaddexp(r_b(t-1), r_n(t-1)), r_b(0) = -inf.
        blank_cum = blank.cumsum(1)
        shifted = torch.cat([torch.full((len(rows), 1), NEG, device=self.device), self.r_n[:, :-1]], 1)
        self.r_b = blank_cum + torch.logcumsumexp(shifted + blank - blank_cum, dim=1)
        self.psi = self._psi_ext[rows, tokens]
        self.last = tokens.clone()
        self.started = True
        self._psi_ext = None

"""Joint CTC-attention decoding: the prefix scores, the search with them, and the runners."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from trocr_tune.decoding.ctc_prefix import CTCPrefixScorer
from trocr_tune.decoding.search import search

BLANK, EOS = 0, 1


def _ctc_ll(x: torch.Tensor, labels: list[int]) -> float:
    """log p_CTC(labels | x) of one image, from PyTorch's own CTC loss."""
    frames = x.shape[0]
    nll = F.ctc_loss(
        x[:, None], torch.tensor([labels]), torch.tensor([frames]), torch.tensor([len(labels)]), blank=BLANK
    )
    return -float(nll) * len(labels) if labels else -float(nll)


@pytest.mark.parametrize("vocabulary", [9, 600])
def test_prefix_scores_add_up_to_the_ctc_likelihood(vocabulary: int) -> None:
    """Along any reading, the per-step scores (prefix gains, then the end) sum to log p_CTC of it;
    repeated labels included, and in a vocabulary large enough to score only the pre-beam."""
    torch.manual_seed(0)
    readings = [[2, 3, 3, 4], [5], [2, 2, 2], [7, 4, 7, 4, 8]]
    x = torch.log_softmax(torch.randn(len(readings), 14, vocabulary) * 2, -1)
    scorer = CTCPrefixScorer(x, 1, BLANK, EOS, 0.5)
    total = torch.zeros(len(readings))
    for t in range(max(map(len, readings)) + 1):
        tokens = torch.tensor([r[t] if t < len(r) else EOS for r in readings])
        # The decoder's scores favour the reading's token, so the pre-beam holds it.
        decoder = torch.full((len(readings), vocabulary), -5.0).scatter(1, tokens[:, None], 0.0)
        scores = scorer.scores(decoder)
        assert bool((scores[:, BLANK] < -1e20).all()), "the blank is never a reading's token"
        for i, reading in enumerate(readings):
            if t <= len(reading):
                total[i] += scores[i, tokens[i]]
        scorer.advance(torch.arange(len(readings)), torch.where(tokens == EOS, 2, tokens))
    for i, reading in enumerate(readings):
        assert float(total[i]) == pytest.approx(_ctc_ll(x[i], reading), abs=1e-3)


class _FlatDecoder:
    """Steps whose decoder has no opinion: every token equally likely at every step."""

    device = torch.device("cpu")

    def __init__(self, vocabulary: int) -> None:
        self.vocabulary, self.rows = vocabulary, 0

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        return torch.zeros(len(tokens), self.vocabulary)

    def keep(self, rows: torch.Tensor, images: torch.Tensor | None = None) -> None:
        pass


def _frames(path: list[int], vocabulary: int) -> torch.Tensor:
    """CTC log-probabilities that put 0.9 on each frame's label of `path`."""
    x = torch.full((len(path), vocabulary), 0.1 / (vocabulary - 1))
    x[torch.arange(len(path)), torch.tensor(path)] = 0.9
    return x.log()


@pytest.mark.parametrize("beams", [1, 3])
def test_joint_search_reads_what_the_ctc_head_sees(beams: int) -> None:
    """With a decoder that has no opinion, the search reads each image's CTC labelling: blanks
    and repeats collapsed, a label repeated across a blank kept twice; images of different
    lengths finish at different steps."""
    vocabulary = 8
    paths = [[3, 3, 0, 4, 0, 4, 4, 0, 0, 0], [5, 0, 0, 0, 0, 0, 0, 0, 0, 0], [6, 7, 6, 7, 0, 2, 2, 0, 3, 0]]
    x = torch.stack([_frames(p, vocabulary) for p in paths])
    scorer = CTCPrefixScorer(x, beams, BLANK, EOS, 1.0)
    ids, _ = search(
        _FlatDecoder(vocabulary), 3, beams=beams, max_new_tokens=12, start=2, eos=EOS, pad=BLANK, ctc=scorer
    )
    readings = [[t for t in row if t not in (EOS, BLANK)] for row in ids]
    assert readings == [[3, 4, 4], [5], [6, 7, 6, 7, 2, 3]]


def test_the_weight_is_checked_and_generate_refuses_it() -> None:
    """eval.ctc_joint is a weight in [0, 1]; Transformers' plain `generate` cannot carry the
    prefix state across its beams, so that path refuses it in one line instead of ignoring it."""
    from trocr_tune.config import EvalConfig
    from trocr_tune.decoding import DecodeSettings
    from trocr_tune.decoding.runners import TorchRunner
    from trocr_tune.errors import UserError
    from trocr_tune.model.loading import load_bundle

    with pytest.raises(UserError, match=r"eval\.ctc_joint must be within \[0, 1\]"):
        EvalConfig(ctc_joint=1.5)
    bundle = load_bundle("trocr-tune/base-htr")
    runner = TorchRunner(bundle.model, bundle.tokenizer, torch.device("cpu"))
    settings = DecodeSettings.from_eval(bundle, EvalConfig(num_beams=2, ctc_joint=0.7), 8)
    pixels = torch.rand(2, 3, bundle.info.image_height, bundle.info.image_width)
    assert len(runner.generate_batch(pixels, settings)) == 2
    runner.fast = False
    with pytest.raises(UserError, match=r"eval\.ctc_joint needs trocr-tune's own search"):
        runner.generate_batch(pixels, settings)

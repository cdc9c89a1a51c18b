"""A model scored utterance by utterance against a test set's transcripts, and the totals ranks sum.

The reference is the set's normalised transcript text, not its label ids decoded through the model's vocabulary: a
character the vocabulary lacks would decode as "[UNK]" and be scored against nothing real. Kept as it is, such a
character can never be produced by the model and simply counts as an error (``unrepresentable_characters`` names
them so the caller can say so once).

A rank scores only its own batches; ``SetTotals`` holds what ranks sum (counts, not rates: see counts.py).
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from xlsr_dist import text
from xlsr_dist.audio import SAMPLE_RATE
from xlsr_dist.decoding import greedy
from xlsr_dist.evaluation.counts import error_counts
from xlsr_dist.forward import CTCLoss, forward


@dataclass(frozen=True)
class UtteranceScore:
    """One scored utterance (one line of the hypotheses file)."""

    id: str
    reference: str
    hypothesis: str
    seconds: float
    word_errors: int
    words: int
    char_errors: int
    chars: int
    loss: float | None
    """CTC loss per label (as training's eval_loss); None where the labels need more frames than the audio gives."""
    hypothesis_lm: str | None = None
    """With --lm: the LM beam search's hypothesis and its errors (None without an LM)."""
    word_errors_lm: int | None = None
    char_errors_lm: int | None = None

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        return d if self.hypothesis_lm is not None else {k: v for k, v in d.items() if not k.endswith("_lm")}

    @staticmethod
    def from_dict(d: Mapping[str, Any]) -> UtteranceScore:
        return UtteranceScore(**{f.name: d[f.name] for f in dataclasses.fields(UtteranceScore) if f.name in d})


@dataclass
class SetTotals:
    """Sums over utterances; summing these across ranks gives exactly the totals of a one-rank run."""

    utterances: int = 0
    seconds: float = 0.0
    word_errors: int = 0
    words: int = 0
    char_errors: int = 0
    chars: int = 0
    loss_sum: float = 0.0
    loss_utterances: int = 0
    word_errors_lm: int = 0
    char_errors_lm: int = 0
    lm_utterances: int = 0

    @staticmethod
    def of(scores: Iterable[UtteranceScore]) -> SetTotals:
        t = SetTotals()
        for s in scores:
            t.utterances += 1
            t.seconds += s.seconds
            t.word_errors += s.word_errors
            t.words += s.words
            t.char_errors += s.char_errors
            t.chars += s.chars
            if s.loss is not None:
                t.loss_sum += s.loss
                t.loss_utterances += 1
            if s.word_errors_lm is not None and s.char_errors_lm is not None:
                t.word_errors_lm += s.word_errors_lm
                t.char_errors_lm += s.char_errors_lm
                t.lm_utterances += 1
        return t

    def vector(self) -> list[float]:
        return [float(getattr(self, f.name)) for f in dataclasses.fields(self)]

    @staticmethod
    def from_vector(values: Sequence[float]) -> SetTotals:
        fields = dataclasses.fields(SetTotals)
        if len(values) != len(fields):
            raise ValueError(f"expected {len(fields)} totals, got {len(values)}")
        # Counts travel as float64 (exact up to 2**53) through the all-reduce.
        return SetTotals(
            **{f.name: (float(v) if f.type in (float, "float") else int(round(v))) for f, v in zip(fields, values)}
        )

    def metrics(self, elapsed_s: float) -> dict[str, float]:
        """wer, cer, loss (only if some utterance allowed one), utterances, audio_hours, rtf (wall seconds per
        second of audio, over all ranks together)."""
        out = {
            "wer": self.word_errors / max(self.words, 1),
            "cer": self.char_errors / max(self.chars, 1),
            "utterances": float(self.utterances),
            "audio_hours": self.seconds / 3600.0,
            "rtf": elapsed_s / self.seconds if self.seconds > 0 else math.nan,
        }
        if self.loss_utterances:
            out["loss"] = self.loss_sum / self.loss_utterances
        if self.lm_utterances:
            out["wer_lm"] = self.word_errors_lm / max(self.words, 1)
            out["cer_lm"] = self.char_errors_lm / max(self.chars, 1)
        return out


def unrepresentable_characters(references: Iterable[str], vocab: Mapping[str, int]) -> dict[str, int]:
    """Characters of ``references`` (other than the space, the word delimiter) the vocabulary has no token for,
    with how often each occurs, most frequent first."""
    counts: Counter[str] = Counter()
    for ref in references:
        counts.update(c for c in ref if c != " " and c not in vocab)
    return dict(counts.most_common())


@torch.no_grad()
def score_utterances(
    model: torch.nn.Module,
    batches: Iterable[dict[str, Any]],
    references: Mapping[str, str],
    inverse_vocab: Sequence[str],
    blank_id: int,
    zero_infinity: bool,
    device: torch.device,
    precision_mode: str = "fp32",
    lm_decode: Callable[[np.ndarray], str] | None = None,
) -> Iterator[UtteranceScore]:
    """Greedy CTC hypothesis, errors and loss of every valid item of ``batches`` (collate.Batch), in batch order;
    with ``lm_decode`` ((frames, vocab) float32 log-probabilities -> text) also the LM beam search's.

    ``references`` maps utterance id -> normalised transcript. No collective: a rank scores its own batches.
    ``precision_mode`` "amp" (the model's run trained with Native AMP): the forward runs under fp16 autocast, as there.
    """
    model.eval()
    for batch in batches:
        out = forward(model, batch, device, CTCLoss(blank_id, zero_infinity), autocast_mode=precision_mode)
        assert out.losses is not None  # a loss was asked for
        losses = out.losses.cpu()
        frames = out.frames.cpu()
        ids = out.greedy_ids()
        samples = batch["attention_mask"].sum(-1)
        for i in batch["valid"].nonzero().flatten().tolist():
            uid = batch["ids"][i]
            n_frames = int(frames[i])
            hypothesis = greedy.ctc_greedy_decode(ids[i], inverse_vocab, blank_id)
            reference = references[uid]
            counts = error_counts([reference], [hypothesis])
            labels = [x for x in batch["labels"][i].tolist() if x >= 0]
            alignable = bool(labels) and text.ctc_min_frames(labels) <= n_frames
            lm: dict[str, Any] = {}
            if lm_decode is not None:
                log_probs = out.logits[i, :n_frames].float().log_softmax(-1).cpu().numpy()
                lm_counts = error_counts([reference], [hyp_lm := lm_decode(log_probs)])
                lm = {
                    "hypothesis_lm": hyp_lm,
                    "word_errors_lm": lm_counts.word_errors,
                    "char_errors_lm": lm_counts.char_errors,
                }
            yield UtteranceScore(
                id=uid,
                reference=reference,
                hypothesis=hypothesis,
                seconds=int(samples[i]) / SAMPLE_RATE,
                word_errors=counts.word_errors,
                words=counts.words,
                char_errors=counts.char_errors,
                chars=counts.chars,
                loss=float(losses[i]) if alignable else None,
                **lm,
            )

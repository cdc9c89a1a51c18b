"""Evaluation on every rank: greedy CTC decode, eval loss, WER and CER from counts summed across ranks.

WER is (substitutions + deletions + insertions) / reference words over the WHOLE eval set: each rank counts errors and
words on its share, the counts are summed, and only then divided. An average of per-rank WERs would weight ranks with
short utterances wrongly.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import jiwer
import torch

from xlsr_dist import text, world
from xlsr_dist.decoding import greedy
from xlsr_dist.forward import CTCLoss, forward, is_compiled


@dataclass(frozen=True)
class ErrorCounts:
    word_errors: int
    words: int
    char_errors: int
    chars: int


def error_counts(references: Sequence[str], hypotheses: Sequence[str]) -> ErrorCounts:
    """Edit-distance counts for a list of (non-empty) references; empty hypotheses count as all deletions."""
    if not references:
        return ErrorCounts(0, 0, 0, 0)
    w = jiwer.process_words(list(references), list(hypotheses))
    c = jiwer.process_characters(list(references), list(hypotheses))
    return ErrorCounts(
        word_errors=w.substitutions + w.deletions + w.insertions,
        words=w.substitutions + w.deletions + w.hits,
        char_errors=c.substitutions + c.deletions + c.insertions,
        chars=c.substitutions + c.deletions + c.hits,
    )


def rates(totals: Sequence[float]) -> dict[str, float]:
    """[loss_sum, utterances, word_errors, words, char_errors, chars] summed over ranks -> metrics."""
    loss_sum, n, werr, words, cerr, chars = totals
    return {
        "eval_loss": loss_sum / max(n, 1.0),
        "eval_wer": werr / max(words, 1.0),
        "eval_cer": cerr / max(chars, 1.0),
        "eval_samples": n,
    }


def decode_labels(labels: torch.Tensor, inverse_vocab: Sequence[str]) -> list[str]:
    out = []
    for row in labels.tolist():
        chars = [inverse_vocab[i] for i in row if i >= 0]
        out.append("".join(" " if c == text.WORD_DELIMITER else c for c in chars).strip())
    return out


@torch.no_grad()
def evaluate(
    engine: Any,
    batches: Iterable[dict[str, Any]],
    inverse_vocab: Sequence[str],
    blank_id: int,
    zero_infinity: bool,
    device: torch.device,
    dtype: torch.dtype,
    examples: int = 3,
    reduction: str = "mean",
    precision_mode: str = "fp32",
) -> tuple[dict[str, float], list[tuple[str, str, str]]]:
    """Run on EVERY rank (it ends in a collective). Returns (metrics, a few (id, reference, hypothesis) examples).

    eval_loss is the mean over utterances of each one's CTC loss under --ctc_loss_reduction ``reduction``: divided by
    its target length for "mean" (as training's loss), as is for "sum"; either way independent of batch and rank
    count. ``precision_mode`` "amp": the forward runs under fp16 autocast, as in training."""
    module = engine.module if hasattr(engine, "module") else engine
    was_training = module.training
    module.eval()
    totals = [0.0] * 6
    shown: list[tuple[str, str, str]] = []
    for batch in batches:
        valid = batch["valid"].to(device)
        out = forward(
            module,
            batch,
            device,
            CTCLoss(blank_id, zero_infinity, reduction),
            dtype,
            precision_mode,
            bucket=is_compiled(module),  # --torch_compile: a bounded set of shapes here too
        )
        assert out.losses is not None  # a loss was asked for
        keep = valid.nonzero().flatten().tolist()
        if not keep:
            continue
        totals[0] += float(out.losses[valid].sum())
        totals[1] += len(keep)
        ids = out.greedy_ids()
        hyps = [greedy.ctc_greedy_decode(ids[i], inverse_vocab, blank_id) for i in keep]
        refs = [decode_labels(batch["labels"][i : i + 1], inverse_vocab)[0] for i in keep]
        counts = error_counts(refs, hyps)
        totals[2] += counts.word_errors
        totals[3] += counts.words
        totals[4] += counts.char_errors
        totals[5] += counts.chars
        for i, ref, hyp in zip(keep, refs, hyps):
            if len(shown) < examples:
                shown.append((batch["ids"][i], ref, hyp))
    summed = world.all_reduce_sum(totals, device).tolist()
    if was_training:
        module.train()
    return rates(summed), shown

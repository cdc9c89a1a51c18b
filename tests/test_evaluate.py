"""WER/CER are computed from error and word counts summed over ranks, never averaged per rank."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from tests._dist import run_ranks
from tests._runs import DATA_CACHE
from xlsr_dist.config import ModelConfig
from xlsr_dist.data import demo
from xlsr_dist.evaluation import counts as evaluate
from xlsr_dist.evaluation.counts import error_counts, rates
from xlsr_dist.evaluation.scoring import score_utterances
from xlsr_dist.model import build_model

REFS = ["the cat sat on the mat", "hello", "a much longer reference sentence with many words in it", "yes no"]
HYPS = ["the cat sat on mat", "jello", "a much longer reference sentence with many words in it", "yes yes no"]


def test_counts_match_jiwer_on_the_whole_set() -> None:
    import jiwer

    c = error_counts(REFS, HYPS)
    assert c.word_errors / c.words == pytest.approx(jiwer.wer(REFS, HYPS))
    assert c.char_errors / c.chars == pytest.approx(jiwer.cer(REFS, HYPS))


@pytest.mark.parametrize("split", [[2, 2], [1, 3], [1, 1, 1, 1]])
def test_summed_counts_equal_global_wer_but_mean_of_rank_wers_does_not(split: list[int]) -> None:
    parts, start = [], 0
    for n in split:
        parts.append((REFS[start : start + n], HYPS[start : start + n]))
        start += n
    totals = [0.0] * 6
    per_rank_wer = []
    for refs, hyps in parts:
        c = error_counts(refs, hyps)
        for i, v in enumerate([0.0, len(refs), c.word_errors, c.words, c.char_errors, c.chars]):
            totals[i] += v
        per_rank_wer.append(c.word_errors / c.words)
    whole = error_counts(REFS, HYPS)
    assert rates(totals)["eval_wer"] == pytest.approx(whole.word_errors / whole.words)
    assert sum(per_rank_wer) / len(per_rank_wer) != pytest.approx(whole.word_errors / whole.words)


def test_empty_hypothesis_counts_as_deletions() -> None:
    c = error_counts(["one two three"], [""])
    assert (c.word_errors, c.words) == (3, 3)


# The in-training evaluation as Trainer runs it: the demo eval set through EvalStream (duration-sorted rounds split by
# eval_rank_batches, a padding slot for a rank left without an utterance), a tiny model from a fixed seed, and
# evaluate.evaluate ending in its all-reduce, under both --ctc_loss_reduction settings.
RANK_SCRIPT = r"""
import functools, json, sys, tempfile
from pathlib import Path
import torch
from transformers import set_seed
from xlsr_dist.evaluation import counts as evaluate
from xlsr_dist import text
from xlsr_dist.config import DataConfig, ModelConfig
from xlsr_dist.data.stream import EvalStream
from xlsr_dist.model import build_model, output_frames
from xlsr_dist.training.setup import load_or_build_vocab
from xlsr_dist.world import World, finish, init

train_dir, eval_dir, utterances, batch_size = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
world = World.from_env()
device = torch.device("cpu")
init(world, device, 120)
vocab = load_or_build_vocab(train_dir, Path(tempfile.mkdtemp()), False, DataConfig().normalization())
set_seed(0)
model = build_model(ModelConfig(architecture="tiny"), len(vocab), vocab[text.PAD])
frames = functools.partial(output_frames, model.config)
stream = EvalStream(eval_dir, world, batch_size, vocab, DataConfig(), frames, utterances)
print("PADDING_SLOT", json.dumps(any(b.min() < 0 for b in stream.batches)))
for reduction in ("mean", "sum"):
    metrics, examples = evaluate.evaluate(
        model, stream, text.inverse(vocab), vocab[text.PAD], True, device, torch.float32, reduction=reduction
    )
    print("RESULT", reduction, json.dumps({"metrics": metrics, "hypotheses": [hyp for _, _, hyp in examples]}))
finish()
"""


def _eval_results(tmp_path: Path, world_size: int, utterances: int, batch_size: int) -> list[dict]:
    train_dir, eval_dir = demo.ensure_demo_corpus(DATA_CACHE, n_train=96, n_eval=16)
    args = ["-c", RANK_SCRIPT, str(train_dir), str(eval_dir), str(utterances), str(batch_size)]
    results = run_ranks(args, world_size=world_size, timeout=300, log_dir=tmp_path / f"world{world_size}")
    parsed = []
    for r in results:
        assert r.returncode == 0, r.output[-3000:]
        lines = r.output.splitlines()
        by_reduction = {}
        for line in lines:
            if line.startswith("RESULT "):
                _, reduction, payload = line.split(" ", 2)
                by_reduction[reduction] = json.loads(payload)
        padding = next(json.loads(x.split(" ", 1)[1]) for x in lines if x.startswith("PADDING_SLOT"))
        parsed.append({"padding_slot": padding, **by_reduction})
    return parsed


@pytest.mark.slow
def test_in_training_eval_on_two_gloo_ranks_equals_one_rank(tmp_path: Path) -> None:
    # 13 utterances in batches of 6: on 2 ranks one round of 12, then rank 1 has nothing left and runs a padding slot.
    utterances, batch_size = 13, 6
    one = _eval_results(tmp_path, 1, utterances, batch_size)[0]
    two = _eval_results(tmp_path, 2, utterances, batch_size)
    assert [r["padding_slot"] for r in two] == [False, True]
    for reduction in ("mean", "sum"):
        expected = one[reduction]["metrics"]
        assert expected["eval_samples"] == utterances
        # A random model's hypotheses are not empty: WER/CER are computed on real text, not all deletions.
        assert any(one[reduction]["hypotheses"]) and expected["eval_cer"] > 0
        for rank_result in two:
            got = rank_result[reduction]["metrics"]
            assert got["eval_samples"] == utterances
            # WER and CER are ratios of integer counts summed over ranks: exactly equal.
            assert (got["eval_wer"], got["eval_cer"]) == (expected["eval_wer"], expected["eval_cer"])
            assert got["eval_loss"] == pytest.approx(expected["eval_loss"], rel=1e-6)
    # --ctc_loss_reduction reaches eval: "sum" does not divide by the transcript length.
    assert one["sum"]["metrics"]["eval_loss"] > 2 * one["mean"]["metrics"]["eval_loss"]


def _lm_head_dtypes_during(run: Any, precision_mode: str) -> set[str]:
    """The dtypes the CTC head's output had in each forward ``run(model, batches, precision_mode)`` made."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(architecture="tiny"), 8, 0)
    seen: set[str] = set()
    model.lm_head.register_forward_hook(lambda _m, _i, out: seen.add(str(out.dtype)))
    batch = {
        "input_values": torch.randn(2, 4000),
        "attention_mask": torch.ones(2, 4000, dtype=torch.long),
        "labels": torch.tensor([[3, 4, 5], [6, 7, -100]]),
        "valid": torch.tensor([True, True]),
        "ids": ["u1", "u2"],
    }
    run(model, [batch], precision_mode)
    return seen


@pytest.mark.parametrize(("precision_mode", "expected"), [("amp", {"torch.float16"}), ("fp32", {"torch.float32"})])
def test_eval_forward_runs_under_fp16_autocast_when_training_does(precision_mode: str, expected: set[str]) -> None:
    inverse = ["<pad>", "<unk>", "|", "a", "b", "c", "d", "e"]
    cpu = torch.device("cpu")

    def in_training(model: Any, batches: Any, mode: str) -> None:
        evaluate.evaluate(model, batches, inverse, 0, True, cpu, torch.float32, precision_mode=mode)

    def cli(model: Any, batches: Any, mode: str) -> None:
        list(score_utterances(model, batches, {"u1": "abc", "u2": "de"}, inverse, 0, True, cpu, mode))

    assert _lm_head_dtypes_during(in_training, precision_mode) == expected
    assert _lm_head_dtypes_during(cli, precision_mode) == expected

"""WER/CER are computed from error and word counts summed over ranks, never averaged per rank."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests._dist import run_ranks
from xlsr_dist.evaluate import error_counts, rates

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


RANK_SCRIPT = r"""
import json, sys, torch
from xlsr_dist.evaluate import error_counts, rates
from xlsr_dist.world import World, all_reduce_sum, init, shutdown
refs = json.loads(sys.argv[1]); hyps = json.loads(sys.argv[2])
world = World.from_env()
init(world, torch.device("cpu"), 60)
mine = [i for i in range(len(refs)) if i % world.world_size == world.rank]
counts = error_counts([refs[i] for i in mine], [hyps[i] for i in mine])
totals = [0.0, len(mine), counts.word_errors, counts.words, counts.char_errors, counts.chars]
summed = all_reduce_sum(totals, torch.device("cpu"))
print("RESULT", json.dumps(rates(summed.tolist())))
shutdown()
"""


@pytest.mark.slow
def test_wer_over_real_gloo_ranks_equals_single_process(tmp_path: Path) -> None:
    whole = error_counts(REFS, HYPS)
    results = run_ranks(
        ["-c", RANK_SCRIPT, json.dumps(REFS), json.dumps(HYPS)], world_size=2, timeout=180, log_dir=tmp_path
    )
    for r in results:
        assert r.returncode == 0, r.output[-2000:]
        line = next(x for x in r.output.splitlines() if x.startswith("RESULT"))
        got = json.loads(line.split(" ", 1)[1])
        assert got["eval_wer"] == pytest.approx(whole.word_errors / whole.words)
        assert got["eval_samples"] == len(REFS)

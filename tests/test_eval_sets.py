"""Several evaluation sets (--eval_data 'en=dirA,fr=dirB'): the flag's syntax, its one-message refusals, and how
the per-set metrics make eval_* (unweighted means). Pure, no processes; tests/test_eval_sets_ranks.py runs them."""

from __future__ import annotations

import pytest

from xlsr_dist.config import ConfigError, parse_args
from xlsr_dist.config.tree import parse_eval_sets
from xlsr_dist.training.loop import mean_metrics


def test_names_come_first_else_the_basename() -> None:
    assert parse_eval_sets("en=/data/cv-en/test, fr=s3://b/cv-fr/test") == [
        ("en", "/data/cv-en/test"),
        ("fr", "s3://b/cv-fr/test"),
    ]
    assert parse_eval_sets("/data/cv-en/test,/data/mls-fr") == [
        ("test", "/data/cv-en/test"),
        ("mls-fr", "/data/mls-fr"),
    ]
    # One set, as before: its location whole (an '=' after a path separator is no name).
    assert parse_eval_sets("/data/a=b/test") == [("test", "/data/a=b/test")]
    assert parse_eval_sets("") == []


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("/x/test,/y/test", "set name(s) test given twice; name each set: 'en=dirA,fr=dirB'"),
        ("en=/x,en=/y", "set name(s) en given twice"),
        ("en=", "'en=': no location"),
    ],
)
def test_bad_sets_are_one_message_naming_the_flag(spec: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_args(["--train_data", "demo", "--eval_data", spec])
    assert len(info.value.problems) == 1
    assert info.value.problems[0].startswith("--eval_data: ") and message in info.value.problems[0]


def test_eval_metrics_of_several_sets_are_unweighted_means() -> None:
    en = {"eval_loss": 1.0, "eval_wer": 0.1, "eval_cer": 0.05, "eval_samples": 300.0}
    fr = {"eval_loss": 3.0, "eval_wer": 0.5, "eval_cer": 0.15, "eval_samples": 100.0}
    assert mean_metrics([en]) == en
    assert mean_metrics([en, fr]) == pytest.approx(
        {"eval_loss": 2.0, "eval_wer": 0.3, "eval_cer": 0.1, "eval_samples": 400.0}
    )

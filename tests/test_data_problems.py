"""Issue 25: a data problem that shows only once the shards are read (fewer usable utterances than one global batch,
every utterance skipped, an eval split with nothing usable) reaches the user as a configuration problem does: one
message naming the flag, the counts and what would work, exit status 2, no traceback, on every launcher; and a
configuration problem and a data location problem found before any process group come in one message."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests._dist import ROOT, base_env, run_launcher, venv_bin
from tests._net import free_port
from tests._runs import DATA_CACHE, tiny_flags
from xlsr_dist.config import DataConfig, plan_batches
from xlsr_dist.data import demo, shards
from xlsr_dist.data.problems import DataProblem
from xlsr_dist.data.stream import EvalStream, TrainStream
from xlsr_dist.text import build_vocab
from xlsr_dist.world import World

# The demo corpus every training test uses (tests/_runs.py: 96 train, 16 eval utterances).
DEMO_TRAIN, DEMO_EVAL = 96, 16


def _split(directory: Path, rows: list[dict]) -> Path:
    shards.write_shard(directory / shards.shard_name(0, 1), rows)
    return directory


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Splits cut from the demo corpus: 3 training utterances, 2 eval ones, and an eval split with no transcript."""
    train_dir, eval_dir = demo.ensure_demo_corpus(DATA_CACHE, n_train=DEMO_TRAIN, n_eval=DEMO_EVAL)
    train_rows = pq.read_table(sorted(train_dir.glob("*.parquet"))[0]).to_pylist()[:3]
    eval_rows = pq.read_table(sorted(eval_dir.glob("*.parquet"))[0]).to_pylist()[:2]
    root = tmp_path_factory.mktemp("small")
    return {
        "train": _split(root / "train", train_rows),
        "dev": _split(root / "dev", eval_rows),
        "untranscribed": _split(root / "untranscribed", [{**r, "text": " ?! "} for r in eval_rows]),
    }


def _frames(samples: int) -> int:
    return samples // 320


def _vocab(location: Path) -> dict[str, int]:
    return build_vocab(r["text"] for r in pq.read_table(next(location.glob("*.parquet"))).to_pylist())


def test_three_utterances_name_the_counts_and_the_settings_that_would_work(corpus: dict[str, Path]) -> None:
    data = DataConfig(dataloader_num_workers=0)
    with pytest.raises(DataProblem) as err:
        TrainStream(str(corpus["train"]), World(), plan_batches(8, 1), 42, _vocab(corpus["train"]), data, _frames)
    assert err.value.flag == "--train_data"
    assert str(err.value) == (
        f"--train_data {corpus['train']}: 3 usable utterance(s) (skipped none), fewer than one global batch of 8. "
        "What would work: more training data: at least 8 usable utterances (the reference recipe's global batch); "
        "or leaving the reference recipe, --global_batch_size 3 (at most the 3 usable utterance(s), a multiple of "
        "the 1 rank(s))"
    )


def test_every_utterance_skipped_names_the_filter_that_skipped_them(corpus: dict[str, Path]) -> None:
    data = DataConfig(dataloader_num_workers=0, max_duration_in_seconds=0.01)
    with pytest.raises(DataProblem) as err:
        TrainStream(str(corpus["train"]), World(), plan_batches(8, 1), 42, _vocab(corpus["train"]), data, _frames)
    message = str(err.value)
    assert message.startswith(f"--train_data {corpus['train']}: 0 usable utterance(s) (skipped 3 (3 longer than ")
    assert "What would work: a larger --max_duration_in_seconds (3 utterance(s) are longer); or more training" in (
        message
    )
    assert "--global_batch_size" not in message  # no batch size trains on nothing


def test_an_eval_split_with_nothing_usable_is_named(corpus: dict[str, Path]) -> None:
    data = DataConfig(dataloader_num_workers=0)
    with pytest.raises(DataProblem) as err:
        EvalStream(str(corpus["untranscribed"]), World(), 8, _vocab(corpus["train"]), data, _frames)
    assert err.value.flag == "--eval_data"
    assert str(err.value) == (
        f"--eval_data {corpus['untranscribed']}: no usable utterance (skipped 2 (2 empty transcript)). "
        "What would work: an eval split with usable utterances"
    )


def _assert_one_message(output: str, expected: str, launcher_traceback: bool = False) -> None:
    """Exactly one user message, holding ``expected``, and no traceback (``launcher_traceback``: torchrun reports a
    failed child with a traceback of its own, through none of xlsr_dist's code)."""
    if launcher_traceback:
        frames = [line for line in output.splitlines() if line.lstrip().startswith('File "')]
        assert not [f for f in frames if "xlsr_dist" in f], output[-4000:]
    else:
        assert "Traceback" not in output, output[-4000:]
    messages = [line for line in output.splitlines() if line.startswith("xlsr_dist: ")]
    assert len(messages) == 1 and expected in messages[0], output[-4000:]
    assert output.count(expected) == 1, output[-4000:]


@pytest.mark.slow
@pytest.mark.parametrize("ranks", [1, 2])
def test_three_utterances_under_the_deepspeed_launcher_are_one_message_and_exit_2(
    corpus: dict[str, Path], tmp_path: Path, ranks: int
) -> None:
    flags = tiny_flags(tmp_path / "out", "", report_to="none", train_data=corpus["train"], eval_data=corpus["dev"])
    launcher = [venv_bin("deepspeed"), "--num_gpus", str(ranks), "--master_port", str(free_port())]
    proc = run_launcher([*launcher, "--module", "xlsr_dist.train", *flags], timeout=300)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 2, output[-4000:]
    _assert_one_message(output, f"--train_data {corpus['train']}: 3 usable utterance(s)")
    assert f"--global_batch_size {3 if ranks == 1 else 2} (at most the 3 usable utterance(s)" in output


@pytest.mark.slow
def test_an_unusable_eval_split_under_torchrun_is_said_once(corpus: dict[str, Path], tmp_path: Path) -> None:
    flags = tiny_flags(tmp_path / "out", "", report_to="none", eval_data=corpus["untranscribed"])
    launcher = [venv_bin("torchrun"), "--nproc_per_node", "2", "--master_port", str(free_port())]
    proc = run_launcher([*launcher, "-m", "xlsr_dist.train", *flags], timeout=300)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0, output[-4000:]
    _assert_one_message(output, f"--eval_data {corpus['untranscribed']}: no usable utterance", launcher_traceback=True)


@pytest.mark.slow
def test_an_empty_train_directory_without_eval_data_is_named_with_it(tmp_path: Path) -> None:
    empty = tmp_path / "train"
    empty.mkdir()
    flags = tiny_flags(tmp_path / "out", "", report_to="none", train_data=empty)
    proc = subprocess.run(
        [sys.executable, "-m", "xlsr_dist.train", *flags],
        cwd=ROOT,
        env=base_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    _assert_one_message(proc.stderr, "2 problem(s) in the configuration")
    assert "  - --eval_data: required when --train_data is not 'demo'\n" in proc.stderr
    assert f"  - --train_data {empty}: no shards (shard-NNNNN-of-NNNNN.parquet)" in proc.stderr

"""`xlsr_dist.train` end to end in both fp16 modes on this CPU, 2 real ranks (gloo): zero2_fp16 (DeepSpeed's fp16
wrap) and zero2_amp (the card's Native AMP). An overflow injected on one rank (tests/_fp16_train.py) is skipped on
every rank with the loss scale lowered and a warning naming the step; the logged loss leaves skipped steps out; a
``skipped_steps`` metric reaches MLflow; --max_nonfinite_steps overflows in a row stop the run naming the utterance
ids; and the model users keep (final/, export, transcribe) is fp32.

The tiny model also overflows by itself in its first steps at the initial scale of 2^16 (both modes back off from
it, as on a GPU); the assertions hold whatever those natural skips are."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
from safetensors import safe_open

from tests._dist import ROOT, run_ranks
from tests._runs import mlflow_history, mlflow_runs, tiny_flags
from xlsr_dist.export import export
from xlsr_dist.transcribe import transcribe

pytestmark = pytest.mark.slow

LAUNCHER = str(ROOT / "tests/_fp16_train.py")
STEPS = 10
INJECTED = (8, 9)  # two in a row: zero2_fp16's hysteresis 2 lowers the scale by the second at the latest


def _train(tmp_path: Path, config: str, overflow_steps: str, **flags: Any) -> tuple[Path, str, list[Any]]:
    out, uri = tmp_path / "out", f"sqlite:///{tmp_path}/mlflow.db"
    args = [LAUNCHER, "--overflow_steps", overflow_steps, "--overflow_rank", "1", "--record", str(tmp_path), "--"]
    args += tiny_flags(out, uri, deepspeed=config, max_steps=STEPS, eval_steps=STEPS, save_steps=STEPS, **flags)
    results = run_ranks(args, world_size=2, timeout=420, log_dir=tmp_path / "logs")
    return out, uri, results


def _seen(tmp_path: Path, rank: int) -> dict[int, dict[str, Any]]:
    return {s["step"]: s for s in json.loads((tmp_path / f"rank{rank}_steps.json").read_text())}


@pytest.mark.parametrize(("config", "weight_dtype"), [("zero2_fp16", "torch.float16"), ("zero2_amp", "torch.float32")])
def test_an_overflow_is_skipped_everywhere_logged_and_left_out_of_the_loss(
    config: str, weight_dtype: str, tmp_path: Path
) -> None:
    out, uri, results = _train(
        tmp_path, f"ds_configs/{config}.json", ",".join(map(str, INJECTED)), max_nonfinite_steps=5
    )
    for r in results:
        assert r.returncode == 0, r.output[-4000:]
    first, last = INJECTED[0], INJECTED[-1]
    seen = [_seen(tmp_path, rank) for rank in (0, 1)]
    for rank_seen in seen:  # rank 0's loss was finite: it skips because rank 1 overflowed
        assert {s["weight_dtype"] for s in rank_seen.values()} == {weight_dtype}
        assert rank_seen[last]["skipped_steps"] - rank_seen[first - 1]["skipped_steps"] == len(INJECTED)
        assert rank_seen[last]["loss_scale"] < rank_seen[first - 1]["loss_scale"]
    assert seen[0] == seen[1]

    (run,) = mlflow_runs(uri)
    run_id = run.info.run_id
    skipped = mlflow_history(uri, run_id, "skipped_steps")
    scales = mlflow_history(uri, run_id, "loss_scale")
    assert skipped == {step: float(s["skipped_steps"]) for step, s in seen[0].items()}
    assert scales == {step: s["loss_scale"] for step, s in seen[0].items()}
    skipped_at = {step for step in skipped if skipped[step] > skipped.get(step - 1, 0.0)}
    assert set(INJECTED) <= skipped_at
    print(f"{config}: injected {INJECTED}, skipped at {sorted(skipped_at)}, loss scale by step {scales}")
    losses = mlflow_history(uri, run_id, "loss")
    assert set(losses) == set(range(1, STEPS + 1)) - skipped_at  # logging_steps 1: a skipped step has no loss
    assert all(math.isfinite(v) for v in losses.values())

    log0 = results[0].output
    for step in INJECTED:
        before = scales.get(step - 1, 2.0**16)
        line = f"WARNING step {step} skipped: non-finite gradients under the {run.data.params['precision']} loss scale"
        assert line in log0
        assert re.search(rf"step {step} skipped: .*; loss scale {before:g} -> {scales[step]:g}\n", log0)
    assert "WARNING step" not in results[1].output  # said once, by rank 0

    # The model users keep is fp32, and it transcribes, from the run and exported.
    with safe_open(str(out / "final" / "model.safetensors"), "pt") as weights:
        assert {str(weights.get_tensor(k).dtype) for k in weights.keys()} == {"torch.float32"}
    exported = export(out, tmp_path / "export")
    with safe_open(str(exported / "model.safetensors"), "pt") as weights:
        assert {str(weights.get_tensor(k).dtype) for k in weights.keys()} == {"torch.float32"}
    wav = tmp_path / "tone.wav"
    sf.write(wav, (0.1 * np.sin(np.arange(16000) / 5.0)).astype(np.float32), 16000)
    for model in (out, exported):
        ((name, _text),) = list(transcribe(model, [wav], device="cpu"))
        assert name == str(wav)


def test_max_nonfinite_steps_overflows_in_a_row_stop_the_run_naming_the_utterances(tmp_path: Path) -> None:
    out, _uri, results = _train(tmp_path, "ds_configs/zero2_amp.json", "2-", max_nonfinite_steps=3)
    assert all(r.returncode not in (0, None) for r in results), [r.returncode for r in results]
    named = []
    for r in results:
        found = re.search(
            r"NonFiniteLoss: 3 consecutive fp16 overflow steps up to step (\d+) \(--max_nonfinite_steps 3\); "
            r"utterance ids of those steps on this rank: (.*)",
            r.output,
        )
        assert found, r.output[-3000:]
        assert int(found.group(1)) <= 4  # overflows from step 2 on (the first may overflow by itself too)
        ids = found.group(2).split(", ")
        assert len(ids) == 3 * 4 and all(re.fullmatch(r"demo\w*-train-\d{6}", i) for i in ids), ids
        named.append(set(ids))
    assert not named[0] & named[1]  # each rank names its own share of those steps' batches
    assert not (out / "final").exists()

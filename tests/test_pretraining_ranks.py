"""`python -m xlsr_dist.pretrain` for real: 1 rank (plain python), 2 ranks (DeepSpeed's launcher) and 4 ranks
(torchrun) log the same per-step losses on the demo corpus's audio (fp32 ZeRO-2, rel 1e-5, global batches of
total audio seconds); a 2-rank run resumed on 4 continues them; MLflow gets the metrics; the output's final/
fine-tunes with `xlsr_dist.train`; bad input ends with one message and status 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from transformers import Wav2Vec2ForCTC

from tests._dist import base_env, run_launcher, run_module, run_ranks, venv_bin
from tests._net import free_port
from xlsr_dist.model import tiny_config

COMPARED = ("loss", "contrastive_loss", "diversity_loss", "codevector_perplexity", "contrastive_accuracy")


def flags(out: Path, *extra: str) -> list[str]:
    return [
        "--config",
        "launch/pretrain_demo.yaml",
        "--max_steps",
        "3",
        "--logging_steps",
        "1",
        "--warmup_steps",
        "1",
        "--learning_rate",
        "0.002",
        "--disable_tqdm",
        "true",
        # Global batches of 6 s of audio (~8 demo utterances) in 4 micro-batches: fairseq's max_tokens way.
        "--max_batch_seconds",
        "6",
        "--output_dir",
        str(out),
        *extra,
    ]


def logged(out: Path) -> list[dict[str, float]]:
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return [x for x in lines if "step" in x]


@pytest.mark.slow
def test_one_two_four_ranks_log_the_same_losses_and_final_fine_tunes(tmp_path: Path) -> None:
    one = run_ranks(["-m", "xlsr_dist.pretrain", *flags(tmp_path / "w1")], world_size=1, timeout=300)
    assert one[0].returncode == 0, one[0].output[-3000:]
    ds = [venv_bin("deepspeed"), "--num_gpus", "2", "--master_port", str(free_port())]
    db = f"sqlite:///{tmp_path / 'mlflow.db'}"
    keep_all = ("--save_steps", "2", "--save_total_limit", "0", "--report_to", "mlflow", "--tracking_uri", db)
    two = run_launcher([*ds, "--module", "xlsr_dist.pretrain", *flags(tmp_path / "w2", *keep_all)], timeout=300)
    assert two.returncode == 0, (two.stdout + two.stderr)[-3000:]
    torchrun = [venv_bin("torchrun"), "--nproc_per_node", "4", "--master_port", str(free_port())]
    four = run_launcher([*torchrun, "-m", "xlsr_dist.pretrain", *flags(tmp_path / "w4")], timeout=400)
    assert four.returncode == 0, (four.stdout + four.stderr)[-3000:]
    # Resume 2 -> 4: the 2-rank run's step-2 checkpoint continued on 4 ranks (DeepSpeed's universal form).
    (ckpt,) = (tmp_path / "w2" / "checkpoints").glob("*0002")
    resume = flags(tmp_path / "w2to4", "--resume_from_checkpoint", str(ckpt), "--report_to", "mlflow")
    resume += ["--tracking_uri", db]
    four_resumed = run_launcher([*torchrun[:-1], str(free_port()), "-m", "xlsr_dist.pretrain", *resume], timeout=400)
    assert four_resumed.returncode == 0, (four_resumed.stdout + four_resumed.stderr)[-3000:]
    runs = {n: logged(tmp_path / f"w{n}") for n in (1, 2, 4)}
    continued = logged(tmp_path / "w2to4")
    assert [x["step"] for x in continued] == [3]
    for key in COMPARED:
        assert continued[0][key] == pytest.approx(runs[1][2][key], rel=1e-5), key
    # MLflow: the 2-rank run's metrics, and the resumed run logging step 3 into the same MLflow run.
    client = MlflowClient(db)
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    for key in (*COMPARED, "gumbel_temperature", "learning_rate", "throughput", "batch_seconds"):
        steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
        assert sorted(steps) == [1, 2, 3, 3], key
    assert [x["step"] for x in runs[1]] == [1, 2, 3]
    for n in (2, 4):
        assert [x["step"] for x in runs[n]] == [1, 2, 3]
        for a, b in zip(runs[1], runs[n]):
            for key in COMPARED:
                assert b[key] == pytest.approx(a[key], rel=1e-5), (n, a["step"], key)
    # The steps differ from each other: the model learns and the draws change with the step.
    assert len({round(x["loss"], 8) for x in runs[1]}) == 3
    assert runs[1][0]["gumbel_temperature"] == 2.0
    assert all(4 <= x["batch_seconds"] <= 6 for x in runs[1])

    final = tmp_path / "w2" / "final"
    Wav2Vec2ForCTC.from_pretrained(final)  # the quantizer dropped: a plain CTC load
    ft = tmp_path / "ft"
    proc = run_module(
        [
            "xlsr_dist.train",
            "--config",
            "launch/demo.yaml",
            "--architecture",
            "",
            "--ctc_blank_bias",
            "0",
            "--model_name_or_path",
            str(final),
            "--max_steps",
            "2",
            "--eval_steps",
            "2",
            "--save_steps",
            "2",
            "--demo_eval_utterances",
            "200",
            "--report_to",
            "none",
            "--disable_tqdm",
            "true",
            "--output_dir",
            str(ft),
        ],
        timeout=300,
        env=base_env(),
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert (ft / "final" / "config.json").is_file()


@pytest.mark.slow
def test_bad_input_one_message_exit_2(tmp_path: Path) -> None:
    empty = run_module(
        [
            "xlsr_dist.pretrain",
            *flags(tmp_path / "a", "--min_duration_in_seconds", "0.05", "--max_duration_in_seconds", "0.1"),
        ],
        300,
    )
    assert empty.returncode == 2, empty.stderr[-2000:]
    assert empty.stderr.count("no usable audio to pretrain on") == 1
    assert "--max_duration_in_seconds 0.1" in empty.stderr and "Traceback" not in empty.stderr

    Wav2Vec2ForCTC(tiny_config()).save_pretrained(tmp_path / "ctc")
    args = flags(tmp_path / "b", "--architecture", "", "--model_name_or_path", str(tmp_path / "ctc"))
    no_quantizer = run_module(["xlsr_dist.pretrain", *args], 300)
    assert no_quantizer.returncode == 2, no_quantizer.stderr[-2000:]
    assert no_quantizer.stderr.count("has no quantizer") == 1
    assert "Traceback" not in no_quantizer.stderr

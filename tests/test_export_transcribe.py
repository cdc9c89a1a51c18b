"""A finished run becomes a Hugging Face model directory that `transformers.pipeline` loads, with a model card in
the seed card's layout filled from the run, logged to the run's MLflow run; transcribe turns audio files of any
rate and channel count into text with it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from xlsr_dist import text
from xlsr_dist.audio import load_audio
from xlsr_dist.config import Config, ModelConfig
from xlsr_dist.model import build_model, build_processor
from xlsr_dist.tracking import LocalTracker, MlflowTracker, Tracker, open_client
from xlsr_dist.transcribe import transcribe

REPO = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
# The seed model card's headings, in order (XLS-R_53_english.model-card.md).
SEED_HEADINGS = [
    "# ",
    "## Model description",
    "## Intended uses & limitations",
    "## Training and evaluation data",
    "## Training procedure",
    "### Training hyperparameters",
    "### Training results",
    "### Framework versions",
]
EVAL = {100: (2.5, 0.95), 200: (1.75, 0.8), 300: (1.25, 0.7)}  # step: (eval_loss, eval_wer)


def _training_output(root: Path, tracker: Tracker | None = None) -> Path:
    """What train.py leaves on rank 0: final/ (save_pretrained model + processor), metrics.jsonl, train_config.json.

    The CTC head's bias makes every frame say 'a', so any audio must come out as exactly "a" if model, vocabulary
    and decoding survive export and loading."""
    out = root / "run"
    vocab = text.build_vocab(["a quick brown fox", "jumps over the lazy dog"])
    text.save_vocab(vocab, root / "vocab.json")
    torch.manual_seed(0)
    model = build_model(ModelConfig(architecture="tiny"), len(vocab), vocab[text.PAD])
    with torch.no_grad():
        model.lm_head.bias.zero_()
        model.lm_head.bias[vocab["a"]] = 50.0
    model.save_pretrained(out / "final")
    build_processor(root / "vocab.json").save_pretrained(out / "final")
    # Metrics go through a tracker as in training (it writes metrics.jsonl; an MLflow one also run_info.json).
    tracker = tracker or LocalTracker(out)
    tracker.start({"learning_rate": 1e-4}, {})
    for step in range(25, 301, 25):
        tracker.log_metrics({"loss": 5.0 - step / 100, "epoch": step / 100, "learning_rate": 1e-4}, step)
        if step in EVAL:
            tracker.log_metrics({"eval_loss": EVAL[step][0], "eval_wer": EVAL[step][1], "eval_cer": 0.5}, step)
    tracker.close()
    cfg = {
        **Config().flat(),
        "architecture": "tiny",
        "max_steps": 300,
        "deepspeed.optimizer.type": "AdamW",
        "deepspeed.zero_optimization.stage": 2,
        "world_size": 2,
        "micro_batch": 4,
        "grad_accum": 1,
        "precision": "bf16",
        "steps_per_epoch": 100,
        "total_steps": 300,
    }
    (out / "train_config.json").write_text(json.dumps(cfg))
    return out


def _audio_files(root: Path) -> list[Path]:
    t44 = np.arange(int(44100 * 1.2)) / 44100
    stereo = np.stack([0.3 * np.sin(2 * np.pi * 440 * t44), 0.2 * np.sin(2 * np.pi * 220 * t44)], axis=1)
    sf.write(root / "stereo44k.flac", stereo.astype(np.float32), 44100)
    t8 = np.arange(8000) / 8000
    sf.write(root / "mono8k.wav", (0.3 * np.sin(2 * np.pi * 300 * t8)).astype(np.float32), 8000)
    return [root / "stereo44k.flac", root / "mono8k.wav"]


@pytest.mark.slow
def test_export_loads_in_pipeline_with_the_runs_card_and_is_logged(mlflow_server, tmp_path: Path) -> None:  # noqa: F811
    tracker = MlflowTracker(mlflow_server.uri, "export", tmp_path / "run", run_name="to-export")
    out = _training_output(tmp_path, tracker)
    run_id = tracker.run_id
    export_dir = tmp_path / "XLS-R_tiny_demo"
    done = subprocess.run(
        [sys.executable, "-m", "xlsr_dist.export", "--output_dir", str(out), "--export_dir", str(export_dir)],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert f"logged to MLflow run {run_id}" in done.stdout

    import transformers

    asr = transformers.pipeline("automatic-speech-recognition", model=str(export_dir))
    stereo = _audio_files(tmp_path)[0]
    assert asr(load_audio(stereo)) == {"text": "a"}

    card = (export_dir / "README.md").read_text()
    lines = card.splitlines()
    assert lines[0] == "---" and "- name: XLS-R_tiny_demo" in lines and "# XLS-R_tiny_demo" in lines
    headings = [line for line in lines if line.startswith("#")]
    assert [h if not h.startswith("# ") else "# " for h in headings] == SEED_HEADINGS
    assert "- Loss: 1.25" in lines and "- Wer: 0.7" in lines
    for item in (
        "- learning_rate: 0.0001",
        "- train_batch_size: 4",
        "- eval_batch_size: 8",
        "- seed: 42",
        "- num_devices: 2",
        "- total_train_batch_size: 8",
        "- lr_scheduler_type: linear",
        "- lr_scheduler_warmup_steps: 1000",
        "- training_steps: 300",
        "- optimizer: AdamW with betas=(0.9,0.999) and epsilon=1e-08",
    ):
        assert item in lines, item
    table = [[c.strip() for c in line.strip("|").split("|")] for line in lines if line.startswith("| ")]
    assert table[0] == ["Training Loss", "Epoch", "Step", "Validation Loss", "Wer"]
    assert table[1:] == [
        ["4.0", "1.0", "100", "2.5", "0.95"],
        ["3.0", "2.0", "200", "1.75", "0.8"],
        ["2.0", "3.0", "300", "1.25", "0.7"],
    ]
    assert f"- Transformers {transformers.__version__}" in lines and f"- Pytorch {torch.__version__}" in lines

    logged = {f.path for f in open_client(mlflow_server.uri).list_artifacts(run_id, "exported_model")}
    assert {"exported_model/README.md", "exported_model/model.safetensors", "exported_model/config.json"} <= logged


@pytest.mark.slow
def test_transcribe_any_rate_and_channels_from_export_or_run_dir(tmp_path: Path) -> None:
    out = _training_output(tmp_path)
    files = _audio_files(tmp_path)
    # From the run's output dir (final/) in-process ...
    assert list(transcribe(out, files)) == [(str(f), "a") for f in files]
    # ... and from an exported directory through the command line, one TAB-separated line per file.
    export_dir = tmp_path / "exported"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "xlsr_dist.export",
            "--output_dir",
            str(out),
            "--export_dir",
            str(export_dir),
            "--no_mlflow",
        ],
        check=True,
        capture_output=True,
        env=ENV,
        timeout=300,
    )
    done = subprocess.run(
        [sys.executable, "-m", "xlsr_dist.transcribe", "--model", str(export_dir), *map(str, files)],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [f"{f}\ta" for f in files]


def test_transcribe_names_an_unreadable_file_and_still_does_the_rest(tmp_path: Path) -> None:
    out = _training_output(tmp_path)
    good = _audio_files(tmp_path)[1]
    bad = tmp_path / "broken.wav"
    bad.write_bytes(b"RIFF\x00\x00\x00\x00WAVEnot audio")
    done = subprocess.run(
        [sys.executable, "-m", "xlsr_dist.transcribe", "--model", str(out), str(bad), str(good)],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=300,
    )
    assert done.returncode == 1
    assert done.stdout.splitlines() == [f"{good}\ta"]
    assert str(bad) in done.stderr

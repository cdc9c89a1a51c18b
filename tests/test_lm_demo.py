"""LM beam search on the demo at a checkpoint where greedy decoding is still poor (launch/demo.yaml, one rank, step
200): an LM built by `lm build` from the demo's training transcripts lowers the WER on the held-out speakers; its
weights tuned on 2 real ranks are the ones 1 rank chooses; the export carries it, and a fresh offline process
decodes through pyctcdecode from the exported folder alone exactly as load_beam_decoder does."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests._dist import base_env, run_launcher, run_module, venv_bin
from tests._net import free_port
from tests._runs import DATA_CACHE
from xlsr_dist import text
from xlsr_dist.data import demo
from xlsr_dist.decoding import beam, lm_build
from xlsr_dist.evaluate import main as evaluate_main
from xlsr_dist.evaluation import error_report, hypotheses
from xlsr_dist.export import main as export_main
from xlsr_dist.lm import main as lm_main

pytestmark = pytest.mark.slow

GRID = ("--lm_alphas", "0", "0.5", "1", "2", "--lm_betas", "0", "1", "2", "--beam_width", "32")


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("lm_demo")
    run = root / "run"
    flags = ["--config", "launch/demo.yaml", "--max_steps", "200", "--eval_steps", "200", "--save_steps", "200"]
    flags += ["--output_dir", str(run), "--data_cache_dir", str(DATA_CACHE), "--report_to", "none"]
    flags += ["--disable_tqdm", "true", "--dataloader_num_workers", "0"]
    proc = run_module(["xlsr_dist.train", *flags], timeout=900, env=base_env(OMP_NUM_THREADS="2"))
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    train, held_out = demo.ensure_demo_corpus(DATA_CACHE, n_train=2000, n_eval=200)
    dev = root / "dev"
    demo.write_split(dev, seed=7, split="eval", count=40)  # other held-out speakers and sentences
    lm_main(["build", "--output", str(root / "lm"), "--train_data", str(train), "--order", "3"])
    return {"root": root, "run": run, "eval": held_out, "dev": dev, "lm": root / "lm"}


def _evaluate(args: list[str], ranks: int, out: Path) -> subprocess.CompletedProcess[str]:
    cmd = ["--output_dir", str(out), "--num_workers", "0", "--no_mlflow", *args]
    if ranks == 1:
        # One thread, as each of the 2 ranks: the dev set's log-probs are then the same numbers on both.
        return run_module(["xlsr_dist.evaluate", *cmd], timeout=900)
    port = str(free_port())
    torchrun = [venv_bin("torchrun"), "--nproc_per_node", str(ranks), "--master_port", port, "-m", "xlsr_dist.evaluate"]
    return run_launcher([*torchrun, *cmd], timeout=900)


def _tuned(demo_run: dict[str, Path], ranks: int) -> tuple[Path, Path]:
    lm = demo_run["root"] / f"lm_tuned_{ranks}"
    if not lm.exists():
        shutil.copytree(demo_run["lm"], lm)
        out = demo_run["root"] / f"eval_{ranks}"
        args = ["--model", str(demo_run["run"]), "--data", str(demo_run["eval"]), "--names", "held_out"]
        proc = _evaluate([*args, "--lm", str(lm), "--tune_lm", str(demo_run["dev"]), *GRID], ranks, out)
        assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return lm, demo_run["root"] / f"eval_{ranks}"


def test_the_lm_lowers_the_wer_of_held_out_speakers_where_greedy_is_poor(demo_run: dict[str, Path]) -> None:
    _, out = _tuned(demo_run, 1)
    metrics = json.loads((out / "held_out" / error_report.JSON_NAME).read_text())["metrics"]
    print(
        f"step 200, 200 held-out utterances: greedy WER {metrics['wer']:.4f} CER {metrics['cer']:.4f}; "
        f"LM WER {metrics['wer_lm']:.4f} CER {metrics['cer_lm']:.4f}"
    )
    assert metrics["wer"] > 0.15  # greedy still poor at step 200
    assert metrics["wer_lm"] < 0.8 * metrics["wer"]
    scores = hypotheses.read(out / "held_out" / hypotheses.FILE_NAME)
    assert len(scores) == 200 and all(s.hypothesis_lm is not None for s in scores)
    assert sum(s.word_errors_lm or 0 for s in scores) / sum(s.words for s in scores) == pytest.approx(metrics["wer_lm"])


def test_two_ranks_tune_to_the_values_one_rank_chooses(demo_run: dict[str, Path]) -> None:
    one, out_one = _tuned(demo_run, 1)
    two, out_two = _tuned(demo_run, 2)
    t1 = json.loads((one / lm_build.INFO_FILE).read_text())["tuned"]
    t2 = json.loads((two / lm_build.INFO_FILE).read_text())["tuned"]
    assert (t1["world_size"], t2["world_size"]) == (1, 2)
    assert len(t1["grid"]) == 12
    assert [(p["alpha"], p["beta"], p["word_errors"], p["char_errors"]) for p in t1["grid"]] == [
        (p["alpha"], p["beta"], p["word_errors"], p["char_errors"]) for p in t2["grid"]
    ]
    assert (t1["alpha"], t1["beta"]) == (t2["alpha"], t2["beta"])
    # Not a grid where every point ties: the choice means something.
    assert len({p["word_errors"] for p in t1["grid"]}) > 1
    attrs = json.loads((two / "attrs.json").read_text())
    assert (attrs["alpha"], attrs["beta"]) == (t1["alpha"], t1["beta"])
    m1 = json.loads((out_one / "held_out" / error_report.JSON_NAME).read_text())["metrics"]
    m2 = json.loads((out_two / "held_out" / error_report.JSON_NAME).read_text())["metrics"]
    # The test set is split into other batches on 2 ranks (other padding): greedy scores match (as
    # tests/test_evaluate_cli.py shows), beam search may flip a near-tie.
    assert m1["wer"] == m2["wer"]
    assert abs(m1["wer_lm"] - m2["wer_lm"]) <= 0.01


_FRESH = """
import json, sys
import numpy as np, soundfile as sf, io, pyarrow.parquet as pq, torch
from pyctcdecode import BeamSearchDecoderCTC
from transformers import Wav2Vec2ForCTC, Wav2Vec2Processor
folder, shard, out = sys.argv[1:4]
model = Wav2Vec2ForCTC.from_pretrained(folder).eval()
processor = Wav2Vec2Processor.from_pretrained(folder)
decoder = BeamSearchDecoderCTC.load_from_dir(folder)
rows = pq.read_table(shard).to_pylist()[:12]
texts, arrays = [], {}
for row in rows:
    audio, sr = sf.read(io.BytesIO(row["audio"]), dtype="float32")
    inputs = processor(audio, sampling_rate=sr, return_tensors="pt")
    with torch.no_grad():
        log_probs = model(inputs.input_values).logits[0].log_softmax(-1).numpy()
    arrays[row["id"]] = log_probs
    texts.append({"id": row["id"], "text": decoder.decode(log_probs, beam_width=32), "reference": row["text"]})
np.savez(out + ".npz", **arrays)
json.dump(texts, open(out + ".json", "w"))
"""


def test_the_export_decodes_with_its_lm_from_the_folder_alone(demo_run: dict[str, Path]) -> None:
    lm, _ = _tuned(demo_run, 1)
    export = demo_run["root"] / "export"
    export_main(["--output_dir", str(demo_run["run"]), "--export_dir", str(export), "--lm", str(lm), "--no_mlflow"])
    assert sorted(p.name for p in (export / "language_model").iterdir() if not p.name.startswith(".")) == [
        "attrs.json",
        "lm.bin",
        "unigrams.txt",
    ]
    tuned = json.loads((lm / lm_build.INFO_FILE).read_text())["tuned"]
    card = (export / "README.md").read_text()
    assert "## Decoding with the language model" in card
    assert f"| greedy | {tuned['greedy_wer']:.4f} |" in card and f"+ LM | {tuned['wer']:.4f} |" in card
    out = demo_run["root"] / "fresh"
    shard = sorted(demo_run["eval"].glob("*.parquet"))[0]
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_HOME=str(demo_run["root"] / "hf_home"))
    proc = subprocess.run(
        [sys.executable, "-c", _FRESH, str(export), str(shard), str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=demo_run["root"],
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    decoded = json.loads(Path(str(out) + ".json").read_text())
    arrays = np.load(str(out) + ".npz")
    vocab = json.loads((export / "vocab.json").read_text())
    ours = beam.load_beam_decoder(lm, text.inverse(vocab), beam_width=32)
    assert (ours.alpha, ours.beta) == (tuned["alpha"], tuned["beta"])
    assert [d["text"] for d in decoded] == [ours.decode_text(arrays[d["id"]]) for d in decoded]
    assert sum(d["text"] == d["reference"] for d in decoded) >= 6


def test_bad_lm_input_is_one_message_exit_2_and_nothing_written(
    demo_run: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    french = tmp_path / "fr.txt"
    french.write_text("l'été à côté\n", encoding="utf-8")
    lm_main(["build", "--output", str(tmp_path / "fr_lm"), "--text", str(french), "--language", "fr"])
    base = ["--model", str(demo_run["run"]), "--data", str(demo_run["eval"]), "--output_dir", str(tmp_path / "ev")]
    cases = [
        (["--lm", str(tmp_path / "none")], f"--lm {tmp_path / 'none'}: no such directory"),
        (["--lm", str(tmp_path / "fr_lm")], f"--lm {tmp_path / 'fr_lm'}: its words use"),
        (["--tune_lm", str(demo_run["dev"])], "--tune_lm needs --lm DIR"),
        (["--lm", str(demo_run["lm"]), "--tune_lm", str(tmp_path / "nodev")], f"--tune_lm {tmp_path / 'nodev'}"),
    ]
    for extra, message in cases:
        with pytest.raises(SystemExit) as done:
            evaluate_main([*base, *extra, "--no_mlflow"])
        assert done.value.code == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, err
    assert not (tmp_path / "ev").exists()
    with pytest.raises(SystemExit) as done:
        export_main(
            ["--output_dir", str(demo_run["run"]), "--export_dir", str(tmp_path / "x"), "--lm", str(tmp_path / "fr_lm")]
        )
    assert done.value.code == 2
    assert "its words use" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_transcribe_with_the_lm_makes_fewer_word_errors_than_greedy(demo_run: dict[str, Path]) -> None:
    """`transcribe --lm` decodes files through the same beam decoder: on 30 held-out utterances at step 200 its
    word errors are fewer than greedy's; a missing LM directory is one message and exit 2."""
    import jiwer

    from xlsr_dist.data import shards

    lm, _ = _tuned(demo_run, 1)
    shard = sorted(demo_run["eval"].glob("*.parquet"))[0]
    files, references = [], []
    for i, row in enumerate(shards.read_rows(shard, range(30))):
        path = demo_run["root"] / "clips" / f"{i:02d}.flac"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(row["audio"])
        files.append(str(path))
        references.append(row["text"])

    def transcribe(*flags: str) -> list[str]:
        proc = run_module(["xlsr_dist.transcribe", "--model", str(demo_run["run"]), *flags, *files], timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        lines = [line.split("\t", 1) for line in proc.stdout.splitlines()]
        assert [f for f, _ in lines] == files
        return [t for _, t in lines]

    greedy = jiwer.wer(references, transcribe())
    with_lm = jiwer.wer(references, transcribe("--lm", str(lm), "--beam_width", "32"))
    print(f"transcribe, 30 held-out clips at step 200: greedy WER {greedy:.3f}, with the LM {with_lm:.3f}")
    assert with_lm < greedy
    missing = run_module(
        ["xlsr_dist.transcribe", "--model", str(demo_run["run"]), "--lm", str(demo_run["root"] / "nope"), files[0]],
        timeout=300,
    )
    assert missing.returncode == 2
    assert missing.stderr.count("xlsr_dist.transcribe: --lm") == 1 and "Traceback" not in missing.stderr

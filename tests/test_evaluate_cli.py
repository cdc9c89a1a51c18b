"""`python -m xlsr_dist.evaluate`: a trained model scored on test sets the way it is launched for training; N ranks
give the numbers of one, every utterance gets a line, results land on the training run in MLflow, and bad input
is one message and exit status 2."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests._dist import run_launcher, run_module, venv_bin
from tests._runs import DATA_CACHE, mlflow_runs, tiny_flags
from xlsr_dist import text
from xlsr_dist.config import ConfigError, ModelConfig
from xlsr_dist.data import demo, shards
from xlsr_dist.evaluate import main, parse_args
from xlsr_dist.evaluation import error_report, hypotheses
from xlsr_dist.evaluation.counts import error_counts
from xlsr_dist.evaluation.scoring import SetTotals, UtteranceScore, unrepresentable_characters
from xlsr_dist.run_dir import locate_model, run_precision

DEMO_EVAL_UTTERANCES = 16


def _score(uid: str, ref: str, hyp: str, seconds: float = 1.0, loss: float | None = 1.0) -> UtteranceScore:
    c = error_counts([ref], [hyp])
    return UtteranceScore(uid, ref, hyp, seconds, c.word_errors, c.words, c.char_errors, c.chars, loss)


SCORES = [
    _score("a", "the cat sat on the mat", "the bat sat on mat", 1.5),
    _score("b", "hello world", "", 3.0, loss=None),
    _score("c", "yes no", "yes yes no", 7.0),
    _score("d", "one two three", "one two three", 25.0),
]


# ---- fast: the pieces ------------------------------------------------------------------------------------------


def test_totals_summed_over_any_split_give_the_whole_sets_metrics() -> None:
    whole = SetTotals.of(SCORES).metrics(elapsed_s=1.0)
    for cut in (1, 2, 3):
        parts = [SetTotals.of(SCORES[:cut]).vector(), SetTotals.of(SCORES[cut:]).vector()]
        summed = SetTotals.from_vector([a + b for a, b in zip(*parts)])
        assert summed.metrics(elapsed_s=1.0) == pytest.approx(whole)
    import jiwer

    assert whole["wer"] == pytest.approx(jiwer.wer([s.reference for s in SCORES], [s.hypothesis for s in SCORES]))
    # the loss averages only the utterances that allowed one
    assert whole["loss"] == pytest.approx(1.0) and SetTotals.of(SCORES).loss_utterances == 3


def test_characters_the_vocabulary_lacks_are_named_and_counted() -> None:
    vocab = text.build_vocab(["abc"])
    assert unrepresentable_characters(["ab c", "don't", "cab"], vocab) == {"d": 1, "o": 1, "n": 1, "'": 1, "t": 1}
    assert unrepresentable_characters(["a b c"], vocab) == {}


def test_report_edits_add_up_to_the_word_errors_and_buckets_cover_every_utterance() -> None:
    report = error_report.build(SCORES, {"set": "x", "metrics": SetTotals.of(SCORES).metrics(1.0)})
    edits = report["edit_totals"]
    assert edits["substitutions"] + edits["insertions"] + edits["deletions"] == sum(s.word_errors for s in SCORES)
    assert {"reference": "cat", "hypothesis": "bat", "count": 1} in report["substitutions"]
    assert {"word": "yes", "count": 1} in report["insertions"]
    assert {w["word"] for w in report["deletions"]} == {"the", "hello", "world"}
    # most word errors first (a and b: 2 each), then most char errors (b: all 11 of its characters)
    assert [u["id"] for u in report["worst_utterances"]] == ["b", "a", "c", "d"]
    buckets = {b["seconds"]: b["utterances"] for b in report["wer_by_duration"]}
    assert buckets == {"0-2 s": 1, "2-4 s": 1, "6-8 s": 1, "20-30 s": 1}
    md = error_report.markdown(report)
    assert "| cat " in md and "## WER by duration" in md


def test_rank_parts_merge_into_one_line_per_utterance_sorted_by_id(tmp_path: Path) -> None:
    hypotheses.write_part(tmp_path, 1, [SCORES[2], SCORES[0]])
    hypotheses.write_part(tmp_path, 0, [SCORES[3], SCORES[1]])
    merged = hypotheses.merge_parts(tmp_path, world_size=2)
    assert [s.id for s in merged] == ["a", "b", "c", "d"]
    assert hypotheses.read(tmp_path / hypotheses.FILE_NAME) == merged
    assert not (tmp_path / hypotheses.PARTS_DIR).exists()
    hypotheses.write_part(tmp_path, 0, SCORES)
    with pytest.raises(hypotheses.MissingPartError, match=r"rank\(s\) \[1\]"):
        hypotheses.merge_parts(tmp_path, world_size=2)


def test_set_names_come_from_the_shard_directory_and_must_differ() -> None:
    assert parse_args(["--model", "m", "--data", "/d/test/", "s3://b/dev"]).names == ["test", "dev"]
    with pytest.raises(ConfigError) as err:
        parse_args(["--model", "m", "--data", "/a/test", "/b/test", "--batch_size", "0"])
    assert any("--names" in p and "'test'" in p for p in err.value.problems)
    assert any("--batch_size" in p for p in err.value.problems)
    assert parse_args(["--model", "m", "--data", "/a/test", "/b/test", "--names", "a", "b"]).names == ["a", "b"]


def test_model_location_finds_the_training_run_and_step(tmp_path: Path) -> None:
    run = tmp_path / "run"
    ckpt = run / "checkpoints" / "step-0000004"
    ckpt.mkdir(parents=True)
    (ckpt / "COMPLETE.json").write_text(json.dumps({"step": 4}))
    (run / "final").mkdir()
    (run / "final" / "config.json").write_text("{}")
    (run / "train_config.json").write_text(json.dumps({"total_steps": 6}))
    export = tmp_path / "export"
    export.mkdir()
    assert (locate_model(run).run_dir, locate_model(run).step) == (run.resolve(), 6)
    assert (locate_model(run / "final").run_dir, locate_model(run / "final").step) == (run.resolve(), 6)
    assert (locate_model(ckpt).run_dir, locate_model(ckpt).step) == (run.resolve(), 4)
    assert (locate_model(export).run_dir, locate_model(export).home) == (None, export.resolve())


# ---- bad input: one message naming the flag, exit 2, nothing started -----------------------------------------


@pytest.fixture(scope="module")
def untrained_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A save_pretrained model + processor as export writes it (random weights: enough to be loadable)."""
    from xlsr_dist.model import build_model, build_processor

    root = tmp_path_factory.mktemp("untrained")
    vocab = text.build_vocab(["abcdefghijklmnopqrstuvwxyz"])
    text.save_vocab(vocab, root / "vocab.json")
    model = build_model(ModelConfig(architecture="tiny"), len(vocab), vocab[text.PAD])
    model.save_pretrained(root / "model")
    build_processor(root / "vocab.json").save_pretrained(root / "model")
    return root / "model"


def _demo_eval() -> Path:
    return demo.ensure_demo_corpus(DATA_CACHE, n_train=96, n_eval=DEMO_EVAL_UTTERANCES)[1]


def _write_set(directory: Path, rows: list[dict]) -> Path:
    shards.write_shard(directory / shards.shard_name(0, 1), rows)
    return directory


def _bad_inputs(tmp_path: Path, model: Path) -> dict[str, tuple[list[str], str]]:
    rows = pq.read_table(next(_demo_eval().glob("*.parquet"))).to_pylist()[:2]
    empty = _write_set(tmp_path / "empty", [])
    untranscribed = _write_set(tmp_path / "untranscribed", [{**r, "text": " ?! "} for r in rows])
    not_a_model = tmp_path / "not_a_model"
    not_a_model.mkdir()
    (not_a_model / "weights.bin").write_bytes(b"junk")
    return {
        "missing set": (
            ["--model", str(model), "--data", str(tmp_path / "nope")],
            f"--data {tmp_path / 'nope'}: no such file or directory",
        ),
        "empty set": (["--model", str(model), "--data", str(empty)], f"--data {empty}: the set is empty"),
        "untranscribed set": (["--model", str(model), "--data", str(untranscribed)], "none of its 2 utterance"),
        "not a model": (["--model", str(not_a_model), "--data", str(_demo_eval())], f"--model {not_a_model}: not"),
        "missing model": (["--model", str(tmp_path / "m"), "--data", str(_demo_eval())], f"--model {tmp_path / 'm'}"),
    }


@pytest.mark.parametrize("case", ["missing set", "empty set", "untranscribed set", "not a model", "missing model"])
def test_bad_input_is_one_message_naming_the_flag_and_exit_2(
    case: str, tmp_path: Path, untrained_model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv, message = _bad_inputs(tmp_path, untrained_model)[case]
    with pytest.raises(SystemExit) as done:
        main(argv)
    assert done.value.code == 2
    err = capsys.readouterr().err
    assert message in err, err
    assert err.count("xlsr_dist.evaluate:") == 1


# ---- slow: a real training run, evaluated on 1 and 2 real ranks ----------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path | str]:
    """A 4-step tiny training run (plain python, one rank), the demo eval set, and that set with a character the
    model's vocabulary lacks ("don't": the demo words have no apostrophe)."""
    root = tmp_path_factory.mktemp("evalcli")
    out, uri = root / "run", f"sqlite:///{root}/mlflow.db"
    proc = run_module(
        ["xlsr_dist.train", *tiny_flags(out, uri, max_steps=4, eval_steps=4, save_steps=4)],
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    rows = pq.read_table(next(_demo_eval().glob("*.parquet"))).to_pylist()
    rows[0] = {**rows[0], "text": "don't " + rows[0]["text"]}
    oov = _write_set(root / "oov", rows)
    return {"root": root, "run": out, "uri": uri, "eval": _demo_eval(), "oov": oov}


def _evaluate_cmd(model: Path, out: Path, *data: Path, extra: tuple[str, ...] = ()) -> list[str]:
    return ["--model", str(model), "--data", *map(str, data), "--output_dir", str(out), "--num_workers", "0", *extra]


def _report(out: Path, name: str) -> dict:
    return json.loads((out / name / error_report.JSON_NAME).read_text())


@pytest.fixture(scope="module")
def one_rank(trained: dict) -> tuple[Path, subprocess.CompletedProcess[str]]:
    out = trained["root"] / "one_rank"
    cmd = _evaluate_cmd(trained["run"], out, trained["eval"], trained["oov"], extra=("--tracking_uri", trained["uri"]))
    proc = run_module(
        ["xlsr_dist.evaluate", *cmd],
        timeout=300,
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return out, proc


@pytest.mark.slow
def test_one_rank_scores_every_utterance_against_the_transcript_text(one_rank: tuple, trained: dict) -> None:
    out, proc = one_rank
    for name in ("eval", "oov"):
        lines = (out / name / hypotheses.FILE_NAME).read_text().splitlines()
        assert len(lines) == DEMO_EVAL_UTTERANCES
        assert _report(out, name)["metrics"]["utterances"] == DEMO_EVAL_UTTERANCES
        assert (out / name / error_report.MARKDOWN_NAME).is_file()
    first = json.loads((out / "oov" / hypotheses.FILE_NAME).read_text().splitlines()[0])
    assert first["reference"].startswith("don't ") and text.UNK not in first["reference"]
    assert _report(out, "oov")["unrepresentable_characters"]["'"] == 1
    warnings = [line for line in proc.stderr.splitlines() if "not in the model's vocabulary" in line and "oov" in line]
    assert len(warnings) == 1 and '"\'"' in warnings[0], proc.stderr[-3000:]
    # the console table: one row per set
    assert any(line.startswith("| eval ") for line in proc.stdout.splitlines()), proc.stdout


@pytest.mark.slow
def test_results_are_logged_on_the_training_run(one_rank: tuple, trained: dict) -> None:
    from mlflow.tracking import MlflowClient

    out, _ = one_rank
    (run,) = mlflow_runs(trained["uri"])
    client = MlflowClient(trained["uri"])
    history = client.get_metric_history(run.info.run_id, "test/eval/wer")
    assert [(m.step, m.value) for m in history] == [(4, pytest.approx(_report(out, "eval")["metrics"]["wer"]))]
    assert client.get_metric_history(run.info.run_id, "test/oov/cer")
    logged = {Path(a.path).name for a in client.list_artifacts(run.info.run_id, "test/eval")}
    assert logged == {hypotheses.FILE_NAME, error_report.JSON_NAME, error_report.MARKDOWN_NAME}


def _assert_same_results(one: Path, other: Path, names: tuple[str, ...] = ("eval", "oov")) -> None:
    for name in names:
        a, b = _report(one, name)["metrics"], _report(other, name)["metrics"]
        assert (a["wer"], a["cer"], a["utterances"]) == (b["wer"], b["cer"], b["utterances"])
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5)
        ha, hb = (hypotheses.read(d / name / hypotheses.FILE_NAME) for d in (one, other))
        assert [(s.id, s.hypothesis, s.word_errors) for s in ha] == [(s.id, s.hypothesis, s.word_errors) for s in hb]


@pytest.mark.slow
def test_two_deepspeed_ranks_give_the_one_rank_results(one_rank: tuple, trained: dict) -> None:
    out = trained["root"] / "deepspeed"
    proc = run_launcher(
        [
            venv_bin("deepspeed"),
            "--num_gpus",
            "2",
            "--master_port",
            "29631",
            "--module",
            "xlsr_dist.evaluate",
            *_evaluate_cmd(trained["run"], out, trained["eval"], trained["oov"], extra=("--no_mlflow",)),
        ],
        timeout=300,
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert _report(out, "eval")["world_size"] == 2
    _assert_same_results(one_rank[0], out)


@pytest.mark.slow
def test_two_torchrun_ranks_on_an_exported_model_log_a_new_evaluation_run(one_rank: tuple, trained: dict) -> None:
    exported = trained["root"] / "exported"
    shutil.copytree(trained["run"] / "final", exported)
    out = trained["root"] / "torchrun"
    uri = f"sqlite:///{trained['root']}/eval_only.db"
    proc = run_launcher(
        [
            venv_bin("torchrun"),
            "--nproc_per_node",
            "2",
            "--master_port",
            "29632",
            "-m",
            "xlsr_dist.evaluate",
            *_evaluate_cmd(exported, out, trained["eval"], extra=("--tracking_uri", uri)),
        ],
        timeout=300,
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    _assert_same_results(one_rank[0], out, names=("eval",))
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    (run,) = client.search_runs(
        [e.experiment_id for e in client.search_experiments()], "tags.`xlsr_dist.kind` = 'evaluation'"
    )
    (wer,) = client.get_metric_history(run.info.run_id, "test/eval/wer")
    assert wer.value == pytest.approx(_report(out, "eval")["metrics"]["wer"])


@pytest.mark.slow
def test_bad_input_under_the_deepspeed_launcher_is_one_message_and_exit_2(trained: dict, tmp_path: Path) -> None:
    proc = run_launcher(
        [
            venv_bin("deepspeed"),
            "--num_gpus",
            "2",
            "--master_port",
            "29633",
            "--module",
            "xlsr_dist.evaluate",
            "--model",
            str(trained["run"]),
            "--data",
            str(tmp_path / "nope"),
        ],
        timeout=300,
    )
    assert proc.returncode == 2, (proc.stdout + proc.stderr)[-3000:]
    both = proc.stdout + proc.stderr
    assert both.count(f"--data {tmp_path / 'nope'}: no such file or directory") == 1, both[-3000:]
    assert "Traceback" not in both


def test_the_forward_precision_is_the_training_runs(tmp_path: Path) -> None:
    run = tmp_path / "run"
    (run / "final").mkdir(parents=True)
    (run / "final" / "config.json").write_text("{}")
    (run / "train_config.json").write_text(json.dumps({"precision": "amp"}))
    assert run_precision(locate_model(run)) == "amp"
    assert run_precision(locate_model(run / "final")) == "amp"
    exported = tmp_path / "exported"
    exported.mkdir()
    (exported / "config.json").write_text("{}")
    assert run_precision(locate_model(exported)) == "fp32"

"""What `python -m xlsr_dist.evaluate` runs once its flags are parsed (xlsr_dist/evaluate.py): WER, CER and loss of
a trained model on test sets, with every utterance's hypothesis and an error report.

The model comes through model.load_hf_model (an exported model directory, a training run's --output_dir, final/,
best/ or one checkpoint directory) and run_dir.locate_model says which run and step it belongs to. Each rank scores
its share of every set (partition.eval_rank_batches: every utterance once, the same batch count on every rank) with
the fp32 model on its device; no DeepSpeed engine, only a process group for the sums. Totals are counts summed across
ranks, so N ranks give the numbers of one.

Every utterance with a transcript is scored, whatever its duration (training's duration limits do not apply); the
loss is averaged over those whose labels fit the audio's frames. Per set, in --output_dir/<set>/ (default
<run dir, else model dir>/eval/<set>/): hypotheses.jsonl, report.json and report.md; the metrics go to MLflow
(evaluation/tracking.py) and to a table on the console. --output_dir must be on a filesystem every rank sees.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from xlsr_dist import text, tracking
from xlsr_dist.config import ConfigError
from xlsr_dist.console import setup_console
from xlsr_dist.data import language, partition, shards, stream
from xlsr_dist.data.catalog import Catalog, filter_metadata
from xlsr_dist.data.locations import shard_paths
from xlsr_dist.evaluation import error_report, hypotheses, lm_eval
from xlsr_dist.evaluation import tracking as eval_tracking
from xlsr_dist.evaluation.scoring import SetTotals, score_utterances, unrepresentable_characters
from xlsr_dist.markdown import markdown_table
from xlsr_dist.model import load_hf_model
from xlsr_dist.run_dir import ModelSource, locate_model, run_precision
from xlsr_dist.state_files import CheckpointError
from xlsr_dist.world import World, all_reduce_max, all_reduce_sum, init, shutdown

log = logging.getLogger("xlsr_dist.evaluate")

PROG = "xlsr_dist.evaluate"
EVAL_DIR = "eval"


@dataclass(frozen=True)
class EvalArgs:
    """The evaluate command's flags, checked (xlsr_dist/evaluate.py parses them)."""

    model: str
    data: list[str]
    names: list[str]
    output_dir: str
    batch_size: int
    num_workers: int
    tracking_uri: str
    experiment_name: str
    no_mlflow: bool
    dist_timeout_s: int
    lm: lm_eval.LMArgs = lm_eval.LMArgs()


# --------------------------------------------------------------------------------------------------------------
# The model and where it came from


def load_model(spec: str) -> tuple[Any, dict[str, int]]:
    """(fp32 Wav2Vec2ForCTC, the vocabulary its CTC head emits); raises ConfigError naming --model."""
    if not Path(spec).exists():
        raise ConfigError([f"--model {spec}: no such file or directory"])
    expected = (
        "expected an exported model directory, a training run's --output_dir, a model directory in it (final/, "
        "best/) or one complete checkpoint directory"
    )
    try:
        model, processor = load_hf_model(spec)
    except CheckpointError:
        raise ConfigError([f"--model {spec}: not a model ({expected})"]) from None
    except Exception as exc:  # noqa: BLE001 - whatever transformers/torch raise, the directory is not a model
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise ConfigError([f"--model {spec}: not a model ({expected}): {reason}"]) from None
    size = int(model.config.vocab_size)
    vocab = {t: i for t, i in processor.tokenizer.get_vocab().items() if i < size}
    if sorted(vocab.values()) != list(range(size)) or text.UNK not in vocab or text.PAD not in vocab:
        raise ConfigError(
            [
                f"--model {spec}: its tokenizer does not name each of the {size} CTC outputs with {text.UNK} and "
                f"{text.PAD} among them; not a model trained by xlsr_dist"
            ]
        )
    return model, vocab


# --------------------------------------------------------------------------------------------------------------
# Test sets


@dataclass
class EvalSet:
    name: str
    location: str
    catalog: Catalog
    references: dict[str, str]
    """utterance id -> normalised transcript, what hypotheses are compared with"""
    unrepresentable: dict[str, int]
    output_dir: Path


def _any_length(num_samples: int) -> int:
    """The frame count filter_metadata checks labels against, made unlimited: evaluation scores every utterance
    with a transcript (one too long for its audio just has its errors counted; only its loss is left out)."""
    return sys.maxsize


def read_set(location: str) -> tuple[list[str], pa.Table]:
    """(shard paths, metadata) of a set; raises ConfigError naming --data when there is no such set or it is empty."""
    paths = shard_paths("--data", location)
    try:
        meta = shards.read_metadata(paths)
    except (shards.ShardError, OSError, ValueError) as exc:
        raise ConfigError([f"--data {location}: {exc}"]) from None
    if meta.num_rows == 0:
        raise ConfigError([f"--data {location}: the set is empty (its {len(paths)} shard(s) hold no utterance)"])
    return paths, meta


def build_set(
    name: str, location: str, paths: list[str], meta: pa.Table, vocab: dict[str, int], output_root: Path
) -> EvalSet:
    try:
        # Scored the way the set was prepared (its manifest's language and settings; shards without one: English).
        normalization = language.split_normalization(location) or text.ENGLISH
    except ValueError as exc:
        raise ConfigError([f"--data {location}: {exc}"]) from None
    catalog = filter_metadata(
        meta, paths, vocab, 0.0, math.inf, _any_length, normalization, shards.footer_digests(paths)
    )
    if len(catalog) == 0:
        why = ", ".join(f"{n} {reason}" for reason, n in catalog.skipped.items())
        raise ConfigError([f"--data {location}: none of its {meta.num_rows} utterance(s) can be scored ({why})"])
    raw = {
        (s, r): t
        for s, r, t in zip(
            meta.column("shard").to_pylist(), meta.column("row").to_pylist(), meta.column("text").to_pylist()
        )
    }
    references = {
        uid: text.normalize(raw[(int(s), int(r))] or "", normalization)
        for uid, s, r in zip(catalog.ids, catalog.shard.tolist(), catalog.row.tolist())
    }
    return EvalSet(
        name=name,
        location=location,
        catalog=catalog,
        references=references,
        unrepresentable=unrepresentable_characters(references.values(), vocab),
        output_dir=output_root / name,
    )


@dataclass(frozen=True)
class Inputs:
    """What the flags point at, loaded and checked: the model, where it came from, its vocabulary, the test sets."""

    source: ModelSource
    model: Any
    vocab: dict[str, int]
    sets: list[EvalSet]
    dev: EvalSet | None  # the --tune_lm set


def check_inputs(args: EvalArgs) -> Inputs:
    """Everything that can be wrong with the flags' targets, found before any process group exists; raises one
    ConfigError listing every problem. The last item: the --tune_lm dev set."""
    problems: list[str] = []
    model, vocab = None, None
    try:
        model, vocab = load_model(args.model)
    except ConfigError as exc:
        problems += exc.problems
    source = locate_model(args.model)
    output_root = Path(args.output_dir) if args.output_dir else source.home / EVAL_DIR
    sets = []
    for name, location in zip(args.names, args.data):
        try:
            paths, meta = read_set(location)
            if vocab is not None:
                sets.append(build_set(name, location, paths, meta, vocab, output_root))
        except ConfigError as exc:
            problems += exc.problems
    dev = None
    if vocab is not None:
        problems += lm_eval.check(args.lm, vocab)
        try:
            if args.lm.tune_lm:
                paths, meta = read_set(args.lm.tune_lm)
                dev = build_set("tune_lm", args.lm.tune_lm, paths, meta, vocab, output_root)
        except ConfigError as exc:
            problems += [p.replace("--data", "--tune_lm", 1) for p in exc.problems]
    if problems:
        raise ConfigError(problems)
    return Inputs(source=source, model=model, vocab=vocab or {}, sets=sets, dev=dev)


# --------------------------------------------------------------------------------------------------------------
# Scoring (every rank) and results (rank 0)


def score_set(
    model: Any,
    test_set: EvalSet,
    vocab: dict[str, int],
    world: World,
    device: torch.device,
    args: EvalArgs,
    precision_mode: str = "fp32",
    lm_decode: Callable[[np.ndarray], str] | None = None,
) -> tuple[SetTotals, float]:
    """Collective. This rank's share scored and written as its part file; returns (totals summed over ranks,
    wall seconds of the slowest rank). ``precision_mode``: the training run's (amp: forward under fp16 autocast)."""
    catalog = test_set.catalog
    batches = partition.eval_rank_batches(catalog.durations, world.world_size, world.rank, args.batch_size)
    loader = stream.make_loader(stream.UtteranceDataset(catalog), [b.tolist() for b in batches], args.num_workers)
    started = time.perf_counter()
    scores = list(
        score_utterances(
            model,
            loader,
            test_set.references,
            text.inverse(vocab),
            int(model.config.pad_token_id),
            bool(model.config.ctc_zero_infinity),
            device,
            precision_mode,
            lm_decode,
        )
    )
    elapsed = time.perf_counter() - started
    hypotheses.write_part(test_set.output_dir, world.rank, scores)
    # Entered by each rank only after its part is written: rank 0 may read every part once these return.
    summed = all_reduce_sum(SetTotals.of(scores).vector(), device).tolist()
    slowest = float(all_reduce_max([elapsed], device)[0])
    return SetTotals.from_vector(summed), slowest


def write_outputs(
    test_set: EvalSet, totals: SetTotals, metrics: dict[str, float], source: ModelSource, world: World
) -> list[Path]:
    """Rank 0: hypotheses.jsonl from the ranks' parts, report.json, report.md; returns their paths."""
    scores = hypotheses.merge_parts(test_set.output_dir, world.world_size)
    if len(scores) != totals.utterances:
        raise hypotheses.MissingPartError(
            f"{test_set.output_dir}: the ranks' parts hold {len(scores)} utterances, the ranks scored "
            f"{totals.utterances}; is another evaluation writing to the same --output_dir?"
        )
    summary = {
        "set": test_set.name,
        "data": tracking.redact_text(test_set.location),
        "model": tracking.redact_text(str(source.path)),
        "step": source.step,
        "world_size": world.world_size,
        "metrics": metrics,
        "loss_utterances": totals.loss_utterances,
        "skipped": test_set.catalog.skipped,
        "unrepresentable_characters": test_set.unrepresentable,
    }
    report = error_report.build(scores, summary)
    json_path, md_path = error_report.write(report, test_set.output_dir)
    return [test_set.output_dir / hypotheses.FILE_NAME, json_path, md_path]


def results_table(metrics_by_set: dict[str, dict[str, float]]) -> str:
    rows = [[name, *error_report.metric_cells(m)] for name, m in metrics_by_set.items()]
    return markdown_table(["set", *(heading for heading, _ in error_report.METRIC_COLUMNS)], rows)


def _warn_unrepresentable(test_set: EvalSet) -> None:
    chars = test_set.unrepresentable
    if chars:
        listed = ", ".join(f"{c!r} ({n}x)" for c, n in chars.items())
        log.warning(
            "set %s: %d character(s) in its transcripts are not in the model's vocabulary, so the model can never "
            "produce them; scored anyway, each counts as an error: %s",
            test_set.name,
            sum(chars.values()),
            listed,
        )


def report_results(
    args: EvalArgs,
    source: ModelSource,
    metrics_by_set: dict[str, dict[str, float]],
    files_by_set: dict[str, list[Path]],
    world: World,
) -> None:
    """Rank 0: the console table, where the files are, and the MLflow run."""
    print(f"\n{PROG}: {source.describe()} on {world.world_size} rank(s)")
    print(results_table(metrics_by_set))
    for name, files in files_by_set.items():
        print(f"{name}: {', '.join(str(f) for f in files)}")
    if args.no_mlflow:
        return
    run_info = tracking.read_run_info(source.run_dir) if source.run_dir else None
    training_run = str(run_info["run_id"]) if run_info and run_info.get("run_id") else None
    uri = eval_tracking.resolve_uri(args.tracking_uri, run_info)
    params = {
        "model": str(source.path),
        "step": source.step,
        "data": dict(zip(args.names, args.data)),
        "world_size": world.world_size,
        "batch_size": args.batch_size,
    }
    run_id = eval_tracking.log_results(
        uri, training_run, args.experiment_name, source.step or 0, metrics_by_set, files_by_set, params
    )
    if run_id is not None:
        which = "training run" if run_id == training_run else "evaluation run"
        print(f"MLflow: {eval_tracking.PREFIX}/<set>/* logged to {which} {run_id} at {tracking.redact_text(uri)}")


def evaluate(args: EvalArgs, inputs: Inputs, world: World, device: torch.device) -> int:
    """Collective: every set scored on every rank, results written and logged by rank 0; returns the exit status
    (1 when a rank's part file is missing, else 0)."""
    setup_console(world)
    model, source = inputs.model, inputs.source
    model.to(device)
    if world.is_main:
        for test_set in inputs.sets:
            _warn_unrepresentable(test_set)
    precision_mode = run_precision(source)
    if precision_mode == "amp" and world.is_main:
        log.info("forward under fp16 autocast, as the model's run trained it (Native AMP)")
    init(world, device, args.dist_timeout_s)
    code = 0
    try:
        lm_decode = lm_eval.decoder_for(
            args.lm,
            model,
            inputs.vocab,
            (inputs.dev.catalog, inputs.dev.references) if inputs.dev else None,
            world,
            device,
            args.batch_size,
            precision_mode,
        )
        metrics_by_set: dict[str, dict[str, float]] = {}
        files_by_set: dict[str, list[Path]] = {}
        for test_set in inputs.sets:
            if world.is_main:
                log.info(
                    "set %s: %d utterance(s), %.2f h, on %d rank(s)",
                    test_set.name,
                    len(test_set.catalog),
                    test_set.catalog.hours(),
                    world.world_size,
                )
            totals, slowest = score_set(model, test_set, inputs.vocab, world, device, args, precision_mode, lm_decode)
            metrics = totals.metrics(slowest)
            metrics_by_set[test_set.name] = metrics
            if world.is_main:
                files_by_set[test_set.name] = write_outputs(test_set, totals, metrics, source, world)
        if world.is_main:
            report_results(args, source, metrics_by_set, files_by_set, world)
    except hypotheses.MissingPartError as exc:
        log.error("%s", exc)
        code = 1
    finally:
        shutdown()
    return code

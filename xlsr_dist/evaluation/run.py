"""`python -m xlsr_dist.evaluate --model MODEL --data SHARDS [SHARDS ...]`: WER, CER and loss of a trained model on
test sets, with every utterance's hypothesis and an error report.

MODEL is an exported model directory, a training run's --output_dir (its final/, else its newest complete
checkpoint), a model directory inside a run (final/, best/) or one checkpoint directory. Launched like training:

    python -m xlsr_dist.evaluate ...                           one rank
    torchrun --nproc_per_node N -m xlsr_dist.evaluate ...      N ranks
    deepspeed --num_gpus N --module xlsr_dist.evaluate ...     N ranks

Each rank scores its share of every set (partition.eval_rank_batches: every utterance once, the same batch count on
every rank) with the fp32 model on its device; no DeepSpeed engine, only a process group for the sums. Totals are
counts summed across ranks, so N ranks give the numbers of one.

Every utterance with a transcript is scored, whatever its duration (training's duration limits do not apply); the
loss is averaged over those whose labels fit the audio's frames. Per set, in --output_dir/<set>/ (default
<run dir, else model dir>/eval/<set>/): hypotheses.jsonl, report.json and report.md; the metrics go to MLflow
(eval_tracking) and to a table on the console. --output_dir must be on a filesystem every rank sees.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import re
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import pyarrow as pa
import torch

from xlsr_dist import text, tracking
from xlsr_dist.config import ConfigError
from xlsr_dist.data import language, partition, shards, stream
from xlsr_dist.data.catalog import Catalog, filter_metadata
from xlsr_dist.evaluation import error_report, hypotheses, lm_eval
from xlsr_dist.evaluation import tracking as eval_tracking
from xlsr_dist.evaluation.scoring import SetTotals, score_utterances, unrepresentable_characters
from xlsr_dist.export import TRAIN_CONFIG
from xlsr_dist.markdown import markdown_table
from xlsr_dist.training import checkpoint, preflight
from xlsr_dist.world import World, all_reduce_max, all_reduce_sum, device_for, init, report_problem, shutdown

log = logging.getLogger("xlsr_dist.evaluate")

PROG = "xlsr_dist.evaluate"
EVAL_DIR = "eval"
DESCRIPTION = (
    "Score a trained model on test sets (WER, CER, loss, per-utterance hypotheses, error report) on one rank, or on N "
    "with torchrun / the deepspeed launcher."
)
_NAME_OK = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


@dataclass(frozen=True)
class EvalArgs:
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


class _Parser(argparse.ArgumentParser):
    """Every rank parses the same flags; only rank 0 speaks (one usage error, one --help, not one per rank)."""

    def __init__(self, quiet: bool, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.quiet = quiet

    def error(self, message: str) -> NoReturn:
        if self.quiet:
            sys.exit(2)
        super().error(message)

    def print_help(self, file: Any = None) -> None:
        if not self.quiet:
            super().print_help(file)


def _argparser(quiet: bool) -> argparse.ArgumentParser:
    p = _Parser(quiet, prog=f"python -m {PROG}", description=DESCRIPTION)
    p.add_argument("--model", required=True, help="exported model dir, run --output_dir, final/ or best/, checkpoint")
    p.add_argument("--data", required=True, nargs="+", metavar="SHARDS", help="one shard directory or URL per set")
    p.add_argument("--names", nargs="+", default=[], help="one name per --data set (default: each one's basename)")
    p.add_argument("--output_dir", default="", help="per-set outputs go to OUTPUT_DIR/<set>/ (default: <run>/eval)")
    p.add_argument("--batch_size", type=int, default=8, help="utterances per forward pass on each rank (default 8)")
    p.add_argument("--num_workers", type=int, default=1, help="data loader processes per rank (default 1)")
    p.add_argument("--tracking_uri", default="", help="default: the training run's, else $MLFLOW_TRACKING_URI")
    p.add_argument("--experiment_name", default="", help="experiment of a new evaluation run (default: xlsr_dist)")
    p.add_argument("--no_mlflow", action="store_true", help="do not log to MLflow")
    # Ranks meet only at the end of each set; their shares take about, not exactly, the same time.
    p.add_argument(
        "--dist_timeout_s", type=int, default=1800, help="how long a rank waits for the others (default 1800)"
    )
    lm_eval.add_flags(p)
    # DeepSpeed's launcher appends --local_rank=N; the rank itself is read from the environment (world.py).
    p.add_argument("--local_rank", type=int, default=-1, help=argparse.SUPPRESS)
    return p


def set_name(location: str) -> str:
    """The set's default name: its directory's basename (of the file's directory for a single shard file)."""
    trimmed = location.rstrip("/")
    base = trimmed.rsplit("/", 1)[-1]
    if base.endswith(".parquet"):
        base = trimmed.rsplit("/", 2)[-2] if trimmed.count("/") else "data"
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", base).strip("._") or "data"


def parse_args(argv: Sequence[str] | None = None, quiet: bool = False) -> EvalArgs:
    """Flags -> EvalArgs; raises ConfigError naming every bad flag."""
    a = _argparser(quiet).parse_args(argv)
    problems = []
    if a.batch_size < 1:
        problems.append(f"--batch_size must be at least 1 (got {a.batch_size})")
    if a.num_workers < 0:
        problems.append(f"--num_workers must be 0 or more (got {a.num_workers})")
    if a.dist_timeout_s < 1:
        problems.append(f"--dist_timeout_s must be at least 1 (got {a.dist_timeout_s})")
    names = list(a.names)
    if names and len(names) != len(a.data):
        problems.append(f"--names: {len(names)} name(s) for {len(a.data)} --data set(s); give one per set")
    for n in names:
        if not _NAME_OK.fullmatch(n):
            problems.append(f"--names {n!r}: use letters, digits, '.', '_' and '-' (it names a directory and metrics)")
    if not names or len(names) != len(a.data):
        names = [set_name(d) for d in a.data]
    seen: dict[str, str] = {}
    for name, location in zip(names, a.data):
        if name in seen:
            problems.append(f"--data {seen[name]} and {location} are both named {name!r}; tell them apart with --names")
        seen.setdefault(name, location)
    lm_args, lm_problems = lm_eval.from_namespace(a)
    problems += lm_problems
    if problems:
        raise ConfigError(problems)
    return EvalArgs(
        model=a.model,
        data=list(a.data),
        names=names,
        output_dir=a.output_dir,
        batch_size=a.batch_size,
        num_workers=a.num_workers,
        tracking_uri=a.tracking_uri,
        experiment_name=a.experiment_name,
        no_mlflow=a.no_mlflow,
        dist_timeout_s=a.dist_timeout_s,
        lm=lm_args,
    )


# --------------------------------------------------------------------------------------------------------------
# The model and where it came from


@dataclass(frozen=True)
class ModelSource:
    """The model path, the training run's --output_dir when it came from one, and its training step if known."""

    path: Path
    run_dir: Path | None
    step: int | None

    @property
    def home(self) -> Path:
        return self.run_dir or self.path

    def describe(self) -> str:
        return str(self.path) + (f" (step {self.step})" if self.step is not None else "")


def _checkpoint_step(ckpt: Path | None) -> int | None:
    if ckpt is None:
        return None
    try:
        return int(checkpoint.read_client_state(ckpt)["step"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _final_step(run_dir: Path) -> int | None:
    """The step a finished run's final/ model holds: the one it records (--load_best_model_at_end), else the last."""
    recorded = checkpoint.model_step(run_dir / checkpoint.FINAL)
    if recorded is not None:
        return recorded
    try:
        return int(json.loads((run_dir / TRAIN_CONFIG).read_text())["total_steps"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def run_precision(source: ModelSource) -> str:
    """The precision mode the model's training run used (its train_config.json); 'fp32' for a model without one."""
    if source.run_dir is None:
        return "fp32"
    try:
        return str(json.loads((source.run_dir / TRAIN_CONFIG).read_text()).get("precision", "fp32"))
    except (OSError, ValueError, AttributeError):
        return "fp32"


def locate_model(path: str | Path) -> ModelSource:
    """Which run (if any) the model at ``path`` belongs to, and at which step; the same choice load_hf_model makes."""
    p = Path(path).resolve()
    if (p / checkpoint.MARKER).is_file():
        run = p.parent.parent if p.parent.name == checkpoint.CHECKPOINTS else None
        return ModelSource(p, run, _checkpoint_step(p))
    if (p / checkpoint.FINAL / "config.json").is_file():
        return ModelSource(p, p, _final_step(p))
    if (p / checkpoint.CHECKPOINTS).is_dir():
        return ModelSource(p, p, _checkpoint_step(checkpoint.newest_complete(p)))
    parent = p.parent
    if any((parent / marker).exists() for marker in (tracking.RUN_INFO, TRAIN_CONFIG, checkpoint.CHECKPOINTS)):
        # best/ records the step its weights come from (checkpoint.MODEL_INFO).
        step = _final_step(parent) if p.name == checkpoint.FINAL else checkpoint.model_step(p)
        return ModelSource(p, parent, step)
    return ModelSource(p, None, None)


def load_model(spec: str) -> tuple[Any, dict[str, int]]:
    """(fp32 Wav2Vec2ForCTC, the vocabulary its CTC head emits); raises ConfigError naming --model."""
    if not Path(spec).exists():
        raise ConfigError([f"--model {spec}: no such file or directory"])
    expected = (
        "expected an exported model directory, a training run's --output_dir, a model directory in it (final/, "
        "best/) or one complete checkpoint directory"
    )
    try:
        model, processor = checkpoint.load_hf_model(spec)
    except checkpoint.CheckpointError:
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
    paths = preflight.shard_paths("--data", location)
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


def check_inputs(args: EvalArgs) -> tuple[ModelSource, Any, dict[str, int], list[EvalSet], EvalSet | None]:
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
    return source, model, vocab or {}, sets, dev


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


def setup_console(world: World) -> None:
    level = logging.INFO if world.is_main else logging.WARNING
    prefix = "" if world.is_main else f"rank {world.rank} "
    logging.basicConfig(level=level, format=f"%(asctime)s {prefix}%(levelname)s %(message)s", force=True)
    for name in ("DeepSpeed", "deepspeed", "transformers", "torch.distributed"):
        logging.getLogger(name).setLevel(logging.WARNING)


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


def main(argv: Sequence[str] | None = None) -> None:
    world = World.from_env()
    try:
        args = parse_args(argv, quiet=not world.is_main)
        source, model, vocab, sets, dev = check_inputs(args)
        device = device_for(world)
    except ConfigError as exc:
        # Before any process group exists: every rank leaves; the ranks that can see the problem say it once.
        report_problem(world, PROG, str(exc), exc.scope)
        sys.exit(2)
    setup_console(world)
    model.to(device)
    if world.is_main:
        for test_set in sets:
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
            vocab,
            (dev.catalog, dev.references) if dev else None,
            world,
            device,
            args.batch_size,
            precision_mode,
        )
        metrics_by_set: dict[str, dict[str, float]] = {}
        files_by_set: dict[str, list[Path]] = {}
        for test_set in sets:
            if world.is_main:
                log.info(
                    "set %s: %d utterance(s), %.2f h, on %d rank(s)",
                    test_set.name,
                    len(test_set.catalog),
                    test_set.catalog.hours(),
                    world.world_size,
                )
            totals, slowest = score_set(model, test_set, vocab, world, device, args, precision_mode, lm_decode)
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
    sys.exit(code)

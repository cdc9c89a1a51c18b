"""The one typed config tree of xlsr_dist: defaults, loading, validation and batch arithmetic.

Every field is a command-line flag of the same name (HF TrainingArguments / run_speech_recognition_ctc names where the
concept is the same) and may also be set in a YAML/JSON file given with ``--config``; flags win over the file.
Validation collects every problem at once and names the flag to change. Nothing here touches torch.distributed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn, get_args, get_type_hints

from xlsr_dist.text import TextNormalization, settings_problems, writes_words
from xlsr_dist.training.best_checkpoint import metric_problems

# The reference recipe keeps the optimizer batch at 8 utterances whatever the GPU count.
REFERENCE_GLOBAL_BATCH = 8
# Largest micro-batch chosen automatically; a user may pick another with --per_device_train_batch_size.
DEFAULT_MAX_MICRO_BATCH = 4
REPO_ROOT = Path(__file__).resolve().parent.parent


class ConfigError(ValueError):
    """Raised before any process group starts; ``problems`` holds one line per problem, each naming a flag.

    ``scope`` says which ranks can see the problem, hence which report it (one message, not one per rank): "run"
    (the flags and files every rank reads alike: rank 0 reports), "node" (this machine's GPUs, files or caches: the
    first rank of each node reports, since another node may differ), "rank" (this rank's own environment, e.g. its
    LOCAL_RANK: the rank itself reports)."""

    def __init__(self, problems: Sequence[str], scope: str = "run") -> None:
        self.problems = list(problems)
        self.scope = scope
        lines = "\n".join("  - " + p.replace("\n", "\n    ") for p in self.problems)
        super().__init__(f"{len(self.problems)} problem(s) in the configuration:\n{lines}")


@dataclass
class ModelConfig:
    """Which model to fine-tune and its CTC/regularisation settings (HF CTC example defaults)."""

    model_name_or_path: str = "facebook/wav2vec2-large-xlsr-53"
    """Hub id or local directory of a pretrained wav2vec2 checkpoint (used when --architecture is empty)."""
    architecture: str = ""
    """'' loads --model_name_or_path; 'xlsr-53' builds the XLSR-53 architecture with random weights (no download);
    'tiny' builds a ~0.7M-parameter model for tests and the demo."""
    freeze_feature_encoder: bool = True
    """Keep the convolutional feature encoder frozen, as the reference run and HF's CTC example do."""
    attention_dropout: float = 0.0
    activation_dropout: float = 0.0
    feat_proj_dropout: float = 0.0
    hidden_dropout: float = 0.0
    final_dropout: float = 0.0
    mask_time_prob: float = 0.05
    """SpecAugment time-mask probability."""
    layerdrop: float = 0.0
    ctc_loss_reduction: str = "mean"
    """Training and eval loss as HF's Wav2Vec2ForCTC computes it: 'mean' (each utterance's CTC loss divided by its
    transcript length, averaged over the batch) or 'sum' (summed over the batch)."""
    ctc_zero_infinity: bool = True
    """Zero the loss of unalignable utterances so one bad item cannot poison fp16 training."""
    gradient_checkpointing: bool = False
    ctc_blank_bias: float = 0.0
    """Initial bias of the CTC head's blank logit in a model built from random weights (--architecture tiny or
    xlsr-53); 0 keeps transformers' zero init. At 0 every frame starts with a uniform distribution, the first CTC
    losses are ~10x the plateau's and their (clipped) gradients stall a model trained from scratch on the all-blank
    plateau for hundreds of steps; ~5 (blank ~85 % likely at first, where training goes anyway) avoids that."""


@dataclass
class DataConfig:
    """Where the shards are and how batches are formed."""

    train_data: str = "demo"
    """Training shards: a directory or fsspec URL (s3://, gs://, hf://) of Parquet shards written by
    `python -m xlsr_dist.prepare`, or 'demo' for the embedded, self-generated corpus."""
    eval_data: str = ""
    """Evaluation shards; empty with --train_data demo means the demo's eval split."""
    data_cache_dir: str = ""
    """Where the demo corpus is generated (default: $XDG_CACHE_HOME/xlsr_dist or ~/.cache/xlsr_dist)."""
    demo_train_utterances: int = 2000
    demo_eval_utterances: int = 200
    max_duration_in_seconds: float = 20.0
    """Longer utterances are skipped (and counted in the data report)."""
    min_duration_in_seconds: float = 0.0
    bucket_size_multiplier: int = 100
    """Duration bucketing: each shuffled window of global_batch x this many utterances is sorted by duration
    before being cut into global batches (1 disables bucketing)."""
    sortagrad_epochs: int = 0
    """SortaGrad (Deep Speech 2): the first this many epochs run shortest utterances first, batches in order of
    duration, which shortens the all-blank plateau of CTC from random weights (0 = off: every epoch bucketed and
    shuffled)."""
    dataloader_num_workers: int = 1
    eval_max_utterances: int = 0
    """Evaluate on at most this many utterances (0 = all)."""
    language: str = "en"
    """ISO 639 code of the corpus's language (en, de, tr, zh, ...): its lower-casing, its number words, whether it
    writes spaces between words (see xlsr_dist.text)."""
    fold_accents: bool | None = None
    """Fold accents away (café -> cafe); unset ('none'): on for English, off for every other language."""
    text_normalization: str = "default"
    """'default' (xlsr_dist.text.normalize) or 'none' for corpora normalised already (whitespace collapse only)."""
    chars_to_ignore: str = ""
    """Characters deleted from transcripts, HF's --chars_to_ignore given as one string (',?.!-;:"'); a config file
    may give HF's list."""

    def normalization(self) -> TextNormalization:
        """How this run reads transcripts (the split's own settings: train.main checks they agree)."""
        return TextNormalization(self.language, self.fold_accents, self.text_normalization, self.chars_to_ignore)


@dataclass
class TrainConfig:
    """Optimisation, schedule, batch arithmetic, checkpointing; defaults are the seed model card's recipe."""

    output_dir: str = "output"
    num_train_epochs: float = 30.0
    max_steps: int = -1
    """Optimizer steps to run; -1 derives them from --num_train_epochs."""
    learning_rate: float = 1e-4
    warmup_steps: int = 1000
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    max_grad_norm: float = 1.0
    seed: int = 42
    global_batch_size: int = REFERENCE_GLOBAL_BATCH
    """Utterances per optimizer step over all ranks; 8 is the reference recipe."""
    per_device_train_batch_size: int = 0
    """Micro-batch per rank; 0 picks min(4, global/world) and derives gradient accumulation."""
    per_device_eval_batch_size: int = 8
    logging_steps: int = 25
    eval_steps: int = 500
    save_steps: int = 500
    save_total_limit: int = 3
    """Keep only the newest K complete checkpoints (0 keeps all), and the best one besides."""
    metric_for_best_model: str = ""
    """Which evaluation metric picks the best checkpoint (written to best/ at the end): wer, cer or loss, with or
    without HF's "eval_" prefix; lower is better. Default: the run's --primary_metric (eval_wer, or eval_cer for
    languages written without spaces between words)."""
    greater_is_better: bool | None = None
    """HF's flag, accepted for HF configs: unset or false (every metric here is lower-is-better)."""
    load_best_model_at_end: bool = False
    """final/ holds the best checkpoint's weights too (best/ is always written); needs --save_steps to be a multiple
    of --eval_steps, as in HF."""
    deepspeed: str = "ds_configs/zero2_fp16.json"
    """DeepSpeed JSON config; 'auto' batch/optimizer keys are filled from these flags."""
    resume_from_checkpoint: str = ""
    """'latest' (newest complete checkpoint in --output_dir), a checkpoint directory, or '' to start fresh."""
    dist_timeout_s: int = 300
    """Collective timeout: a rank stuck longer than this ends the job instead of hanging it."""
    max_nonfinite_steps: int = 20
    """fp16 only: consecutive skipped (overflowing) steps tolerated before training stops."""
    primary_metric: str = ""
    """The metric that says how good a model is: eval_wer, eval_cer or eval_loss; '' picks eval_cer for languages
    written without spaces between words (zh, ja, th, ...: their WER counts chance spaces), else eval_wer."""
    disable_tqdm: bool = False


@dataclass
class TrackingConfig:
    """MLflow tracking, done by rank 0 only."""

    report_to: str = "mlflow"
    """'mlflow' or 'none'."""
    tracking_uri: str = ""
    """Default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in the working directory."""
    experiment_name: str = ""
    """Default: $MLFLOW_EXPERIMENT_NAME, else 'xlsr_dist'."""
    run_name: str = ""


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    def flat(self) -> dict[str, Any]:
        """Flag name -> value, the shape logged as MLflow params."""
        out: dict[str, Any] = {}
        for section in dataclasses.fields(self):
            out.update(dataclasses.asdict(getattr(self, section.name)))
        return out


def flatten(prefix: str, value: Any, out: dict[str, Any]) -> dict[str, Any]:
    """Nested mappings -> dotted keys (deepspeed.zero_optimization.stage), the shape of params and train_config."""
    if isinstance(value, Mapping) and value:
        for k, v in value.items():
            flatten(f"{prefix}.{k}" if prefix else str(k), v, out)
    else:
        out[prefix] = value
    return out


SECTIONS: tuple[str, ...] = ("model", "data", "train", "tracking")
ARCHITECTURES = ("", "xlsr-53", "tiny")
PRIMARY_METRICS = ("eval_wer", "eval_cer", "eval_loss")


def primary_metric(cfg: Config) -> str:
    """--primary_metric, or its default for the run's language (see TrainConfig.primary_metric)."""
    if cfg.train.primary_metric:
        return cfg.train.primary_metric
    return "eval_wer" if writes_words(cfg.data.language) else "eval_cer"


def best_model_metric(cfg: Config) -> str:
    """--metric_for_best_model, else the run's primary metric: the one metric the console, compare and best/ put
    first."""
    return cfg.train.metric_for_best_model or primary_metric(cfg)


def _flag_owners() -> dict[str, tuple[str, type]]:
    owners: dict[str, tuple[str, type]] = {}
    for section_field in dataclasses.fields(Config):
        cls = section_field.default_factory  # type: ignore[misc]
        hints = get_type_hints(cls)
        for f in dataclasses.fields(cls):
            owners[f.name] = (section_field.name, hints[f.name])
    return owners


FLAGS = _flag_owners()


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected true/false, got {text!r}")


def _unset_or_kind(kind: Any) -> tuple[bool, type]:
    """(may it be unset, its type): ``bool | None`` -> (True, bool)."""
    members = get_args(kind)
    if type(None) in members:
        return True, next(m for m in members if m is not type(None))
    return False, kind


def _coerce(name: str, kind: type, value: Any, problems: list[str]) -> Any:
    unsettable, kind = _unset_or_kind(kind)
    if unsettable and (value is None or str(value).strip().lower() in ("", "none")):
        return None
    try:
        if kind is bool:
            return value if isinstance(value, bool) else _parse_bool(str(value))
        if kind is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError(f"expected an integer, got {value!r}")
            try:
                return int(value)
            except ValueError:
                raise ValueError(f"expected an integer, got {value!r}") from None
        if kind is float:
            if isinstance(value, bool):
                raise ValueError(f"expected a number, got {value!r}")
            try:
                return float(value)
            except ValueError:
                raise ValueError(f"expected a number, got {value!r}") from None
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return "".join(value)  # HF's list form, e.g. chars_to_ignore: [",", "?", "."]
        return str(value)
    except (TypeError, ValueError) as exc:
        problems.append(f"--{name}: {exc}")
        return None


def read_config_file(path: str) -> dict[str, Any]:
    """A flat mapping of flag names from YAML or JSON (sections as nested mappings are accepted too)."""
    import yaml

    try:
        text = Path(path).read_text()
        raw = json.loads(text) if path.endswith(".json") else (yaml.safe_load(text) or {})
    except (OSError, UnicodeDecodeError, ValueError, yaml.YAMLError) as exc:
        reason = " ".join(str(exc).split())[:300]
        raise ConfigError(
            [f"--config {path}: cannot be read as {'JSON' if path.endswith('.json') else 'YAML'} ({reason})"]
        ) from None
    if not isinstance(raw, dict):
        raise ConfigError([f"--config {path}: expected a mapping of flag names to values"])
    flat: dict[str, Any] = {}
    for key, value in raw.items():
        if key in SECTIONS and isinstance(value, dict):
            flat.update(value)
        else:
            flat[key] = value
    return flat


def build_config(values: dict[str, Any], source: str = "flags", problems: Sequence[str] = ()) -> Config:
    """Config from flag-name -> value; unknown names, values of the wrong type and invalid settings are all reported
    together (``problems``: ones found before, e.g. by the argument parser)."""
    found = list(problems)
    unparsed: list[str] = []
    sections: dict[str, dict[str, Any]] = {s: {} for s in SECTIONS}
    for name, value in values.items():
        if name not in FLAGS:
            found.append(f"--{name}: unknown setting (from {source}); see `python -m xlsr_dist.train --help`")
            continue
        section, kind = FLAGS[name]
        known_problems = len(found)
        coerced = _coerce(name, kind, value, found)
        if len(found) == known_problems:
            sections[section][name] = coerced
        else:
            unparsed.append(name)
    cfg = Config(
        model=ModelConfig(**sections["model"]),
        data=DataConfig(**sections["data"]),
        train=TrainConfig(**sections["train"]),
        tracking=TrackingConfig(**sections["tracking"]),
    )
    # The settings that parsed are validated too (a flag that did not parse keeps its default meanwhile, so a
    # problem naming it would be about that default, not about what the user typed: left out).
    try:
        validate(cfg)
    except ConfigError as invalid:
        found += [p for p in invalid.problems if not any(re.search(rf"--{n}(?!\w)", p) for n in unparsed)]
    if found:
        raise ConfigError(found)
    return cfg


class _ArgumentParser(argparse.ArgumentParser):
    """argparse's own errors (a flag without its value) as a ConfigError: reported like every other problem, on
    rank 0 only, without the usage text."""

    def error(self, message: str) -> NoReturn:
        raise ConfigError([f"{message} (see `{self.prog} --help`)"])


def _argparser() -> argparse.ArgumentParser:
    parser = _ArgumentParser(
        prog="python -m xlsr_dist.train",
        description="Fine-tune wav2vec2 XLS-R with CTC on 1-8 ranks (global batch 8) with DeepSpeed ZeRO-2.",
    )
    parser.add_argument("--config", default="", help="YAML/JSON file of flag values (flags given here win)")
    # DeepSpeed's launcher appends --local_rank=N; the rank itself is read from the environment (world.py).
    parser.add_argument("--local_rank", type=int, default=-1, help=argparse.SUPPRESS)
    defaults = Config().flat()
    for name, (section, kind) in FLAGS.items():
        parser.add_argument(
            f"--{name}",
            default=None,
            metavar=_unset_or_kind(kind)[1].__name__.upper(),
            help=f"[{section}] default: {defaults[name]!r}",
        )
    return parser


def parse_args(argv: Sequence[str] | None = None) -> Config:
    """Flags (and an optional --config file) -> validated Config; raises ConfigError listing every problem."""
    args, extra = _argparser().parse_known_args(argv)
    problems = (
        [f"unrecognized argument(s): {' '.join(extra)} (see `python -m xlsr_dist.train --help`)"] if extra else []
    )
    values: dict[str, Any] = {}
    if args.config:
        if not Path(args.config).is_file():
            raise ConfigError([*problems, f"--config {args.config}: no such file"])
        values.update(read_config_file(args.config))
    source = f"--config {args.config}" if args.config else "flags"
    for name in FLAGS:
        given = getattr(args, name)
        if given is not None:
            values[name] = given
    return build_config(values, source=source, problems=problems)


def validate(cfg: Config) -> None:
    """Collect every problem in ``cfg``; raise one ConfigError naming each flag to change."""
    p: list[str] = []
    m, d, t, k = cfg.model, cfg.data, cfg.train, cfg.tracking
    if m.architecture not in ARCHITECTURES:
        p.append(f"--architecture: {m.architecture!r} is not one of {', '.join(repr(a) for a in ARCHITECTURES)}")
    if not m.architecture and not m.model_name_or_path:
        p.append("--model_name_or_path: empty; give a hub id or local directory, or set --architecture")
    for name in (
        "attention_dropout",
        "activation_dropout",
        "feat_proj_dropout",
        "hidden_dropout",
        "final_dropout",
        "mask_time_prob",
        "layerdrop",
    ):
        value = getattr(m, name)
        if not 0.0 <= value < 1.0:
            p.append(f"--{name}: {value} must be in [0, 1)")
    if m.ctc_blank_bias and m.architecture not in ("tiny", "xlsr-53"):
        p.append("--ctc_blank_bias: only for models built from random weights (--architecture tiny or xlsr-53)")
    if not math.isfinite(m.ctc_blank_bias):
        p.append(f"--ctc_blank_bias: {m.ctc_blank_bias} must be finite")
    if m.ctc_loss_reduction not in ("mean", "sum"):
        p.append(f"--ctc_loss_reduction: {m.ctc_loss_reduction!r} must be 'mean' or 'sum'")
    if not d.train_data:
        p.append("--train_data: empty; give a shard directory/URL or 'demo'")
    if d.train_data != "demo" and not d.eval_data:
        p.append("--eval_data: required when --train_data is not 'demo'")
    if d.max_duration_in_seconds <= d.min_duration_in_seconds:
        p.append("--max_duration_in_seconds: must be greater than --min_duration_in_seconds")
    if d.bucket_size_multiplier < 1:
        p.append("--bucket_size_multiplier: must be >= 1 (1 disables bucketing)")
    if d.sortagrad_epochs < 0:
        p.append("--sortagrad_epochs: must be >= 0 (0 disables SortaGrad)")
    if d.dataloader_num_workers < 0:
        p.append("--dataloader_num_workers: must be >= 0")
    if d.demo_train_utterances < 16 or d.demo_eval_utterances < 1:
        p.append("--demo_train_utterances/--demo_eval_utterances: need at least 16 and 1 utterances")
    p.extend(settings_problems(d.language, d.text_normalization))
    if t.learning_rate <= 0:
        p.append(f"--learning_rate: {t.learning_rate} must be > 0")
    if t.warmup_steps < 0:
        p.append("--warmup_steps: must be >= 0")
    if t.max_steps == 0 or t.max_steps < -1:
        p.append("--max_steps: must be a positive number of optimizer steps, or -1 to use --num_train_epochs")
    if t.max_steps == -1 and t.num_train_epochs <= 0:
        p.append("--num_train_epochs: must be > 0 when --max_steps is -1")
    if not (0.0 <= t.adam_beta1 < 1.0 and 0.0 <= t.adam_beta2 < 1.0):
        p.append("--adam_beta1/--adam_beta2: must be in [0, 1)")
    if t.adam_epsilon <= 0:
        p.append("--adam_epsilon: must be > 0")
    if t.weight_decay < 0:
        p.append("--weight_decay: must be >= 0")
    if t.max_grad_norm < 0:
        p.append("--max_grad_norm: must be >= 0 (0 disables clipping)")
    if t.global_batch_size < 1:
        p.append("--global_batch_size: must be >= 1")
    if t.per_device_train_batch_size < 0:
        p.append("--per_device_train_batch_size: must be >= 0 (0 = automatic)")
    if t.per_device_eval_batch_size < 1:
        p.append("--per_device_eval_batch_size: must be >= 1")
    for name in ("logging_steps", "eval_steps", "save_steps"):
        if getattr(t, name) < 1:
            p.append(f"--{name}: must be >= 1")
    if t.save_total_limit < 0:
        p.append("--save_total_limit: must be >= 0 (0 keeps every checkpoint)")
    p.extend(metric_problems(t.metric_for_best_model or "eval_wer", t.greater_is_better))
    if t.load_best_model_at_end and t.eval_steps >= 1 and t.save_steps % t.eval_steps:
        p.append(
            f"--load_best_model_at_end: --save_steps ({t.save_steps}) must be a multiple of --eval_steps "
            f"({t.eval_steps}), so that every saved checkpoint has an evaluation to rank it by"
        )
    if not t.output_dir:
        p.append("--output_dir: empty")
    if not t.deepspeed:
        p.append("--deepspeed: empty; use ds_configs/zero2_fp16.json (GPU), zero2_bf16.json or zero2_fp32.json")
    elif resolve_path(t.deepspeed) is None:
        p.append(f"--deepspeed: {t.deepspeed} not found (looked in the working directory and {REPO_ROOT})")
    if t.dist_timeout_s < 10:
        p.append("--dist_timeout_s: must be >= 10 seconds")
    if t.max_nonfinite_steps < 1:
        p.append("--max_nonfinite_steps: must be >= 1")
    if t.primary_metric and t.primary_metric not in PRIMARY_METRICS:
        p.append(
            f"--primary_metric: {t.primary_metric!r} is not one of {', '.join(PRIMARY_METRICS)} (or '': by language)"
        )
    if k.report_to not in ("mlflow", "none"):
        p.append(f"--report_to: {k.report_to!r} must be 'mlflow' or 'none'")
    if p:
        raise ConfigError(p)


def resolve_path(path: str) -> Path | None:
    """A config path as given, else relative to the repository (so `-m xlsr_dist.train` works from anywhere)."""
    candidate = Path(path).expanduser()
    if candidate.is_file():
        return candidate
    in_repo = REPO_ROOT / path
    return in_repo if in_repo.is_file() else None


@dataclass(frozen=True)
class BatchPlan:
    """How the global batch is split: global = micro x accumulation x world."""

    global_batch: int
    world_size: int
    micro_batch: int
    grad_accum: int

    @property
    def per_rank(self) -> int:
        return self.micro_batch * self.grad_accum


def valid_world_sizes(global_batch: int, max_world: int = 64) -> list[int]:
    return [w for w in range(1, max_world + 1) if global_batch % w == 0]


def plan_batches(global_batch: int, world_size: int, micro_batch: int = 0) -> BatchPlan:
    """Split ``global_batch`` over ``world_size`` ranks exactly, or raise ConfigError saying what works.

    ``micro_batch`` 0 picks the largest divisor of the per-rank share up to DEFAULT_MAX_MICRO_BATCH
    (world 1 -> 4 x 2, 2 -> 4 x 1, 4 -> 2 x 1, 8 -> 1 x 1 for the reference 8).
    """
    if world_size < 1:
        raise ConfigError([f"world size {world_size}: must be >= 1"])
    if global_batch % world_size:
        works = ", ".join(str(w) for w in valid_world_sizes(global_batch))
        raise ConfigError(
            [
                f"world size {world_size} cannot keep --global_batch_size {global_batch} exactly "
                f"(each rank would get {global_batch / world_size:g} utterances). "
                f"Run on {works} ranks (GPUs) instead."
            ]
        )
    per_rank = global_batch // world_size
    if micro_batch == 0:
        micro_batch = max(m for m in range(1, min(per_rank, DEFAULT_MAX_MICRO_BATCH) + 1) if per_rank % m == 0)
    elif per_rank % micro_batch:
        choices = ", ".join(str(m) for m in range(1, per_rank + 1) if per_rank % m == 0)
        raise ConfigError(
            [
                f"--per_device_train_batch_size {micro_batch} does not divide the {per_rank} utterances each of "
                f"{world_size} rank(s) takes per step of {global_batch}; choose one of {choices}"
            ]
        )
    return BatchPlan(global_batch, world_size, micro_batch, per_rank // micro_batch)

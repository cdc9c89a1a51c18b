"""The config tree: one dataclass per section, every field a flag of the same name.

The string literal under each field is that flag's documentation: ``--help`` and docs/flags.md are made from it
(``xlsr_dist.config.docs``), so it says what the flag does in a sentence a user can act on.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from xlsr_dist.text import TextNormalization, writes_words

# The reference recipe keeps the optimizer batch at 8 utterances whatever the GPU count.
REFERENCE_GLOBAL_BATCH = 8


@dataclass
class ModelConfig:
    """Which model to fine-tune and its CTC/regularisation settings (HF CTC example defaults)."""

    model_name_or_path: str = "facebook/wav2vec2-large-xlsr-53"
    """Hub id or local directory of a pretrained wav2vec2 checkpoint (used when --architecture is empty); offline
    without the weights at hand, the run stops with one message saying how to provide them
    (tests/test_bad_input.py)."""
    architecture: str = ""
    """'' loads --model_name_or_path; 'xlsr-53' builds the XLSR-53 architecture with random weights (no download);
    'tiny' builds a ~0.7M-parameter model for tests and the demo."""
    freeze_feature_encoder: bool = True
    """Keep the convolutional feature encoder frozen, as the reference run and HF's CTC example do."""
    attention_dropout: float = 0.0
    """Dropout probability on the transformer's attention weights (the model config's attention_dropout)."""
    activation_dropout: float = 0.0
    """Dropout probability after the activation inside each transformer feed-forward block."""
    feat_proj_dropout: float = 0.0
    """Dropout probability on the feature projection, between the convolutional encoder and the transformer."""
    hidden_dropout: float = 0.0
    """Dropout probability on the transformer's hidden states (after the positional convolution, each attention and
    each feed-forward output)."""
    final_dropout: float = 0.0
    """Dropout probability on the last hidden states, just before the CTC head."""
    mask_time_prob: float = 0.05
    """SpecAugment time-mask probability (HF's statistics, tests/test_specaugment.py); the masks are drawn from the
    seed, the epoch and each utterance's id, so they are the same on any number of ranks and after a resume
    (tests/test_shared_randomness.py); 0 turns SpecAugment off."""
    layerdrop: float = 0.0
    """Probability of skipping each transformer layer in a training step; every rank skips the same layers, drawn
    from the seed and the optimizer step (tests/test_layerdrop.py, tests/test_shared_randomness.py)."""
    ctc_loss_reduction: str = "mean"
    """Training and eval loss as HF's Wav2Vec2ForCTC computes it: 'mean' (each utterance's CTC loss divided by its
    transcript length, averaged over the batch) or 'sum' (summed over the batch); tests/test_ctc.py."""
    ctc_zero_infinity: bool = True
    """Zero the loss of unalignable utterances so one bad item cannot poison fp16 training."""
    gradient_checkpointing: bool = False
    """Recompute the transformer's activations in the backward pass instead of keeping them: less memory, a slower
    step; false also turns off checkpointing that a pretrained config asks for."""
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
    `python -m xlsr_dist.prepare`, or 'demo' for the embedded, self-generated corpus. Several sets mix:
    'dirA=0.7,dirB=0.3' (comma-separated, each weight after the set's last '=', weights > 0) or 'dirA,dirB' (weights
    from --mixing_temperature); a config file may give a YAML list of these entries; see docs/data.md, "Mixing several
    training sets"."""
    mixing_temperature: float = 1.0
    """With several --train_data sets given without weights: set i is drawn with probability proportional to
    (n_i / N) ** (1 / T), n_i its utterances (XLS-R, mBART); 1 = in proportion to size, larger flattens."""
    eval_data: str = ""
    """Evaluation shards; required unless --train_data is 'demo', where empty means the demo's eval split. Several
    sets: 'en=dirA,fr=dirB' or 'dirA,dirB' (names: the basenames); each set's loss/WER/CER is logged as
    eval/<set>/loss|wer|cer, and eval_loss/eval_wer/eval_cer (--metric_for_best_model) are their unweighted means."""
    data_cache_dir: str = ""
    """Where the demo corpus is generated (default: $XDG_CACHE_HOME/xlsr_dist or ~/.cache/xlsr_dist)."""
    demo_train_utterances: int = 2000
    """Utterances in the demo's training split (--train_data demo); at least 16."""
    demo_eval_utterances: int = 200
    """Utterances in the demo's eval split (--train_data demo); at least 1."""
    max_duration_in_seconds: float = 20.0
    """Longer utterances are skipped (and counted in the data report)."""
    min_duration_in_seconds: float = 0.0
    """Shorter utterances are skipped (and counted in the data report)."""
    bucket_size_multiplier: int = 100
    """Duration bucketing: each shuffled window of global_batch x this many utterances is sorted by duration
    before being cut into global batches (1 disables bucketing)."""
    sortagrad_epochs: int = 0
    """SortaGrad (Deep Speech 2): the first this many epochs run shortest utterances first, batches in order of
    duration, which shortens the all-blank plateau of CTC from random weights (0 = off: every epoch bucketed and
    shuffled)."""
    dataloader_num_workers: int = 0
    """DataLoader worker processes per rank that read and decode audio; 0 reads them in a background thread of the
    training process, one step ahead (cheaper than a worker's hand-over: BENCHMARKS.md, "Training speed")."""
    eval_max_utterances: int = 0
    """Evaluate on at most this many utterances of each --eval_data set, the first in id order (0 = all)."""
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

    speed_perturb_prob: float = 0.0
    """Training augmentation: probability that an utterance is speed-perturbed in an epoch (soxr resampling, length
    and pitch change together); 0 = off. Draws depend on (--seed, epoch, utterance id) only (docs/augmentation.md)."""
    speed_factors: str = "0.9,1.0,1.1"
    """Speed factors to draw from, comma-separated or a config file's YAML list (> 1 is faster); a factor that would
    leave the transcript too few CTC frames is not applied to that utterance."""
    noise_dir: str = ""
    """A local folder of noise audio files (any format libsndfile reads, searched recursively) for --noise_prob."""
    noise_prob: float = 0.0
    """Training augmentation: probability of adding a random segment of a --noise_dir file; 0 = off."""
    noise_snr_min_db: float = 5.0
    """Lowest signal-to-noise ratio (dB) of added noise; the SNR is drawn uniformly between this and the highest."""
    noise_snr_max_db: float = 20.0
    """Highest signal-to-noise ratio (dB) of added noise."""
    rir_dir: str = ""
    """A local folder of room impulse responses (audio files) for --rir_prob."""
    rir_prob: float = 0.0
    """Training augmentation: probability of convolving an utterance with a random --rir_dir response; 0 = off."""
    gain_prob: float = 0.0
    """Training augmentation: probability of a random gain, clipped to [-1, 1] (collate's per-utterance
    normalisation cancels a gain that does not clip); 0 = off."""
    gain_min_db: float = -6.0
    """Lowest gain (dB) drawn by --gain_prob."""
    gain_max_db: float = 6.0
    """Highest gain (dB) drawn by --gain_prob."""

    def train_sets(self) -> list[tuple[str, float | None]]:
        """--train_data as (location, weight or None) pairs; ValueError naming what is wrong."""
        return parse_train_sets(self.train_data)

    def eval_sets(self) -> list[tuple[str, str]]:
        """--eval_data as (name, location) pairs (one set: its basename and location); ValueError naming what is
        wrong."""
        return parse_eval_sets(self.eval_data)

    def normalization(self) -> TextNormalization:
        """How this run reads transcripts (the split's own settings: train.main checks they agree)."""
        return TextNormalization(self.language, self.fold_accents, self.text_normalization, self.chars_to_ignore)


def parse_train_sets(spec: str) -> list[tuple[str, float | None]]:
    """'dirA=0.7,dirB=0.3' -> [(dirA, 0.7), (dirB, 0.3)]; 'dir' -> [(dir, None)]. A weight follows an entry's last
    '=' (URLs keep their ':'); all entries weighted or none. ValueError naming the bad entry."""
    sets: list[tuple[str, float | None]] = []
    for entry in spec.split(","):
        location, weight = entry.strip(), None
        if "=" in location:
            location, _, text = location.rpartition("=")
            try:
                weight = float(text)
            except ValueError:
                raise ValueError(f"{entry.strip()!r}: the weight after '=' ({text!r}) is not a number") from None
            if not weight > 0 or weight == float("inf"):
                raise ValueError(f"{entry.strip()!r}: weight {text} must be a number > 0")
        if not location:
            raise ValueError(f"{entry.strip()!r}: no location")
        sets.append((location, weight))
    if len({w is None for _, w in sets}) > 1:
        raise ValueError("give every set a weight (dirA=0.7,dirB=0.3) or none (dirA,dirB: --mixing_temperature)")
    if len({loc for loc, _ in sets}) < len(sets):
        raise ValueError("a set is named twice")
    if "demo" in {loc for loc, _ in sets} and len(sets) > 1:
        raise ValueError("'demo' cannot be mixed with other sets")
    return sets


_SET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def set_basename(location: str) -> str:
    """A set's default name: its directory's basename (of the file's directory for a single shard file)."""
    trimmed = location.rstrip("/")
    base = trimmed.rsplit("/", 1)[-1]
    if base.endswith(".parquet"):
        base = trimmed.rsplit("/", 2)[-2] if trimmed.count("/") else "data"
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", base).strip("._") or "data"


def parse_eval_sets(spec: str) -> list[tuple[str, str]]:
    """'en=dirA,fr=dirB' -> [(en, dirA), (fr, dirB)]; 'dirA,dirB' -> their basenames as names; 'dir' -> [(its
    basename, dir)]. An entry is NAME=LOCATION when what precedes its first '=' is a name (letters, digits, _ . -).
    ValueError naming the bad entry or the name given twice."""
    if not spec:
        return []
    sets: list[tuple[str, str]] = []
    for entry in spec.split(","):
        entry = entry.strip()
        name, sep, location = entry.partition("=")
        if not (sep and _SET_NAME.fullmatch(name)):
            name, location = set_basename(entry), entry
        if not location:
            raise ValueError(f"{entry!r}: no location")
        if not _SET_NAME.fullmatch(name):
            raise ValueError(f"{entry!r}: name the set (NAME=LOCATION, NAME of letters, digits, '_', '.', '-')")
        sets.append((name, location))
    names = [n for n, _ in sets]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(f"set name(s) {', '.join(twice)} given twice; name each set: 'en=dirA,fr=dirB'")
    return sets


@dataclass
class TrainConfig:
    """Optimisation, schedule, batch arithmetic, checkpointing; defaults are the seed model card's recipe."""

    output_dir: str = "output"
    """Where the run writes its checkpoints, final/ and best/ models, metrics.jsonl, train_config.json and
    run_info.json."""
    num_train_epochs: float = 30.0
    """Epochs to train when --max_steps is -1: ceil(epochs x steps per epoch) optimizer steps (fractions allowed)."""
    max_steps: int = -1
    """Optimizer steps to run; -1 derives them from --num_train_epochs."""
    learning_rate: float = 1e-4
    """Peak AdamW learning rate: reached after --warmup_steps, then decayed linearly to 0 at the last step, step for
    step transformers' get_linear_schedule_with_warmup (tests/test_engine.py)."""
    warmup_steps: int = 1000
    """Optimizer steps of linear warm-up from 0 to --learning_rate."""
    weight_decay: float = 0.0
    """AdamW's decoupled weight decay, applied to every trained parameter (one parameter group: biases and layer
    norms too); 0 = none."""
    adam_beta1: float = 0.9
    """AdamW's beta1, the decay of the gradient's running mean."""
    adam_beta2: float = 0.999
    """AdamW's beta2, the decay of the squared gradient's running mean."""
    adam_epsilon: float = 1e-8
    """AdamW's epsilon, added to the denominator for numerical stability."""
    max_grad_norm: float = 1.0
    """Clip the global gradient norm to this (DeepSpeed's gradient_clipping); 0 disables clipping."""
    seed: int = 42
    """Seeds the initial weights of a model built from random weights, dropout (seed + rank), the data order,
    SpecAugment masks and layerdrop."""
    global_batch_size: int = REFERENCE_GLOBAL_BATCH
    """Utterances per optimizer step over all ranks; 8 is the reference recipe."""
    per_device_train_batch_size: int = 0
    """Micro-batch per rank; 0 picks min(4, global/world) and derives gradient accumulation."""
    per_device_eval_batch_size: int = 8
    """Utterances per evaluation batch on each rank."""
    logging_steps: int = 25
    """Log loss, learning rate, gradient norm and throughput every this many optimizer steps (and at the last)."""
    eval_steps: int = 500
    """Evaluate (loss, WER, CER on --eval_data) every this many optimizer steps (and at the last)."""
    save_steps: int = 500
    """Save a checkpoint every this many optimizer steps (and at the last)."""
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
    """DeepSpeed JSON config: ds_configs/zero2_fp16.json, zero2_amp.json (the card's Native AMP: fp32 weights,
    autocast fp16, GradScaler), zero2_bf16.json or zero2_fp32.json (see ds_configs/README.md); 'auto' batch/optimizer
    keys are filled from these flags, and a key that disagrees with them is an error
    (tests/test_engine.py)."""
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
    """Turn off rank 0's progress bar (log lines still appear)."""
    torch_compile: bool = False
    """Compile the model with torch.compile through DeepSpeed's engine.compile() (HF's flag), static shapes: each
    training and evaluation batch is padded up to one of a bounded set of lengths (8 per doubling), so only a new
    (batch size, length, train/eval) compiles; the graphs compiled and the new shapes are logged
    (torch_compile_graphs, torch_compile_recompilations, torch_compile_new_shapes). Off by default: on a CPU no faster
    per step than eager and each new length costs seconds to a minute of compiling (docs/speed.md); `make gpu-check`
    measures it on a GPU (tests/test_torch_compile.py)."""
    retain_freed_memory: bool = True
    """Keep the host memory a step frees for the next step (glibc: blocks up to 256 MiB served from the heap, which
    is trimmed only beyond 1 GiB) instead of unmapping it and faulting it back in every step: the tiny model's CPU
    step 4-7 % shorter, RSS stays near its peak (BENCHMARKS.md, "Training speed"). Ignored where the environment sets
    glibc's MALLOC_* thresholds or the C library is not glibc."""


@dataclass
class TrackingConfig:
    """MLflow tracking, done by rank 0 only."""

    report_to: str = "mlflow"
    """Where rank 0 logs params and metrics: 'mlflow' (the tracking server, and metrics.jsonl in --output_dir) or
    'none' (metrics.jsonl only)."""
    tracking_uri: str = ""
    """MLflow tracking server or store the run is logged to. Default: $MLFLOW_TRACKING_URI, else
    sqlite:///mlflow.db in the working directory."""
    experiment_name: str = ""
    """MLflow experiment the run is logged in. Default: $MLFLOW_EXPERIMENT_NAME, else 'xlsr_dist'."""
    run_name: str = ""
    """Name of the MLflow run ('' lets MLflow pick one)."""


@dataclass
class Config:
    """The whole configuration: one section per concern."""

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


SECTIONS: tuple[str, ...] = ("model", "data", "train", "tracking")


def section_classes() -> dict[str, type]:
    """Section name -> its dataclass, in the order of Config's fields."""
    return {f.name: f.default_factory for f in dataclasses.fields(Config)}  # type: ignore[misc]


def flatten(prefix: str, value: Any, out: dict[str, Any]) -> dict[str, Any]:
    """Nested mappings -> dotted keys (deepspeed.zero_optimization.stage), the shape of params and train_config."""
    if isinstance(value, Mapping) and value:
        for k, v in value.items():
            flatten(f"{prefix}.{k}" if prefix else str(k), v, out)
    else:
        out[prefix] = value
    return out


def primary_metric(cfg: Config) -> str:
    """--primary_metric, or its default for the run's language (see TrainConfig.primary_metric)."""
    if cfg.train.primary_metric:
        return cfg.train.primary_metric
    return "eval_wer" if writes_words(cfg.data.language) else "eval_cer"


def best_model_metric(cfg: Config) -> str:
    """--metric_for_best_model, else the run's primary metric: the one metric the console, compare and best/ put
    first."""
    return cfg.train.metric_for_best_model or primary_metric(cfg)

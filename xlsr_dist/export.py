"""A trained run as a Hugging Face model directory with a model card in the seed card's format.

`python -m xlsr_dist.export --output_dir RUN_OUTPUT_DIR [--checkpoint final|best|latest|PATH] --export_dir DIR`
writes model + processor (save_pretrained; `transformers.pipeline("automatic-speech-recognition", model=DIR)`
loads it) and README.md: hyperparameters from <output_dir>/train_config.json, the training results table from
<output_dir>/metrics.jsonl at the evaluation steps, the framework versions actually used. The directory is then
logged to the run's MLflow run (from <output_dir>/run_info.json) when the tracking server can be reached.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from xlsr_dist.config import TrackingConfig
from xlsr_dist.markdown import markdown_table, maybe_round
from xlsr_dist.text import writes_words
from xlsr_dist.tracking import (
    METRICS_FILE,
    RUN_INFO,
    TRAIN_CONFIG,
    open_client,
    read_metrics_jsonl,
    read_run_info,
    redact_text,
    resolve_tracking_uri,
    short_error,
    upload_artifact,
)
from xlsr_dist.training.best_checkpoint import BEST_DIR, read_record
from xlsr_dist.training.best_checkpoint import RECORD as BEST_RECORD

log = logging.getLogger(__name__)

CARD = "README.md"
ARTIFACT_PATH = "exported_model"
RESULTS_HEADER = ("Training Loss", "Epoch", "Step", "Validation Loss", "Wer")
FRAMEWORKS = (
    ("Transformers", "transformers"),
    ("Pytorch", "torch"),
    ("Datasets", "datasets"),
    ("Tokenizers", "tokenizers"),
    ("DeepSpeed", "deepspeed"),
)


class ExportError(RuntimeError):
    pass


def _latest_at_or_before(series: dict[int, float], step: int, after: int = -1) -> float | None:
    candidates = [s for s in series if after < s <= step]
    return series[max(candidates)] if candidates else None


def results_rows(
    metrics: dict[str, dict[int, float]], steps_per_epoch: float | None, max_step: int | None = None
) -> list[tuple[Any, ...]]:
    """One row per evaluation step: training loss (last logged since the previous evaluation, else 'No log' as
    HF writes), epoch, step, validation loss, WER."""
    eval_loss = metrics.get("eval_loss", {})
    eval_wer = metrics.get("eval_wer", {})
    steps = sorted(s for s in set(eval_loss) | set(eval_wer) if max_step is None or s <= max_step)
    rows: list[tuple[Any, ...]] = []
    previous = -1
    for step in steps:
        loss = _latest_at_or_before(metrics.get("loss", {}), step, previous)
        epoch = _latest_at_or_before(metrics.get("epoch", {}), step)
        if epoch is None and steps_per_epoch:
            epoch = step / steps_per_epoch
        rows.append(
            (
                "No log" if loss is None else round(loss, 4),
                "-" if epoch is None else round(epoch, 2),
                step,
                "-" if step not in eval_loss else round(eval_loss[step], 4),
                "-" if step not in eval_wer else round(eval_wer[step], 4),
            )
        )
        previous = step
    return rows


def _get(cfg: dict[str, Any], *names: str, default: Any = None) -> Any:
    for name in names:
        if name in cfg and cfg[name] not in (None, "", "auto"):
            return cfg[name]
    return default


def _num(value: Any) -> Any:
    """'0.0001' -> 0.0001, '8' -> 8, so the card prints numbers the way HF does."""
    if isinstance(value, str):
        try:
            f = float(value)
        except ValueError:
            return value
        return int(f) if f.is_integer() and "." not in value and "e" not in value.lower() else f
    return value


def hyperparameters(cfg: dict[str, Any]) -> list[tuple[str, Any]]:
    """The card's 'Training hyperparameters' list (HF Trainer names) from train_config.json."""
    world = int(_num(_get(cfg, "world_size", default=1)))
    micro = _num(_get(cfg, "micro_batch", "deepspeed.train_micro_batch_size_per_gpu", "per_device_train_batch_size"))
    accum = int(_num(_get(cfg, "grad_accum", "deepspeed.gradient_accumulation_steps", default=1)))
    total = _num(_get(cfg, "global_batch_size", "deepspeed.train_batch_size"))
    eval_bs = _num(_get(cfg, "per_device_eval_batch_size"))
    items: list[tuple[str, Any]] = [
        ("learning_rate", _num(_get(cfg, "learning_rate", "deepspeed.optimizer.params.lr"))),
        ("train_batch_size", micro),
        ("eval_batch_size", eval_bs),
        ("seed", _num(_get(cfg, "seed"))),
    ]
    if world > 1:
        items += [("distributed_type", "multi-GPU"), ("num_devices", world)]
    if accum > 1:
        items.append(("gradient_accumulation_steps", accum))
    if world > 1 or accum > 1:
        items.append(("total_train_batch_size", total))
        if eval_bs is not None and world > 1:
            items.append(("total_eval_batch_size", int(eval_bs) * world))
    beta1 = _num(_get(cfg, "adam_beta1", default=0.9))
    beta2 = _num(_get(cfg, "adam_beta2", default=0.999))
    eps = _num(_get(cfg, "adam_epsilon", default=1e-8))
    opt = str(_get(cfg, "deepspeed.optimizer.type", default="Adam"))
    items.append(("optimizer", f"{opt} with betas=({beta1},{beta2}) and epsilon={eps}"))
    weight_decay = _num(_get(cfg, "weight_decay", default=0))
    if weight_decay:
        items.append(("weight_decay", weight_decay))
    items += [("lr_scheduler_type", "linear"), ("lr_scheduler_warmup_steps", _num(_get(cfg, "warmup_steps")))]
    max_steps = int(_num(_get(cfg, "max_steps", default=-1)))
    if max_steps > 0:
        items.append(("training_steps", max_steps))
    else:
        items.append(("num_epochs", _num(_get(cfg, "num_train_epochs"))))
    precision = str(_get(cfg, "precision", default=""))
    if precision == "amp":
        items.append(("mixed_precision_training", "Native AMP (torch autocast fp16 + GradScaler, DeepSpeed ZeRO-2)"))
    elif precision in ("fp16", "bf16"):
        items.append(
            (
                "mixed_precision_training",
                f"DeepSpeed {precision} (ZeRO stage {_get(cfg, 'deepspeed.zero_optimization.stage', default='?')})",
            )
        )
    return [(k, v) for k, v in items if v is not None]


def framework_versions() -> list[tuple[str, str]]:
    out = []
    for label, dist in FRAMEWORKS:
        try:
            out.append((label, metadata.version(dist)))
        except metadata.PackageNotFoundError:
            continue
    return out


def _origin(cfg: dict[str, Any], dataset: str) -> str:
    """The card's first sentence: fine-tuned from which checkpoint, or trained from random weights."""
    base = str(_get(cfg, "model_name_or_path", default="facebook/wav2vec2-large-xlsr-53"))
    architecture = str(_get(cfg, "architecture", default=""))
    if architecture:
        return (
            f"This model was trained from randomly initialised weights (xlsr_dist architecture "
            f"'{architecture}') on the {dataset} dataset."
        )
    return f"This model is a fine-tuned version of [{base}](https://huggingface.co/{base}) on the {dataset} dataset."


def _final_results(
    rows: list[tuple[Any, ...]], metrics: dict[str, dict[int, float]], primary: str, language: str
) -> list[str]:
    """The last evaluation's loss, WER and CER (the primary metric first), as the seed card lists them."""
    final_eval = [r for r in rows if r[3] != "-" or r[4] != "-"]
    if not final_eval:
        return []
    last = final_eval[-1]
    lines = ["It achieves the following results on the evaluation set:"]
    results = [f"- Loss: {maybe_round(last[3])}", f"- Wer: {maybe_round(last[4])}"]
    cer = metrics.get("eval_cer", {}).get(int(last[2]))
    if cer is not None:
        cer_line = f"- Cer: {maybe_round(round(cer, 4))}"
        results = [cer_line, *results] if primary == "eval_cer" else [*results, cer_line]
    lines += results
    if not writes_words(language):
        lines.append(
            f"The language ({language}) is written without spaces between words: the character error rate is "
            "the measure that counts, the word error rate only counts the text's chance spaces."
        )
    return lines


def model_card(
    name: str, cfg: dict[str, Any], metrics: dict[str, dict[int, float]], max_step: int | None = None
) -> str:
    """README.md in the seed model card's layout, filled from this run."""
    steps_per_epoch = _num(_get(cfg, "steps_per_epoch"))
    rows = results_rows(metrics, float(steps_per_epoch) if steps_per_epoch else None, max_step)
    dataset = str(_get(cfg, "train_data", default="None"))
    origin = _origin(cfg, dataset)
    language = str(_get(cfg, "language", default="en"))  # runs from before --language were English
    primary = str(_get(cfg, "primary_metric", default="eval_wer" if writes_words(language) else "eval_cer"))
    lines = [
        "---",
        f"language: {language}",
        "license: apache-2.0",
        "tags:",
        "- automatic-speech-recognition",
        "- generated_from_xlsr_dist",
        "model-index:",
        f"- name: {name}",
        "  results: []",
        "---",
        "",
        "<!-- This model card has been generated automatically by xlsr_dist.export from the training run's "
        "config and metrics. You",
        "should probably proofread and complete it, then remove this comment. -->",
        "",
        f"# {name}",
        "",
        origin,
    ]
    lines += _final_results(rows, metrics, primary, language)
    eval_data = _get(cfg, "eval_data", default="")
    data_line = f"Training data: {dataset}" + (f"; evaluation data: {eval_data}." if eval_data else ".")
    data_line += f" Language: {language} (ISO 639 code)."
    if _get(cfg, "num_train_utterances") is not None:
        data_line += f" {_get(cfg, 'num_train_utterances')} training utterances."
    lines += [
        "",
        "## Model description",
        "",
        "More information needed",
        "",
        "## Intended uses & limitations",
        "",
        "More information needed",
        "",
        "## Training and evaluation data",
        "",
        data_line,
        "",
        "## Training procedure",
        "",
        "### Training hyperparameters",
        "",
        "The following hyperparameters were used during training:",
    ]
    lines += [f"- {k}: {v}" for k, v in hyperparameters(cfg)]
    lines += [
        "",
        "### Training results",
        "",
        markdown_table(RESULTS_HEADER, rows) if rows else "No evaluation was logged.\n",
        "",
        "### Framework versions",
        "",
    ]
    lines += [f"- {label} {version}" for label, version in framework_versions()]
    return redact_text("\n".join(lines) + "\n")


def resolve_checkpoint(output_dir: Path, checkpoint: str) -> str:
    """--checkpoint as a path ('' for final/): 'final' -> '', 'latest' -> the newest complete checkpoint, 'best' ->
    best/ (written at the end of training), else the checkpoint best.json names (a run not finished yet)."""
    # Here, not at the top: run_dir imports torch, which writing a card or --help does not need.
    from xlsr_dist.run_dir import newest_complete

    if checkpoint in ("", "final"):
        return ""
    if checkpoint == "latest":
        newest = newest_complete(output_dir)
        if newest is None:
            raise ExportError(f"--checkpoint latest: no complete checkpoint under {output_dir}")
        return str(newest)
    if checkpoint == BEST_DIR:
        if (output_dir / BEST_DIR / "config.json").is_file():
            return str(output_dir / BEST_DIR)
        record = read_record(output_dir)
        if record is None or not (output_dir / str(record["checkpoint"])).is_dir():
            raise ExportError(
                f"--checkpoint best: {output_dir} has neither {BEST_DIR}/ nor a best checkpoint named in {BEST_RECORD} "
                "(the best is chosen at steps with both an evaluation and a save)"
            )
        return str(output_dir / str(record["checkpoint"]))
    return checkpoint


def load_model(output_dir: Path, checkpoint: str) -> tuple[Any, Any, int | None]:
    """(model, processor, step the weights come from or None for final/)."""
    # Here, not at the top: transformers takes seconds, which writing a card or --help does not need.
    from xlsr_dist.model import load_hf_model
    from xlsr_dist.run_dir import FINAL, model_step, newest_complete, tag_step

    checkpoint = resolve_checkpoint(output_dir, checkpoint)
    source = Path(checkpoint) if checkpoint else output_dir
    if not source.exists():
        raise ExportError(
            f"--checkpoint {source}: no such directory" if checkpoint else f"--output_dir {source}: no such directory"
        )
    model, processor = load_hf_model(source)
    if checkpoint:
        step = tag_step(source)
        if step is None:  # best/ (or final/ with --load_best_model_at_end) names the step its weights come from
            step = model_step(source)
    elif (output_dir / FINAL / "config.json").is_file():
        step = model_step(output_dir / FINAL)
    else:
        newest = newest_complete(output_dir)
        step = tag_step(newest) if newest is not None else None
    return model, processor, step


def export(
    output_dir: str | Path, export_dir: str | Path, checkpoint: str = "", name: str = "", lm_dir: str = ""
) -> Path:
    """Write the HF model directory with its card (and the LM at ``lm_dir``, decoding/lm_export.py); returns
    export_dir. Raises LMError before writing anything when the LM is missing or does not fit the model."""
    out = Path(output_dir)
    dest = Path(export_dir)
    cfg_path = out / TRAIN_CONFIG
    cfg: dict[str, Any] = json.loads(cfg_path.read_text()) if cfg_path.is_file() else {}
    if not cfg:
        log.warning("%s missing: the card's hyperparameters will be incomplete", cfg_path)
    model, processor, step = load_model(out, checkpoint)
    lm = None
    if lm_dir:
        from xlsr_dist.decoding import lm_export
        from xlsr_dist.text import inverse

        vocab = processor.tokenizer.get_vocab()
        labels = inverse({t: i for t, i in vocab.items() if i < int(model.config.vocab_size)})
        lm = lm_export.checked(lm_dir, labels)
    dest.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(dest)
    processor.save_pretrained(dest)
    metrics = read_metrics_jsonl(out / METRICS_FILE)
    if not metrics:
        log.warning("%s missing or empty: the card's results table will be empty", out / METRICS_FILE)
    card = model_card(name or dest.resolve().name, cfg, metrics, step)
    if lm is not None:
        lm_export.write_into(lm, dest, labels)
        card = card.rstrip("\n") + "\n" + "\n".join(lm_export.card_lines(lm)) + "\n"
    (dest / CARD).write_text(card)
    return dest


def log_to_mlflow(output_dir: Path, export_dir: Path, tracking_uri: str = "") -> str | None:
    """Log export_dir to the run in run_info.json; returns the run id, or None (with a message) when not possible."""
    info = read_run_info(output_dir)
    if info is None:
        print(f"not logged to MLflow: {output_dir / RUN_INFO} not found (was tracking on?)")
        return None
    uri = resolve_tracking_uri(TrackingConfig(tracking_uri=tracking_uri), recorded=info.get("tracking_uri", ""))
    if not uri:
        print("not logged to MLflow: no tracking URI (pass --tracking_uri)")
        return None
    try:
        client = open_client(uri, max_retries=1, timeout_s=60)
        upload_artifact(client, info["run_id"], export_dir, ARTIFACT_PATH)
    except Exception as exc:  # noqa: BLE001 - the export itself is done; MLflow is a bonus
        print(f"not logged to MLflow at {redact_text(uri)}: {short_error(exc)}")
        return None
    print(f"logged to MLflow run {info['run_id']} under {ARTIFACT_PATH}/")
    return str(info["run_id"])


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m xlsr_dist.export",
        description="Export a training run as a Hugging Face model with a model card.",
    )
    parser.add_argument("--output_dir", required=True, help="the training run's --output_dir")
    parser.add_argument(
        "--checkpoint",
        default="",
        help="final (default: <output_dir>/final, else its newest complete checkpoint), best (<output_dir>/best, "
        "the checkpoint with the best --metric_for_best_model), latest (the newest complete checkpoint) or a "
        "checkpoint directory",
    )
    parser.add_argument("--export_dir", required=True, help="where to write the model directory")
    parser.add_argument("--model_name", default="", help="name in the card (default: the export dir's name)")
    parser.add_argument(
        "--tracking_uri", default="", help="default: the one in <output_dir>/run_info.json, else $MLFLOW_TRACKING_URI"
    )
    parser.add_argument("--no_mlflow", action="store_true", help="do not log the export to MLflow")
    parser.add_argument("--lm", default="", help="an LM directory (python -m xlsr_dist.lm build) to ship with it")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from xlsr_dist.decoding.lm_build import LMError
    from xlsr_dist.state_files import CheckpointError

    try:
        dest = export(args.output_dir, args.export_dir, args.checkpoint, args.model_name, args.lm)
    except (ExportError, CheckpointError, LMError) as exc:
        print(f"xlsr_dist.export: {exc}", file=sys.stderr)
        sys.exit(2)
    print(f"exported to {dest} (model, processor, {CARD})")
    if not args.no_mlflow:
        log_to_mlflow(Path(args.output_dir), dest, args.tracking_uri)


if __name__ == "__main__":
    main()

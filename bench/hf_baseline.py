"""The baseline of bench/train_speed.py: HF's run_speech_recognition_ctc.py training path on xlsr_dist's shards.

One rank per process, started like xlsr_dist's ranks (RANK/WORLD_SIZE/LOCAL_RANK/MASTER_* in the environment):

    python bench/hf_baseline.py --train_data DIR --architecture tiny --deepspeed ds_configs/zero2_fp32.json \
        --per_device_train_batch_size 4 --gradient_accumulation_steps 2 --max_steps 30 --output_dir OUT

What it does, as the example does it:
  load_dataset("parquet") over the shards -> .map(prepare_dataset) (decode, Wav2Vec2FeatureExtractor, tokenizer;
  decoded with soundfile because datasets 5 decodes Audio only through torchcodec) -> .filter(length range), under
  main_process_first -> Trainer(args=TrainingArguments(deepspeed=<the same JSON as a dict>, ...),
  data_collator=DataCollatorCTCWithPadding, train_dataset=...) -> trainer.train().
Where it differs from the example, and why:
  - the model is xlsr_dist.model.build_model (same constructor, same seed, so the same initial weights; the example
    calls from_pretrained) and the vocabulary is xlsr_dist.text.build_vocab over the same transcripts (the example's
    extract_all_chars gives the same characters; the head must have the same size on both sides);
  - on CPU it passes use_cpu=True (the --use_cpu a CPU user passes). Without it accelerate sees a CPU DeepSpeed run
    as ONE process: TrainingArguments.world_size is 1, HF fills train_batch_size "auto" with 4 x 1 x 1 and DeepSpeed
    asserts at world size 2 (4 != 4 x 1 x 2); with train_batch_size left out it runs, but every rank then trains on
    the same batches (seen: identical utterance ids on both ranks), i.e. a global batch of 4 distinct utterances.
    With use_cpu=True, world_size is 2, the DeepSpeed JSON is used unchanged ("auto" -> 8) and the ranks split data;
  - the collator also records each micro-batch's utterance ids and sizes, so the "id" column is kept and
    remove_unused_columns is off (the collator builds the model inputs from input_values and labels only, as the
    example's does; Trainer would otherwise drop "id" before the collator);
  - a TrainerCallback records the time at on_step_begin (batches fetched) and on_step_end (see bench/_record.py).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
from _record import RECORD_ENV, StepRecorder  # noqa: E402

from xlsr_dist.audio import SAMPLE_RATE, decode_bytes  # noqa: E402


def precision_of(ds: dict[str, Any]) -> str:
    if ds.get("fp16", {}).get("enabled") is True:
        return "fp16"
    if ds.get("bf16", {}).get("enabled") is True:
        return "bf16"
    return "fp32"


@dataclass
class DataCollatorCTCWithPadding:
    """run_speech_recognition_ctc.py's collator (pads inputs with the feature extractor, labels with -100), plus the
    benchmark's record of what each micro-batch held."""

    processor: Any
    recorder: StepRecorder | None = None
    gradient_accumulation_steps: int = 1
    padding: bool | str = "longest"
    pad_to_multiple_of: int | None = None
    pad_to_multiple_of_labels: int | None = None
    feature_extractor_input_name: str = "input_values"
    calls: int = 0

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        if self.recorder is not None:
            # DataLoader with num_workers=0: the k-th call is the k-th micro-batch this rank trains on.
            lengths = [len(f[self.feature_extractor_input_name]) for f in features]
            self.recorder.add_micro(
                self.calls // self.gradient_accumulation_steps,
                [f["id"] for f in features],
                sum(lengths),
                len(features),
                max(lengths),
                max(len(f["labels"]) for f in features),
            )
        self.calls += 1
        input_features = [{self.feature_extractor_input_name: f[self.feature_extractor_input_name]} for f in features]
        label_features = [{"input_ids": f["labels"]} for f in features]
        batch = self.processor.pad(
            input_features, padding=self.padding, pad_to_multiple_of=self.pad_to_multiple_of, return_tensors="pt"
        )
        labels_batch = self.processor.pad(
            labels=label_features,
            padding=self.padding,
            pad_to_multiple_of=self.pad_to_multiple_of_labels,
            return_tensors="pt",
        )
        labels = labels_batch["input_ids"].masked_fill(labels_batch.attention_mask.ne(1), -100)
        batch["labels"] = labels
        if "attention_mask" in batch:
            batch["attention_mask"] = batch["attention_mask"].to(torch.long)
        return batch


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python bench/hf_baseline.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--train_data", required=True, help="directory of xlsr_dist Parquet shards")
    p.add_argument("--architecture", default="tiny", choices=["tiny", "xlsr-53"])
    p.add_argument("--deepspeed", required=True, help="DeepSpeed JSON (the same file xlsr_dist is given)")
    p.add_argument("--per_device_train_batch_size", type=int, required=True)
    p.add_argument("--gradient_accumulation_steps", type=int, required=True)
    p.add_argument("--learning_rate", type=float, default=1e-4)
    p.add_argument("--warmup_steps", type=int, default=0)
    p.add_argument("--max_steps", type=int, required=True)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument(
        "--train_sampling_strategy",
        default="random",
        choices=["random", "group_by_length"],
        help="TrainingArguments' sampler (v5 name of --group_by_length); default random as in HF",
    )
    p.add_argument("--min_duration_in_seconds", type=float, default=0.0)
    p.add_argument("--max_duration_in_seconds", type=float, default=20.0)
    p.add_argument("--preprocessing_num_workers", type=int, default=0)
    p.add_argument("--dataloader_num_workers", type=int, default=0)
    p.add_argument("--freeze_feature_encoder", default="true")
    p.add_argument("--mask_time_prob", type=float, default=0.05)
    p.add_argument("--cache_dir", default="", help="datasets cache (default: <output_dir>/hf_cache)")
    p.add_argument(
        "--use_cpu",
        action="store_true",
        help="TrainingArguments(use_cpu=True): needed for a multi-rank CPU run (see the module docstring)",
    )
    p.add_argument("--output_dir", required=True)
    p.add_argument(
        "--record", default=os.environ.get(RECORD_ENV, ""), help=f"per-rank timing record (JSON); default ${RECORD_ENV}"
    )
    args = p.parse_args(argv)
    if args.record and args.dataloader_num_workers != 0:
        p.error(
            "--dataloader_num_workers: the timing record is kept by the collator, so it needs 0 workers "
            "(TrainingArguments' default)"
        )
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    import datasets
    from transformers import Trainer, TrainerCallback, TrainingArguments, set_seed

    from xlsr_dist import text
    from xlsr_dist.config import ModelConfig
    from xlsr_dist.data import shards
    from xlsr_dist.model import build_model, build_processor

    datasets.disable_progress_bars()
    recorder = StepRecorder(args.record, "hf") if args.record else None
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    raw_ds = json.loads(Path(args.deepspeed).read_text())
    ds_config = copy.deepcopy(raw_ds)
    prec = precision_of(ds_config)

    if args.use_cpu:
        # DeepSpeed's CPU comm layer would JIT-compile its shared-memory all-reduce when TrainingArguments starts the
        # process group: ~25 s of C++ on two cores whenever the torch_extensions cache misses (a fresh machine,
        # another venv path). Training never uses it (ZeRO reduces through torch.distributed; xlsr_dist.world skips
        # it the same way) and start-up is outside the timed steps, so the figures are unchanged.
        import deepspeed.ops

        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False

    training_args = TrainingArguments(
        output_dir=str(output_dir),
        per_device_train_batch_size=args.per_device_train_batch_size,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        learning_rate=args.learning_rate,
        warmup_steps=args.warmup_steps,
        max_steps=args.max_steps,
        seed=args.seed,
        deepspeed=ds_config,
        fp16=prec == "fp16",
        bf16=prec == "bf16",
        train_sampling_strategy=args.train_sampling_strategy,
        length_column_name="input_length",
        dataloader_num_workers=args.dataloader_num_workers,
        remove_unused_columns=False,
        # Same logging cadence as xlsr_dist's side of the benchmark: once, at the end.
        logging_steps=args.max_steps,
        save_strategy="no",
        eval_strategy="no",
        report_to="none",
        disable_tqdm=True,
        use_cpu=args.use_cpu,
    )

    shard_files = shards.list_shards(args.train_data)
    vocab_dir = output_dir / "vocab"
    vocab_dir.mkdir(exist_ok=True)
    meta = shards.read_metadata(shard_files)
    vocab = text.build_vocab(text.normalize(t) for t in meta.column("text").to_pylist())
    text.save_vocab(vocab, vocab_dir / "vocab.json")
    processor = build_processor(vocab_dir / "vocab.json")
    feature_extractor, tokenizer = processor.feature_extractor, processor.tokenizer

    cache_dir = args.cache_dir or str(output_dir / "hf_cache")
    raw = datasets.load_dataset("parquet", data_files={"train": shard_files}, cache_dir=cache_dir)["train"]

    def prepare_dataset(batch: dict[str, Any]) -> dict[str, Any]:
        wave = decode_bytes(batch["audio"])
        inputs = feature_extractor(wave, sampling_rate=SAMPLE_RATE)
        batch["input_values"] = inputs.input_values[0]
        batch["input_length"] = len(batch["input_values"])
        batch["labels"] = tokenizer(text.normalize(batch["text"])).input_ids
        return batch

    min_len = int(args.min_duration_in_seconds * SAMPLE_RATE)
    max_len = int(args.max_duration_in_seconds * SAMPLE_RATE)

    def is_audio_in_length_range(length: int) -> bool:
        return min_len < length < max_len

    preprocess_started = time.perf_counter()
    with training_args.main_process_first(desc="dataset map preprocessing"):
        vectorized = raw.map(
            prepare_dataset,
            remove_columns=[c for c in raw.column_names if c != "id"],
            num_proc=args.preprocessing_num_workers or None,
            desc="preprocess train dataset",
        )
        vectorized = vectorized.filter(
            is_audio_in_length_range, input_columns=["input_length"], num_proc=args.preprocessing_num_workers or None
        )
    preprocess_s = time.perf_counter() - preprocess_started

    set_seed(args.seed)
    model_cfg = ModelConfig(
        architecture=args.architecture,
        mask_time_prob=args.mask_time_prob,
        freeze_feature_encoder=args.freeze_feature_encoder.lower() in ("1", "true", "yes"),
    )
    model = build_model(model_cfg, vocab_size=len(vocab), pad_token_id=vocab[text.PAD])

    collator = DataCollatorCTCWithPadding(
        processor=processor, recorder=recorder, gradient_accumulation_steps=args.gradient_accumulation_steps
    )

    class StepTimes(TrainerCallback):
        def on_train_begin(self, _args: Any, state: Any, control: Any, **kw: Any) -> None:
            if recorder is not None:
                recorder.start_memory_window(training_args.device)
                recorder.boundary()  # before the first batch is fetched

        def on_step_begin(self, _args: Any, state: Any, control: Any, **kw: Any) -> None:
            if recorder is not None:
                recorder.batches_ready()  # Trainer fetched and collated this step's micro-batches just before

        def on_step_end(self, _args: Any, state: Any, control: Any, **kw: Any) -> None:
            if recorder is not None:
                recorder.boundary(last=state.global_step >= state.max_steps)

    trainer = Trainer(
        model=model,
        data_collator=collator,
        args=training_args,
        train_dataset=vectorized,
        processing_class=processor,
        callbacks=[StepTimes()],
    )
    trainer.train()
    if recorder is not None:
        recorder.extra.update(
            hf_world_size=training_args.world_size,
            accelerate_processes=trainer.accelerator.num_processes,
            deepspeed_train_batch_size=int(trainer.model_wrapped.train_batch_size()),
            precision=prec,
            preprocess_s=preprocess_s,
            preprocess_utterances=len(raw),
        )
        recorder.write(training_args.device)
    if torch.distributed.is_initialized():
        # Left to interpreter exit, gloo's threads sometimes abort a rank ("terminate called without an active
        # exception", exit -6) after training has finished.
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    code = main()
    # Even after the process group is gone, interpreter shutdown can abort in a C++ thread's destructor ("terminate
    # called without an active exception", exit -6: gloo's, DeepSpeed's or a DataLoader's threads). The record is
    # written and nothing else is owed, so the rank leaves without finalizers; bench/train_speed.py would report
    # such an abort but count the run.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)

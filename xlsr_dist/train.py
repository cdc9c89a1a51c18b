"""Entry point: `deepspeed --num_gpus N -m xlsr_dist.train`, `torchrun --nproc_per_node N -m xlsr_dist.train`,
`srun python -m xlsr_dist.train` or plain `python -m xlsr_dist.train` (one rank).

main() parses and checks everything before any process group starts; train() is the loop, read top to bottom:
train_step -> maybe_log -> maybe_eval -> maybe_save. Every rank runs every collective (the per-step stop vote, eval,
save); only the sinks (console, MLflow) differ by rank, and they were chosen once.
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# `python -m xlsr_dist.train`: catch SIGUSR1/SIGTERM before the imports below (seconds), whose default action would
# kill a rank signalled while it loads; StopRequest picks up what arrived meanwhile. (Hence the imports below the
# handler: E402 is deliberate here and only here.)
_EARLY_STOP: list[str] = []
if __name__ == "__main__":
    for _sig in (signal.SIGUSR1, signal.SIGTERM):
        signal.signal(_sig, lambda signum, _frame: _EARLY_STOP.append(signal.Signals(signum).name))

import torch  # noqa: E402

from xlsr_dist import checkpoint, ctc, text, tracking  # noqa: E402
from xlsr_dist import engine as engine_mod  # noqa: E402
from xlsr_dist import world as world_mod  # noqa: E402
from xlsr_dist.config import BatchPlan, Config, ConfigError, parse_args, plan_batches  # noqa: E402
from xlsr_dist.world import World  # noqa: E402

log = logging.getLogger("xlsr_dist")

# Exit status after a requested stop (SIGUSR1/SIGTERM) that saved a checkpoint: EX_TEMPFAIL, "try again".
# slurm/train.sbatch requeues the job on it; any other non-zero status is a real failure.
EXIT_PREEMPTED = 75


class StopRequest:
    """Set by SIGUSR1/SIGTERM on any rank; ranks agree on it through the per-step vote."""

    def __init__(self) -> None:
        self.signal_name = _EARLY_STOP[-1] if _EARLY_STOP else ""

    def install(self) -> None:
        for sig in (signal.SIGUSR1, signal.SIGTERM):
            signal.signal(sig, self._handler)

    def _handler(self, signum: int, _frame: Any) -> None:
        self.signal_name = signal.Signals(signum).name

    @property
    def requested(self) -> bool:
        return bool(self.signal_name)


@dataclass
class Window:
    """What accumulates between two log lines, kept on-device so no step waits on the host."""

    loss_sum: torch.Tensor
    steps: int = 0
    audio_seconds: float = 0.0
    started: float = field(default_factory=time.perf_counter)

    @staticmethod
    def fresh(device: torch.device) -> Window:
        return Window(loss_sum=torch.zeros((), dtype=torch.float64, device=device))


class NonFiniteLoss(RuntimeError):
    pass


def setup_console(world: World) -> None:
    level = logging.INFO if world.is_main else logging.WARNING
    fmt = (
        "%(asctime)s %(levelname)s %(message)s"
        if world.is_main
        else f"%(asctime)s rank {world.rank} %(levelname)s %(message)s"
    )
    logging.basicConfig(level=level, format=fmt, stream=sys.stderr, force=True)
    log.setLevel(level)
    # DeepSpeed and transformers are chatty at INFO on every rank; their warnings still show.
    for name in ("DeepSpeed", "deepspeed", "transformers", "torch.distributed"):
        logging.getLogger(name).setLevel(logging.WARNING)


def resolve_data(cfg: Config, world: World) -> tuple[str, str]:
    """Shard locations for train and eval; the demo corpus is generated once per node, then shared."""
    if cfg.data.train_data != "demo":
        return cfg.data.train_data, cfg.data.eval_data
    from xlsr_dist.data import demo

    root = Path(cfg.data.data_cache_dir) if cfg.data.data_cache_dir else demo.default_cache_dir()
    if world.is_local_main:
        demo.ensure_demo_corpus(root, n_train=cfg.data.demo_train_utterances, n_eval=cfg.data.demo_eval_utterances)
    world_mod.barrier()
    train_dir, eval_dir = demo.ensure_demo_corpus(
        root, n_train=cfg.data.demo_train_utterances, n_eval=cfg.data.demo_eval_utterances
    )
    return str(train_dir), (cfg.data.eval_data or str(eval_dir))


def load_or_build_vocab(cfg: Config, train_location: str, output_dir: Path, resuming: bool) -> dict[str, int]:
    """The training transcripts' characters; a resumed run reuses the saved vocabulary so the head keeps its meaning."""
    saved = output_dir / checkpoint.MODEL_CONFIG / "vocab.json"
    if resuming and saved.is_file():
        return text.load_vocab(saved)
    from xlsr_dist.data import shards

    meta = shards.read_metadata(shards.list_shards(train_location))
    return text.build_vocab(text.normalize(t) for t in meta.column("text").to_pylist())


def save_model_config(model: Any, vocab: dict[str, int], output_dir: Path) -> None:
    from xlsr_dist.model import build_processor

    target = output_dir / checkpoint.MODEL_CONFIG
    target.mkdir(parents=True, exist_ok=True)
    text.save_vocab(vocab, target / "vocab.json")
    build_processor(str(target / "vocab.json")).save_pretrained(target)
    model.config.save_pretrained(target)


def train_step(
    engine: Any,
    micro_batches: Sequence[dict[str, Any]],
    device: torch.device,
    dtype: torch.dtype,
    blank_id: int,
    zero_infinity: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimizer step over grad_accum micro-batches.

    Returns (mean loss, any non-finite valid item) as device tensors: nothing here waits for the accelerator.
    Each batch gets a "nonfinite" mask so ids can be named later, only if the step's vote says something went wrong.
    """
    step_loss = torch.zeros((), dtype=torch.float64, device=device)
    nonfinite = torch.zeros((), dtype=torch.bool, device=device)
    for batch in micro_batches:
        mask = batch["attention_mask"].to(device, non_blocking=True)
        logits = engine(
            input_values=batch["input_values"].to(device, dtype, non_blocking=True), attention_mask=mask
        ).logits
        losses = ctc.per_utterance_loss(
            logits,
            ctc.frame_lengths(engine.module, mask),
            batch["labels"].to(device, non_blocking=True),
            blank_id,
            zero_infinity,
        )
        valid = batch["valid"].to(device)
        loss = ctc.batch_loss(losses, valid)
        engine.backward(loss)
        engine.step()
        step_loss += loss.detach().double()
        batch["nonfinite"] = ~torch.isfinite(losses.detach()) & valid
        nonfinite |= batch["nonfinite"].any()
    return step_loss / len(micro_batches), nonfinite


def nonfinite_ids(micro_batches: Sequence[dict[str, Any]]) -> list[str]:
    return [uid for b in micro_batches for uid, bad in zip(b["ids"], b["nonfinite"].tolist()) if bad]


def train(
    cfg: Config,
    world: World,
    plan: BatchPlan,
    device: torch.device,
    ds_config: dict[str, Any],
    stop: StopRequest | None = None,
) -> int:
    from transformers import set_seed

    from xlsr_dist import evaluate as evaluate_mod
    from xlsr_dist.data.stream import DataState, EvalStream, TrainStream
    from xlsr_dist.model import build_model, output_frames

    t = cfg.train
    output_dir = Path(t.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    resume_from = checkpoint.resolve_resume(t.resume_from_checkpoint, output_dir)
    train_location, eval_location = resolve_data(cfg, world)

    vocab = load_or_build_vocab(cfg, train_location, output_dir, resuming=resume_from is not None)
    blank_id = vocab[text.PAD]
    inverse_vocab = text.inverse(vocab)
    # Same seed on every rank for the initial weights (DeepSpeed also broadcasts rank 0's), then per-rank streams.
    set_seed(t.seed)
    model = build_model(cfg.model, vocab_size=len(vocab), pad_token_id=blank_id)
    set_seed(t.seed + world.rank)

    def frames_fn(num_samples: int) -> int:
        return output_frames(model.config, num_samples)

    train_stream = TrainStream(train_location, world, plan, t.seed, vocab, cfg.data, frames_fn)
    eval_stream = EvalStream(
        eval_location, world, t.per_device_eval_batch_size, vocab, cfg.data, frames_fn, cfg.data.eval_max_utterances
    )
    total_steps = t.max_steps if t.max_steps > 0 else math.ceil(t.num_train_epochs * train_stream.steps_per_epoch)
    log.info("data: %s", train_stream.describe())
    for item in train_stream.report[:20]:
        log.info("skipped %s: %s", item["id"], item["reason"])

    engine = engine_mod.initialize(model, ds_config, t.warmup_steps, total_steps)
    dtype = engine_mod.torch_dtype(ds_config)
    prec = engine_mod.precision(ds_config)

    step, state, run_id = 0, train_stream.initial_state(), None
    if resume_from is not None:
        client = checkpoint.load(engine, resume_from)
        step, run_id = int(client["step"]), client.get("mlflow_run_id")
        state = DataState.from_dict(client["data_state"])
        log.info(
            "resumed from %s at step %d (epoch %d, batch %d of the epoch)",
            resume_from,
            step,
            state.epoch,
            state.step_in_epoch,
        )
    elif world.is_main:
        save_model_config(model, vocab, output_dir)
    world_mod.barrier()

    params = {
        **cfg.flat(),
        **tracking.flatten("deepspeed", ds_config, {}),
        "world_size": world.world_size,
        "micro_batch": plan.micro_batch,
        "grad_accum": plan.grad_accum,
        "precision": prec,
        "num_train_utterances": train_stream.num_samples,
        "steps_per_epoch": train_stream.steps_per_epoch,
        "total_steps": total_steps,
        "num_parameters": sum(p.numel() for p in model.parameters()),
    }
    if world.is_main:
        (output_dir / "train_config.json").write_text(json.dumps(params, indent=1, default=str))
    tracker = tracking.build_tracker(world, cfg.tracking, str(output_dir))
    run_id = tracker.start(
        params, {"xlsr_dist.kind": "training", "xlsr_dist.output_dir": str(output_dir.resolve())}, resume_run_id=run_id
    )

    # main() installed it before loading anything; installed again in case a library replaced the handlers since.
    stop = stop if stop is not None else StopRequest()
    stop.install()
    progress = _progress(world, t.disable_tqdm, step, total_steps)
    window = Window.fresh(device)
    consecutive_skips, last_eval_step, last_save_step = 0, -1, -1
    status, exit_code = "FINISHED", 0

    def client_state() -> dict[str, Any]:
        # tracker.run_id, not start()'s answer: with the server away at start the run is created later.
        return {
            "step": step,
            "data_state": state.to_dict(),
            "mlflow_run_id": tracker.run_id or run_id,
            "world_size": world.world_size,
        }

    def run_eval() -> None:
        metrics, examples = evaluate_mod.evaluate(
            engine, eval_stream, inverse_vocab, blank_id, cfg.model.ctc_zero_infinity, device, dtype
        )
        tracker.log_metrics({k: v for k, v in metrics.items() if k != "eval_samples"}, step)
        msg = (
            f"eval step {step}: loss {metrics['eval_loss']:.4f} wer {metrics['eval_wer']:.4f} "
            f"cer {metrics['eval_cer']:.4f} ({int(metrics['eval_samples'])} utterances)"
        )
        progress.write(msg) if progress is not None else log.info(msg)
        for uid, ref, hyp in examples:
            log.info("  %s  ref: %s | hyp: %s", uid, ref, hyp)

    steps = train_stream.steps(state)
    engine.train()
    try:
        while step < total_steps:
            state, micro_batches = next(steps)
            skipped_before = engine.skipped_steps
            loss, nonfinite = train_step(engine, micro_batches, device, dtype, blank_id, cfg.model.ctc_zero_infinity)
            step += 1
            window.loss_sum += loss
            window.steps += 1
            window.audio_seconds += sum(b["audio_seconds"] for b in micro_batches)

            # One tiny collective per step: every rank learns whether any rank was signalled or saw a bad loss,
            # so all of them stop, save or raise at the same step and no collective is left waiting.
            flags = torch.stack([torch.tensor(float(stop.requested), device=device), nonfinite.float()])
            vote = world_mod.all_reduce_max(flags, device).tolist()
            skipped = engine.skipped_steps > skipped_before
            consecutive_skips = consecutive_skips + 1 if skipped else 0
            if vote[1] and (prec != "fp16" or consecutive_skips >= t.max_nonfinite_steps):
                bad_ids = nonfinite_ids(micro_batches)
                if bad_ids:
                    log.error("non-finite CTC loss at step %d for utterances: %s", step, ", ".join(bad_ids))
                raise NonFiniteLoss(
                    f"non-finite loss at step {step} ({prec}); offending utterance ids are logged by their rank. "
                    f"Resume from the last checkpoint with --resume_from_checkpoint latest after removing them."
                )
            if consecutive_skips >= t.max_nonfinite_steps:
                raise NonFiniteLoss(
                    f"{consecutive_skips} consecutive fp16 overflow steps up to step {step}; "
                    f"last batch ids: {[i for b in micro_batches for i in b['ids']]}"
                )

            if step % t.logging_steps == 0 or step == total_steps:
                window = _log(engine, tracker, window, step, train_stream.steps_per_epoch, device, progress, world)
            if progress is not None:
                progress.update(1)
            if step % t.eval_steps == 0 or step == total_steps:
                run_eval()
                last_eval_step = step
            if step % t.save_steps == 0 or step == total_steps:
                checkpoint.save(engine, output_dir, step, client_state(), t.save_total_limit, world)
                last_save_step = step
            if vote[0]:
                if window.steps:  # the partial window's loss is not lost when the stop falls between log steps
                    window = _log(engine, tracker, window, step, train_stream.steps_per_epoch, device, progress, world)
                if last_save_step != step:
                    checkpoint.save(engine, output_dir, step, client_state(), t.save_total_limit, world)
                log.warning(
                    "stop requested (%s): checkpoint saved at step %d; exiting with status %d so the "
                    "scheduler can requeue; resume with --resume_from_checkpoint latest",
                    stop.signal_name or "signal on another rank",
                    step,
                    EXIT_PREEMPTED,
                )
                status, exit_code = "KILLED", EXIT_PREEMPTED
                break
        if exit_code == 0:
            if last_eval_step != step:
                run_eval()
            if last_save_step != step:
                checkpoint.save(engine, output_dir, step, client_state(), t.save_total_limit, world)
            if world.is_main:
                final = output_dir / checkpoint.FINAL
                engine.module.save_pretrained(final)
                from xlsr_dist.model import build_processor

                build_processor(str(output_dir / checkpoint.MODEL_CONFIG / "vocab.json")).save_pretrained(final)
                log.info("done: %d steps; model saved to %s", step, final)
    except BaseException:
        status = "FAILED"
        raise
    finally:
        if progress is not None:
            progress.close()
        tracker.close(status)
    return exit_code


def _progress(world: World, disabled: bool, start: int, total: int) -> Any:
    if not world.is_main or disabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=start, desc="train", unit="step", dynamic_ncols=True, file=sys.stderr)


def _log(
    engine: Any,
    tracker: Any,
    window: Window,
    step: int,
    steps_per_epoch: int,
    device: torch.device,
    progress: Any,
    world: World,
) -> Window:
    """Collective: averages the window's loss over ranks (the global batch's loss) and logs on rank 0."""
    summed = world_mod.all_reduce_sum([float(window.loss_sum), window.audio_seconds], device).tolist()
    elapsed = max(time.perf_counter() - window.started, 1e-9)
    metrics = {
        "loss": summed[0] / (window.steps * world.world_size),
        "learning_rate": engine_mod.current_lr(engine),
        "grad_norm": engine_mod.grad_norm(engine),
        "loss_scale": engine_mod.loss_scale(engine),
        "epoch": step / max(1, steps_per_epoch),
        "throughput": summed[1] / elapsed,
    }
    tracker.log_metrics(metrics, step)
    if progress is not None:
        progress.set_postfix(
            loss=f"{metrics['loss']:.4f}",
            lr=f"{metrics['learning_rate']:.2e}",
            audio_s_per_s=f"{metrics['throughput']:.1f}",
            refresh=False,
        )
    return Window.fresh(device)


def main(argv: Sequence[str] | None = None) -> None:
    # First thing: USR1/TERM's default action kills the process, and a scheduler may send them while we are still
    # loading; caught here, they stop training after its first step with a checkpoint instead.
    stop = StopRequest()
    stop.install()
    world = World.from_env()
    try:
        cfg = parse_args(argv)
        plan = plan_batches(cfg.train.global_batch_size, world.world_size, cfg.train.per_device_train_batch_size)
        device = world_mod.device_for(world)
        ds_config = engine_mod.resolve_ds_config(cfg, plan, device)
    except ConfigError as exc:
        # Before any process group exists: every rank prints the same message and exits; nothing can hang.
        if world.is_main:
            print(f"xlsr_dist: {exc}", file=sys.stderr)
        sys.exit(2)
    setup_console(world)
    log.info(
        "world %d rank(s): global batch %d = %d micro x %d accumulation x %d rank(s); %s on %s",
        world.world_size,
        plan.global_batch,
        plan.micro_batch,
        plan.grad_accum,
        world.world_size,
        engine_mod.precision(ds_config),
        device,
    )
    world_mod.init(world, device, cfg.train.dist_timeout_s)
    try:
        code = train(cfg, world, plan, device, ds_config, stop)
        # Leave together (rank 0 may still have been flushing MLflow): under `srun --kill-on-bad-exit` the first
        # rank to exit non-zero (75) gets the others killed, which would turn their 75 into 143 and lose the requeue.
        world_mod.barrier()
    except checkpoint.CheckpointError as exc:
        log.error("%s", exc)
        code = 2
    except Exception as exc:
        if world_mod.is_peer_failure(exc):
            log.error(
                "rank %d: a collective failed, a peer rank probably died or was killed (%s); exiting. The "
                "launcher's message or the first failing rank's log names the cause.",
                world.rank,
                world_mod.describe_peer_failure(exc),
            )
        raise
    finally:
        world_mod.shutdown()
    sys.exit(code)


def exit_now(code: int) -> None:
    """Exit without the interpreter's teardown, once main() has returned on every rank (the final barrier): every
    result is on disk and the tracker is closed, and tearing down torch/DeepSpeed/MLflow takes seconds (7 s on a
    loaded 2-core CPU) during which ranks would leave one by one, with Python already back on SIGTERM's default
    action, so `srun --kill-on-bad-exit` would kill the laggards and turn their status 75 into 143."""
    for sig in (signal.SIGUSR1, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)  # nothing is left to stop; a late signal must not change the status
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def cli() -> None:
    """Console-script entry (`xlsr-train`): the same fast, simultaneous exit as `python -m xlsr_dist.train`."""
    try:
        main()
    except SystemExit as done:
        exit_now(done.code if isinstance(done.code, int) else 1)


if __name__ == "__main__":
    cli()

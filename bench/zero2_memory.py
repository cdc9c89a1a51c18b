"""ZeRO-2 memory of the full XLSR-53 architecture (~315M parameters, random weights), measured on real ranks.

Each run trains --steps optimizer steps with a standalone DeepSpeed engine (xlsr_dist.model.build_model +
xlsr_dist.engine.resolve_ds_config/initialize, no trainer) and records per rank:
  - peak RSS (VmHWM) and RSS after each phase (model built, engine initialised, each step);
  - from the engine's ZeRO optimizer: the flat model weights (a full copy on every rank), the fp32 master partition,
    Adam's exp_avg/exp_avg_sq, the gradient partition and the reduce buckets, in bytes, summed over distinct storages;
  - the activations autograd saves for backward in one forward (saved-tensor hooks), per second of audio.
With 2 ranks each rank's partition, Adam state and gradient partition are half of 1 rank's; the weights are not.

    python bench/zero2_memory.py --world 1 --checkpointing on --out bench/results/zero2_memory   # one run
    python bench/zero2_memory.py --table --out bench/results/zero2_memory                          # markdown table

CPU-heavy: on a shared machine run each configuration under `flock /tmp/xlsr_cpu.lock` (a 2-rank run of 3 steps
takes a few minutes on 2 cores and ~12 GB of memory).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
from _launch import run_ranks  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SAMPLE_RATE = 16000
VOCAB_SIZE, PAD_ID = 40, 0
GiB = 1024**3


def rss_bytes() -> dict[str, int]:
    """Current and peak resident set size of this process, from /proc (Linux)."""
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(("VmRSS:", "VmHWM:")):
            name, value = line.split(":")
            fields[name] = int(value.split()[0]) * 1024
    return {"rss": fields["VmRSS"], "peak_rss": fields["VmHWM"]}


def storage_bytes(tensors: list[torch.Tensor]) -> int:
    """Bytes held by ``tensors``, each underlying storage counted once (views share one)."""
    seen: dict[int, int] = {}
    for t in tensors:
        if isinstance(t, torch.Tensor) and t.numel():
            storage = t.untyped_storage()
            seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values())


def _tensors(value: Any) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict):
        return [t for v in value.values() for t in _tensors(v)]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _tensors(v)]
    return []


def zero2_bytes(engine: Any) -> dict[str, int]:
    """What DeepSpeed's ZeRO-1/2 optimizer holds on this rank, by part (DeepSpeed 0.19.8 attribute names)."""
    opt = engine.optimizer
    adam = [t for state in opt.optimizer.state.values() for k, t in state.items() if k in ("exp_avg", "exp_avg_sq")]
    grads = _tensors(getattr(opt, "grads_in_partition", None)) + _tensors(dict(opt.averaged_gradients))
    grads += _tensors([p.grad for p in opt.single_partition_of_fp32_groups])
    return {
        # The flat buffer of trainable weights plus the frozen feature encoder: what the module holds.
        "weights": storage_bytes([p for p in engine.module.parameters()]),
        "master_partition": storage_bytes(opt.single_partition_of_fp32_groups),
        "adam_states": storage_bytes(adam),
        "grad_partition": storage_bytes(grads),
        # Allocated when backward starts and freed when it ends (setup_buckets/_release_ipg_buffers): from the config.
        "reduce_buckets": (2 if opt.overlap_comm else 1)
        * int(opt.reduce_bucket_size)
        * len(opt.ipg_buckets)
        * torch.empty((), dtype=opt._gradient_reduction_buffer_dtype()).element_size(),
        "partition_numel": sum(p.numel() for p in opt.single_partition_of_fp32_groups),
    }


class SavedActivations:
    """Bytes autograd keeps for backward while the block runs (distinct storages; parameters excluded)."""

    def __init__(self, parameters: set[int]) -> None:
        self.parameters = parameters
        self.storages: dict[int, int] = {}

    def __enter__(self) -> SavedActivations:
        def pack(t: torch.Tensor) -> torch.Tensor:
            storage = t.untyped_storage()
            if storage.data_ptr() not in self.parameters:
                self.storages[storage.data_ptr()] = storage.nbytes()
            return t

        self.hooks = torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t)
        self.hooks.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.hooks.__exit__(*exc)

    @property
    def bytes(self) -> int:
        return sum(self.storages.values())


def run_rank(args: argparse.Namespace) -> None:
    from xlsr_dist import precision, world
    from xlsr_dist.config import ModelConfig, build_config, plan_batches
    from xlsr_dist.model import build_model, count_parameters
    from xlsr_dist.training import engine as engine_setup

    me = world.World.from_env()
    device = torch.device("cpu")
    world.init(me, device, timeout_s=1800)
    phases: dict[str, dict[str, int]] = {"start": rss_bytes()}
    torch.manual_seed(0)
    checkpointing = args.checkpointing == "on"
    model = build_model(
        ModelConfig(architecture=args.architecture, gradient_checkpointing=checkpointing), VOCAB_SIZE, PAD_ID
    )
    phases["model_built"] = rss_bytes()
    global_batch = args.micro_batch * me.world_size
    cfg = build_config(
        {
            "deepspeed": args.deepspeed,
            "global_batch_size": global_batch,
            "per_device_train_batch_size": args.micro_batch,
        }
    )
    ds_config = engine_setup.resolve_ds_config(cfg, plan_batches(global_batch, me.world_size, args.micro_batch), device)
    engine = engine_setup.initialize(model, ds_config, warmup_steps=0, total_steps=args.steps)
    phases["engine_initialised"] = rss_bytes()
    parameters = {p.untyped_storage().data_ptr() for p in engine.module.parameters()}
    dtype = precision.input_dtype(precision.mode(ds_config))
    samples = int(args.seconds * SAMPLE_RATE)
    generator = torch.Generator().manual_seed(100 + me.rank)
    engine.train()
    step_seconds, saved_bytes, forward_growth, parts_before_step = [], 0, 0, {}
    for step in range(args.steps):
        audio = torch.randn(args.micro_batch, samples, generator=generator).to(dtype)
        labels = torch.randint(1, VOCAB_SIZE, (args.micro_batch, max(2, int(args.seconds * 12))), generator=generator)
        start = time.perf_counter()
        rss_before_forward = rss_bytes()["rss"]
        with SavedActivations(parameters) as saved:
            loss = engine(input_values=audio, labels=labels).loss
        saved_bytes, forward_growth = saved.bytes, rss_bytes()["rss"] - rss_before_forward
        engine.backward(loss)
        # Before step(): the gradient partition is complete here and freed by the step.
        parts_before_step = zero2_bytes(engine)
        engine.step()
        step_seconds.append(time.perf_counter() - start)
        phases[f"step_{step + 1}"] = rss_bytes()
        if me.is_main:
            print(f"step {step + 1}: loss {float(loss.detach()):.3f} {step_seconds[-1]:.1f} s", flush=True)
    parts_after_step = zero2_bytes(engine)
    record = {
        "world_size": me.world_size,
        "rank": me.rank,
        "checkpointing": checkpointing,
        "precision": precision.mode(ds_config),
        "deepspeed": args.deepspeed,
        "parameters": count_parameters(engine.module),
        "trainable_parameters": count_parameters(engine.module, trainable_only=True),
        "micro_batch": args.micro_batch,
        "seconds_per_utterance": args.seconds,
        "steps": args.steps,
        "step_seconds": step_seconds,
        "phases": phases,
        "peak_rss": rss_bytes()["peak_rss"],
        "saved_activation_bytes": saved_bytes,
        # Under gradient checkpointing the layers' own saves go through checkpoint's hooks, not these: the RSS growth
        # over the forward (last step, allocator reuse included) is the comparable figure there.
        "saved_activation_bytes_per_audio_second": saved_bytes / (args.micro_batch * args.seconds),
        "forward_rss_growth_per_audio_second": forward_growth / (args.micro_batch * args.seconds),
        # Weights, partitions and Adam states persist; the gradient partition is measured between backward and step,
        # where it is complete (the step frees it).
        "zero": {
            **parts_after_step,
            "grad_partition": parts_before_step["grad_partition"],
        },
        "torch": torch.__version__,
    }
    Path(args.out, f"rank{me.rank}.json").write_text(json.dumps(record, indent=1))
    world.finish()


def activation_profile(args: argparse.Namespace) -> dict[str, Any]:
    """Bytes autograd saves in one training forward of one utterance, by precision, length and checkpointing.

    No DeepSpeed and no step. "fp32" and "bf16" cast the weights (bf16 stands for the fp16 wrap too: same sizes);
    "amp" keeps fp32 weights under torch.autocast(float16), CPU's op lists. Fits bytes = a0 + a1 s + a2 s^2 through
    the lengths, a0 + a1 s by least squares: a0 is per forward (the positional convolution's weight-norm weight;
    under autocast also the fp16 copies of the weights), a1 per second of audio; a quadratic fit's s^2 term is kept to
    show attention adds none (SDPA's fused kernels keep no T x T matrix). Under checkpointing the
    layers' own saves are invisible to these hooks (non-reentrant checkpoint installs its own and keeps the layer
    inputs itself): the formula in BENCHMARKS.md adds those inputs and one recomputed layer.
    """
    from xlsr_dist.config import ModelConfig
    from xlsr_dist.model import build_model

    modes = {"fp32": (torch.float32, False), "bf16": (torch.bfloat16, False), "amp": (torch.float32, True)}
    profile: dict[str, Any] = {"lengths_s": args.lengths, "runs": [], "fits": {}}
    for mode, (dtype, autocast) in modes.items():
        for checkpointing in (False, True):
            torch.manual_seed(0)
            config = ModelConfig(architecture=args.architecture, gradient_checkpointing=checkpointing)
            model = build_model(config, VOCAB_SIZE, PAD_ID).to(dtype)
            model.train()
            parameters = {p.untyped_storage().data_ptr() for p in model.parameters()}
            profile["attn_implementation"] = model.config._attn_implementation
            runs = []
            for seconds in args.lengths:
                audio = torch.randn(1, int(seconds * SAMPLE_RATE), dtype=dtype)
                labels = torch.randint(1, VOCAB_SIZE, (1, max(2, int(seconds * 12))))
                with SavedActivations(parameters) as saved, torch.autocast("cpu", torch.float16, enabled=autocast):
                    loss = model(input_values=audio, labels=labels).loss
                del loss
                runs.append({"mode": mode, "checkpointing": checkpointing, "seconds": seconds, "bytes": saved.bytes})
                print(f"{mode} checkpointing={checkpointing} {seconds:g} s: {saved.bytes / 2**20:.1f} MiB", flush=True)
            y = torch.tensor([[float(r["bytes"])] for r in runs], dtype=torch.float64)
            quadratic = torch.tensor([[1.0, r["seconds"], r["seconds"] ** 2] for r in runs], dtype=torch.float64)
            linear = quadratic[:, :2]
            a0, a1 = torch.linalg.lstsq(linear, y).solution.squeeze(1).tolist()
            profile["fits"][f"{mode}_checkpointing-{'on' if checkpointing else 'off'}"] = {
                "per_forward": a0,
                "per_second": a1,
                "quadratic_per_second2": torch.linalg.lstsq(quadratic, y).solution[2, 0].item(),
            }
            profile["runs"] += runs
            del model
    Path(args.out).mkdir(parents=True, exist_ok=True)
    Path(args.out, "activations.json").write_text(json.dumps(profile, indent=1))
    for name, fit in profile["fits"].items():
        print(
            f"{name}: {fit['per_forward'] / 2**20:.1f} MiB + {fit['per_second'] / 2**20:.2f} MiB/s "
            f"(quadratic term {fit['quadratic_per_second2'] / 2**20:.3f} MiB/s^2)"
        )
    return profile


def launch(args: argparse.Namespace) -> Path:
    run_dir = Path(args.out) / f"world{args.world}_ckpt-{args.checkpointing}"
    run_dir.mkdir(parents=True, exist_ok=True)
    cmd = [str(Path(__file__).resolve()), "--rank", "--world", str(args.world), "--checkpointing", args.checkpointing]
    cmd += ["--steps", str(args.steps), "--seconds", str(args.seconds), "--micro_batch", str(args.micro_batch)]
    cmd += ["--deepspeed", args.deepspeed, "--architecture", args.architecture, "--out", str(run_dir)]
    threads = max(1, (os.cpu_count() or 1) // args.world) if args.threads == 0 else args.threads
    start = time.perf_counter()
    run_ranks(cmd, args.world, run_dir, args.timeout_s, threads, {}, ROOT)
    print(f"world {args.world}, checkpointing {args.checkpointing}: {time.perf_counter() - start:.0f} s -> {run_dir}")
    return run_dir


def _gib(n: float) -> str:
    return f"{n / GiB:.2f}"


def table(out: Path) -> str:
    """One markdown row per (world size, checkpointing, rank) from the records under ``out``."""
    records = [json.loads(p.read_text()) for p in sorted(out.glob("world*_ckpt-*/rank*.json"))]
    records.sort(key=lambda r: (r["world_size"], not r["checkpointing"], r["rank"]))
    lines = [
        "| ranks | grad. checkpointing | rank | peak RSS GiB | weights GiB | fp32 partition GiB | Adam states GiB "
        "| grad partition GiB | reduce buckets GiB | saved activations MiB/s audio | forward RSS growth MiB/s audio "
        "| s/step |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        z = r["zero"]
        steady = r["step_seconds"][1:] or r["step_seconds"]
        lines.append(
            f"| {r['world_size']} | {'on' if r['checkpointing'] else 'off'} | {r['rank']} | {_gib(r['peak_rss'])} "
            f"| {_gib(z['weights'])} | {_gib(z['master_partition'])} | {_gib(z['adam_states'])} "
            f"| {_gib(z['grad_partition'])} | {_gib(z['reduce_buckets'])} "
            f"| {r['saved_activation_bytes_per_audio_second'] / 2**20:.0f} "
            f"| {r['forward_rss_growth_per_audio_second'] / 2**20:.0f} | {sum(steady) / len(steady):.1f} |"
        )
    if records:
        r = records[0]
        lines.append("")
        lines.append(
            f"{r['parameters'] / 1e6:.1f}M parameters ({r['trainable_parameters'] / 1e6:.1f}M trainable), "
            f"{r['precision']}, micro-batch {r['micro_batch']} x {r['seconds_per_utterance']:g} s per rank, "
            f"{r['steps']} steps, torch {r['torch']}."
        )
    return "\n".join(lines)


# GPU estimate: bytes per parameter of each ds_configs precision on one GPU of N (ZeRO-2), from DeepSpeed 0.19.8:
# weights (every GPU), gradient partition and reduce buckets in the gradient dtype; fp32 master partition + Adam's
# two moments (12 B) per trainable parameter / N; at the step an fp32 copy of the gradient partition and one
# partition-sized temporary of torch's foreach AdamW (8 B / N).
MODES = {
    # mode: (weight bytes, gradient bytes, activation profile, residual-stream bytes between layers)
    "zero2_amp": (4, 4, "amp", 4),
    "zero2_fp16": (2, 2, "bf16", 2),
    "zero2_bf16": (2, 2, "bf16", 2),
    "zero2_fp32": (4, 4, "fp32", 4),
}
GPU_MODES = ("zero2_amp", "zero2_fp16", "zero2_bf16")
CUDA_OVERHEAD_GIB = 1.0  # CUDA context, cuBLAS/cuDNN workspaces, allocator slack: not measured here
LAYERS, HIDDEN = 24, 1024


def activation_rates(mode: str, checkpointing: bool, profile: dict[str, Any]) -> tuple[float, float]:
    """(bytes per forward, bytes per second of audio) that a micro-batch keeps for backward at its peak."""
    from xlsr_dist.model import output_frames, xlsr53_config

    _, _, act_mode, stream_b = MODES[mode]
    off = profile["fits"][f"{act_mode}_checkpointing-off"]
    if not checkpointing:
        return off["per_forward"], off["per_second"]
    on = profile["fits"][f"{act_mode}_checkpointing-on"]
    frames_per_second = output_frames(xlsr53_config(), 16000 * 100) / 100
    layer_inputs = LAYERS * frames_per_second * HIDDEN * stream_b  # kept by checkpoint, per second of audio
    recomputed_layer = (off["per_second"] - on["per_second"]) / LAYERS  # one layer's saves during its backward
    return on["per_forward"], on["per_second"] + layer_inputs + recomputed_layer


def static_bytes(mode: str, gpus: int, record: dict) -> tuple[float, float, float]:
    """(persistent, extra during backward, extra during the optimizer step) bytes of one rank, without activations."""
    weight_b, grad_b, _, _ = MODES[mode]
    params, trainable = record["parameters"], record["trainable_parameters"]
    persistent = weight_b * params + (12 + grad_b) * trainable / gpus
    buckets = 2 * 5e7 * grad_b  # overlap_comm: two reduce buckets of 5e7 elements, during backward
    return persistent, buckets, 8 * trainable / gpus


def peak_bytes(
    mode: str, checkpointing: bool, gpus: int, micro_batch: int, seconds: float, profile: dict[str, Any], record: dict
) -> float:
    """Peak memory of one rank: the larger of the backward peak (activations of a micro-batch) and the step peak."""
    persistent, backward, step = static_bytes(mode, gpus, record)
    per_forward, per_second = activation_rates(mode, checkpointing, profile)
    return persistent + max(backward + per_forward + per_second * seconds * micro_batch, step)


def estimate(out: Path, seconds: float = 20.0, global_batch: int = 8) -> str:
    """Markdown: expected peak GPU memory for a global batch of ``global_batch`` utterances of ``seconds``."""
    profile = json.loads((out / "activations.json").read_text())
    record = json.loads(next(iter(sorted(out.glob("world*_ckpt-*/rank0.json")))).read_text())
    # xlsr_dist's default split of the global batch: micro-batch min(4, 8/N), the rest by accumulation.
    layouts = [(1, 8), (1, 4), (2, 4), (4, 2), (8, 1)]
    header = " | ".join(f"{n} GPU{'s' if n > 1 else ''}, micro-batch {m}" for n, m in layouts)
    lines = [f"| config | grad. checkpointing | {header} |", "|---|---|" + "---|" * len(layouts)]
    for mode in GPU_MODES:
        for checkpointing in (False, True):
            cells = [
                f"{peak_bytes(mode, checkpointing, n, m, seconds, profile, record) / GiB + CUDA_OVERHEAD_GIB:.1f}"
                for n, m in layouts
            ]
            lines.append(f"| {mode} | {'on' if checkpointing else 'off'} | " + " | ".join(cells) + " |")
    # How much audio one micro-batch may hold on a card, with every other GPU's share of nothing (1 GPU: the most
    # static memory) and with 8 GPUs: (card - CUDA overhead - static - buckets - per forward) / per second.
    cards = (24, 40, 80)
    lines += [
        "",
        "| config | grad. checkpointing | "
        + " | ".join(f"{c} GB card: s of audio per micro-batch (1 GPU / 8 GPUs)" for c in cards)
        + " |",
        "|---|---|" + "---|" * len(cards),
    ]
    for mode in GPU_MODES:
        for checkpointing in (False, True):
            per_forward, per_second = activation_rates(mode, checkpointing, profile)
            cells = []
            for card in cards:
                fit = []
                for gpus in (1, 8):
                    persistent, backward, _ = static_bytes(mode, gpus, record)
                    free = card * 1e9 - CUDA_OVERHEAD_GIB * GiB - persistent - backward - per_forward
                    fit.append(f"{max(0.0, free / per_second):.0f}")
                cells.append(" / ".join(fit))
            lines.append(f"| {mode} | {'on' if checkpointing else 'off'} | " + " | ".join(cells) + " |")
    # The same formula against what this CPU measured: peak RSS less the process's RSS before the model existed.
    lines += ["", "| run on this CPU (fp32) | formula GiB | measured peak RSS - start RSS GiB |", "|---|---|---|"]
    for path in sorted(out.glob("world*_ckpt-*/rank*.json")):
        r = json.loads(path.read_text())
        formula = peak_bytes(
            "zero2_fp32", r["checkpointing"], r["world_size"], r["micro_batch"], r["seconds_per_utterance"], profile, r
        )
        measured = r["peak_rss"] - r["phases"]["start"]["rss"]
        lines.append(
            f"| {r['world_size']} rank(s), checkpointing {'on' if r['checkpointing'] else 'off'}, rank {r['rank']} "
            f"| {formula / GiB:.2f} | {measured / GiB:.2f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--world", type=int, default=1, help="ranks (processes) on this machine")
    parser.add_argument("--checkpointing", choices=["on", "off"], default="on")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=2.0, help="length of each (random) utterance")
    parser.add_argument("--micro_batch", type=int, default=2, help="utterances per rank per step")
    parser.add_argument("--deepspeed", default="ds_configs/zero2_fp32.json")
    parser.add_argument("--architecture", default="xlsr-53", help="xlsr_dist --architecture (tiny: a smoke run)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads per rank (0: cores / ranks)")
    parser.add_argument("--timeout_s", type=float, default=900)
    parser.add_argument("--out", default="bench/results/zero2_memory")
    parser.add_argument("--table", action="store_true", help="print the markdown table of the runs under --out")
    parser.add_argument(
        "--activations", action="store_true", help="profile saved activations per second of audio (one process)"
    )
    parser.add_argument("--lengths", type=float, nargs="+", default=[1.0, 2.0, 4.0], help="--activations lengths (s)")
    parser.add_argument(
        "--estimate", action="store_true", help="print expected GPU memory (GiB) for batch 8 of 20-s utterances"
    )
    parser.add_argument("--rank", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.table:
        print(table(Path(args.out)))
    elif args.activations:
        activation_profile(args)
    elif args.estimate:
        print(estimate(Path(args.out)))
    elif args.rank:
        run_rank(args)
    else:
        launch(args)


if __name__ == "__main__":
    main()

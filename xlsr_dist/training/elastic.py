"""Elastic resume: continue a ZeRO-1/2 checkpoint on a different number of ranks.

ZeRO-1/2 save one optimizer partition per rank (fp32 master weights and Adam moments, flattened and split by the
world size of the run that saved them), and DeepSpeed refuses to load those on another world size. Its *universal
checkpoint* stores the same state per parameter instead, which any world size can load (``"checkpoint":
{"load_universal": true}``). This module decides whether a resume needs it, converts once (rank 0, with
``deepspeed.checkpoint.ds_to_universal``), and keeps the converted form inside the checkpoint:

    checkpoints/step-0000500/                  DeepSpeed's files as saved (+ COMPLETE.json)
    checkpoints/step-0000500/universal/        latest_universal + step-0000500/{zero/<param>/..., mp_rank_00_...}

so it is rotated away with its checkpoint and a second resume on any world size reuses it. Converting costs about
what reading and writing the checkpoint once more does, and as much disk again (measured on a 2-core VM: ~100 MB/s
of checkpoint, peak memory about one rank's optimizer partition plus the model; XLSR-53 in fp32, ~5 GB: ~1 minute).
What cannot carry over (another model, precision, global batch or optimizer setting, a missing rank's partition,
ZeRO-3) is reported at start-up by ``ElasticResumeError``, naming it, before DeepSpeed gets to fail on it.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import logging
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from xlsr_dist.atomic import replacing_dir
from xlsr_dist.run_dir import zero_partitions
from xlsr_dist.state_files import safe_load

log = logging.getLogger(__name__)

UNIVERSAL = "universal"
CONVERSION_LOG = "conversion.log"
MODEL_STATES = "mp_rank_00_model_states.pt"

# Settings DeepSpeed restores from the checkpoint, silently overriding the run's own (the optimizer's param_groups,
# the clip value), or that change what a step means (the global batch): a resume must not change them.
_FIXED_SETTINGS: tuple[tuple[tuple[str, ...], str], ...] = (
    (("train_batch_size",), "--global_batch_size"),
    (("gradient_clipping",), "--max_grad_norm"),
    (("optimizer", "type"), "--deepspeed optimizer.type"),
    (("optimizer", "params", "lr"), "--learning_rate"),
    (("optimizer", "params", "betas"), "--adam_beta1/--adam_beta2"),
    (("optimizer", "params", "eps"), "--adam_epsilon"),
    (("optimizer", "params", "weight_decay"), "--weight_decay"),
    (("zero_optimization", "stage"), "--deepspeed zero_optimization.stage"),
)


class ElasticResumeError(RuntimeError):
    """A checkpoint that cannot be resumed in this run; the message names what does not carry over."""


@dataclass(frozen=True)
class ResumePlan:
    """Where and how DeepSpeed loads: ``engine.load_checkpoint(str(plan.load_dir), tag=plan.tag, ...)`` with the
    engine built from ``plan.configure(ds_config)``."""

    checkpoint: Path
    load_dir: Path
    tag: str
    saved_world_size: int
    world_size: int
    ds_config_overrides: dict[str, Any] = field(default_factory=dict)

    @property
    def universal(self) -> bool:
        return bool(self.ds_config_overrides)

    def configure(self, ds_config: Mapping[str, Any]) -> dict[str, Any]:
        """``ds_config`` with this plan's overrides (a copy; the caller's dict is left alone)."""
        out = copy.deepcopy(dict(ds_config))
        for section, values in self.ds_config_overrides.items():
            out.setdefault(section, {}).update(values)
        return out


def _precision(ds_config: Mapping[str, Any]) -> str:
    for name in ("fp16", "bf16"):
        if (ds_config.get(name) or {}).get("enabled") is True:
            return name
    return "fp32"


def _lookup(config: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    node: Any = config
    for key in path:
        if not isinstance(node, Mapping) or key not in node:
            return None
        node = node[key]
    return node


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return abs(float(a) - float(b)) <= 1e-12 * max(1.0, abs(float(b)))
    return bool(a == b)


def _saved_state(ckpt: Path) -> dict[str, Any]:
    """What resume checks in DeepSpeed's model-states file (memory-mapped: tensors are read only where looked at)."""
    path = ckpt / MODEL_STATES
    if not path.is_file():
        raise ElasticResumeError(f"{ckpt}: no {MODEL_STATES} (not a DeepSpeed checkpoint)")
    if any(ckpt.glob("zero_pp_rank_*_mp_rank_*_model_states.pt")):
        raise ElasticResumeError(f"{ckpt}: a ZeRO-3 checkpoint; xlsr_dist trains and resumes with ZeRO stages 0-2")
    state = safe_load(path, mmap=True)
    return {
        "ds_config": state.get("ds_config") or {},
        "dp_world_size": int(state.get("dp_world_size", 0)),
        "param_shapes": state.get("param_shapes"),
        "module": state.get("module") or {},
    }


def check_compatible(ckpt: Path, ds_config: Mapping[str, Any]) -> int:
    """Every reason ``ckpt`` cannot continue in a run with ``ds_config``, in one error; returns the world size it
    was saved with."""
    saved = _saved_state(ckpt)
    saved_config: Mapping[str, Any] = saved["ds_config"]
    saved_world = saved["dp_world_size"]
    problems: list[str] = []
    partitions = zero_partitions(ckpt)
    if partitions or int(_lookup(saved_config, ("zero_optimization", "stage")) or 0) > 0:
        missing = sorted(set(range(saved_world)) - set(partitions))
        if missing:
            problems.append(
                f"the optimizer partition(s) of rank(s) {missing} of the {saved_world} that saved it are missing"
            )
    saved_precision, precision = _precision(saved_config), _precision(ds_config)
    if saved_precision != precision:
        problems.append(f"it was saved in {saved_precision} and this run trains in {precision} (--deepspeed)")
    for path, flag in _FIXED_SETTINGS:
        before, now = _lookup(saved_config, path), _lookup(ds_config, path)
        if before is not None and now is not None and not _same(before, now):
            problems.append(f"{'.'.join(path)} was {before!r} and is now {now!r} ({flag})")
    if problems:
        raise ElasticResumeError(f"cannot resume {ckpt}: " + "; ".join(problems))
    return saved_world


def check_model(ckpt: Path, model: torch.nn.Module) -> None:
    """``model`` must be the one saved: the same tensors (parameters and buffers) by name and shape, and the same
    ones trainable. DeepSpeed would otherwise fail deep inside its loader, or, loading universally, silently leave
    a parameter the checkpoint lacks as initialised."""
    saved = _saved_state(ckpt)
    saved_shapes = {name: tuple(t.shape) for name, t in saved["module"].items()}
    shapes = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    problems = []
    missing = sorted(set(saved_shapes) - set(shapes))
    extra = sorted(set(shapes) - set(saved_shapes))
    if missing:
        problems.append(f"saved tensors absent from this model: {_few(missing)}")
    if extra:
        problems.append(f"tensors not in the checkpoint: {_few(extra)}")
    reshaped = [
        f"{n} {saved_shapes[n]} -> {shapes[n]}"
        for n in sorted(set(saved_shapes) & set(shapes))
        if saved_shapes[n] != shapes[n]
    ]
    if reshaped:
        problems.append(f"tensors of another shape: {_few(reshaped)}")
    if saved["param_shapes"] is not None:
        saved_trainable = {name for group in saved["param_shapes"] for name in group}
        trainable = {name for name, p in model.named_parameters() if p.requires_grad}
        if saved_trainable != trainable and not missing and not extra:
            problems.append(
                f"trained then, frozen now: {_few(sorted(saved_trainable - trainable))}; "
                f"frozen then, trained now: {_few(sorted(trainable - saved_trainable))}"
            )
    if problems:
        raise ElasticResumeError(f"cannot resume {ckpt}: another model ({'; '.join(problems)})")


def _few(items: list[str], limit: int = 5) -> str:
    more = f" and {len(items) - limit} more" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def universal_dir(ckpt: Path) -> Path:
    return ckpt / UNIVERSAL


def is_converted(ckpt: Path) -> bool:
    """The universal form is complete once its directory exists (it is renamed into place when finished)."""
    target = universal_dir(ckpt)
    return (target / ckpt.name / "zero" / "optimizer_state.pt").is_file() and (target / "latest_universal").is_file()


def convert(ckpt: Path) -> Path:
    """Write ``ckpt``'s universal form to ``ckpt/universal`` (atomically); returns that directory.

    DeepSpeed's converter walks its input folder recursively, so it reads a folder of links to the checkpoint's own
    files: the universal directory (or a killed conversion's leftovers) inside the checkpoint must not be read back.
    """
    from deepspeed.checkpoint import ds_to_universal

    target = universal_dir(ckpt)
    for stale in ckpt.glob(f".{UNIVERSAL}.*.tmp"):
        shutil.rmtree(stale, ignore_errors=True)
    with replacing_dir(target) as tmp:
        source = tmp / "source"
        source.mkdir()
        for path in ckpt.iterdir():
            if path.is_file() and path.suffix == ".pt":
                (source / path.name).symlink_to(path.resolve())
        args = argparse.Namespace(
            input_folder=str(source),
            output_folder=str(tmp / ckpt.name),
            # In-process: worker pools would fork a process that holds the process group.
            num_extract_workers=1,
            num_merge_workers=1,
            keep_temp_folder=False,
            strict=True,
            # Plain (non-Megatron) models carry no universal_checkpoint_info; none is needed for data parallelism.
            inject_missing_state=True,
        )
        with open(tmp / CONVERSION_LOG, "w") as out, contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            ds_to_universal.main(args)
        shutil.rmtree(source)
    return target


def prepare_resume(
    ckpt: str | Path,
    ds_config: Mapping[str, Any],
    world_size: int,
    is_main: bool,
    barrier: Callable[[], None],
) -> ResumePlan:
    """Collective: how this run loads ``ckpt``; converts it to the universal form first when the world size changed.

    Rank 0 converts while the others wait at ``barrier``, so the process-group timeout must exceed the conversion
    time. A conversion that fails on rank 0 is reported on every rank (no rank is left waiting in a later
    collective).
    """
    ckpt = Path(ckpt)
    saved_world = check_compatible(ckpt, ds_config)
    # Without optimizer partitions (no ZeRO) the optimizer state is saved whole and loads on any world size.
    if saved_world == world_size or not zero_partitions(ckpt):
        return ResumePlan(ckpt, ckpt.parent, ckpt.name, saved_world, world_size)
    failure: BaseException | None = None
    if is_main and not is_converted(ckpt):
        started = time.monotonic()
        try:
            convert(ckpt)
        except Exception as exc:  # reported below, after the barrier, so that no rank hangs
            failure = exc
        else:
            log.info(
                "elastic resume: %s was saved on %d rank(s), resuming on %d: converted to a universal checkpoint "
                "in %.1f s (%s)",
                ckpt.name,
                saved_world,
                world_size,
                time.monotonic() - started,
                universal_dir(ckpt),
            )
    barrier()
    if failure is not None:
        raise ElasticResumeError(
            f"cannot resume {ckpt} on {world_size} ranks (saved on {saved_world}): converting it to a universal "
            f"checkpoint failed: {type(failure).__name__}: {failure}"
        ) from failure
    if not is_converted(ckpt):
        raise ElasticResumeError(
            f"cannot resume {ckpt} on {world_size} ranks (saved on {saved_world}): rank 0 could not convert it "
            f"(see its log); {universal_dir(ckpt)} is not there"
        )
    return ResumePlan(
        ckpt,
        universal_dir(ckpt),
        ckpt.name,
        saved_world,
        world_size,
        ds_config_overrides={"checkpoint": {"load_universal": True}},
    )


def load(engine: Any, plan: ResumePlan) -> dict[str, Any]:
    """Collective: restore model, optimizer (fp32 master weights, Adam moments and step), LR schedule and loss
    scaler from ``plan``; returns the client state saved with it.

    A universal load restores only what the optimizer holds: buffers and frozen parameters are copied from the
    saved module state here, or they would silently stay as the model was built.
    """
    loaded, client_state = engine.load_checkpoint(
        str(plan.load_dir), tag=plan.tag, load_optimizer_states=True, load_lr_scheduler_states=True
    )
    if loaded is None:
        raise ElasticResumeError(f"DeepSpeed could not load {plan.checkpoint}")
    if plan.universal:
        saved = safe_load(plan.load_dir / plan.tag / MODEL_STATES, mmap=True)
        trainable = {name for name, p in engine.module.named_parameters() if p.requires_grad}
        rest = {name: t for name, t in saved["module"].items() if name not in trainable}
        unexpected = engine.module.load_state_dict(rest, strict=False).unexpected_keys
        if unexpected:
            raise ElasticResumeError(f"cannot resume {plan.checkpoint}: this model lacks {_few(sorted(unexpected))}")
    return dict(client_state or {})
